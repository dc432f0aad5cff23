"""Archive benchmark: one 5-minute call to AAC + MP3, and 100 calls queued at once.

Prints figures; not a test. Usage (from the repository root):

    .venv/bin/python bench/archive_bench.py [--runs 5] [--calls 100] [--limit 2]

1. A 5-minute 8 kHz stereo call (speech-like synthetic audio) archived to AAC and MP3 in
   parallel (``asyncio.gather``, cap 2), each including its verification decode: wall time,
   median of ``--runs``; the two formats alone are timed too, for the ratio.
2. ``--calls`` archive jobs (each AAC + MP3 of a 30 s call) queued at once with the cap at
   ``--limit``: total wall time, and the number of FFmpeg processes running, sampled every
   5 ms by a background thread from the OS's view (child processes of this PID) AND the
   module's own counter: the max must equal the cap.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.audio import write_wav
from helpers.postcall.archive import FFmpegCap, archive_aac, archive_mp3

RATE = 8000


def synth_call(path: Path, seconds: float, seed: int = 0) -> Path:
    """Stereo 'call': alternating talk spurts of harmonic, AM-modulated noise per leg."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    out = np.zeros((n, 2), dtype=np.float32)
    for ch, f0 in ((0, 130.0), (1, 210.0)):
        voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        voice = voice + 0.3 * rng.standard_normal(n)
        env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + ch))
        turn = ((t // 4).astype(int) % 2) == ch  # 4 s turns, legs alternate
        out[:, ch] = 0.15 * voice * env * turn
    pcm = np.clip(out * 32767, -32768, 32767).astype("<i2").tobytes()
    write_wav(path, pcm, RATE, channels=2)
    return path


def count_ffmpeg_children() -> int:
    """FFmpeg processes whose parent is us, from /proc (the OS's view, not our counter)."""
    me = str(os.getpid())
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        # comm is in parentheses and may hold spaces; ppid is the 2nd field after it.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = stat[stat.rindex(")") + 2 :].split()[1]
        if ppid == me and comm.startswith("ffmpeg"):
            n += 1
    return n


class Sampler(threading.Thread):
    """Samples the FFmpeg process count every ``period`` s until stopped."""

    def __init__(self, cap: FFmpegCap, period: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.cap = cap
        self.period = period
        self.samples: list[tuple[float, int, int]] = []  # (t, os_count, module_count)
        self._stop_evt = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop_evt.is_set():
            self.samples.append(
                (time.perf_counter() - t0, count_ffmpeg_children(), self.cap.stats()[0])
            )
            self._stop_evt.wait(self.period)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()


async def one_call(src: Path, out: Path, tag: str, cap: FFmpegCap) -> None:
    await asyncio.gather(archive_aac(src, out / f"{tag}.m4a", cap=cap),
                         archive_mp3(src, out / f"{tag}.mp3", cap=cap))


async def bench_single(src: Path, out: Path, runs: int) -> None:
    both, aac, mp3 = [], [], []
    cap = FFmpegCap(2)
    for i in range(runs):
        t = time.perf_counter()
        await one_call(src, out, f"single{i}", cap)
        both.append(time.perf_counter() - t)
        t = time.perf_counter()
        await archive_aac(src, out / f"a{i}.m4a", cap=cap)
        aac.append(time.perf_counter() - t)
        t = time.perf_counter()
        await archive_mp3(src, out / f"m{i}.mp3", cap=cap)
        mp3.append(time.perf_counter() - t)
    sizes = {p.suffix: p.stat().st_size for p in (out / "single0.m4a", out / "single0.mp3")}
    print(f"5-min 8 kHz stereo call, {runs} runs (median, min..max):")
    for name, xs in (("AAC+MP3 in parallel", both), ("AAC alone", aac), ("MP3 alone", mp3)):
        print(f"  {name:22s} {statistics.median(xs):6.3f} s  ({min(xs):.3f}..{max(xs):.3f})")
    print(f"  sizes: m4a {sizes['.m4a'] / 1024:.0f} KiB, mp3 {sizes['.mp3'] / 1024:.0f} KiB")


async def bench_queue(src: Path, out: Path, calls: int, limit: int) -> None:
    cap = FFmpegCap(limit)
    sampler = Sampler(cap)
    sampler.start()
    t = time.perf_counter()
    await asyncio.gather(*(one_call(src, out, f"q{i}", cap) for i in range(calls)))
    wall = time.perf_counter() - t
    sampler.stop()
    os_counts = [s[1] for s in sampler.samples]
    mod_counts = [s[2] for s in sampler.samples]
    hist = collections.Counter(os_counts)
    print(f"\n{calls} calls (30 s each, AAC + MP3 + 2 verify decodes = {4 * calls} FFmpeg runs)"
          f" queued at once, cap {limit}:")
    print(f"  wall {wall:.2f} s, {wall / calls * 1000:.0f} ms per call")
    print(f"  samples: {len(os_counts)} every 5 ms; max running (OS view) {max(os_counts)}, "
          f"(module counter) {max(mod_counts)}, module max-seen {cap.stats()[1]}")
    print("  share of samples by running count (OS view): "
          + ", ".join(f"{k}: {hist[k] / len(os_counts):.0%}" for k in sorted(hist)))
    # Time series summary: the running count in 10 equal slices of the run.
    slices = np.array_split(np.array(os_counts), 10)
    print("  mean running per tenth of the run: "
          + " ".join(f"{s.mean():.2f}" for s in slices if s.size))
    if max(os_counts) > limit or max(mod_counts) > limit:
        print("  !! the cap was exceeded")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--limit", type=int, default=2)
    args = ap.parse_args()
    import logging

    import structlog  # archive logs one line per file: keep the figures readable

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        five = synth_call(d / "five.wav", 300)
        short = synth_call(d / "short.wav", 30, seed=1)
        asyncio.run(bench_single(five, d, args.runs))
        asyncio.run(bench_queue(short, d, args.calls, args.limit))


if __name__ == "__main__":
    main()
