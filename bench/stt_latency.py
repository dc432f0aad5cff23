"""End-of-speech -> final-text latency of the STT engine, one caller and N callers.

Latency runs from ``submit`` (the moment the VAD decided the speech ended) to the callback
with the final text; on a call add the VAD's end-of-speech wait (``end_silence_ms``, 600 ms
by default) to get "caller stops talking -> text". Prints figures; not a pass/fail test.

    .venv/bin/python bench/stt_latency.py                       # 1 caller + 1,2,4,8,16
    .venv/bin/python bench/stt_latency.py --callers 1,4 --seconds 15

Utterances are the bench corpus (8 kHz), plus pairs of them joined to reach 4-5 s. The load
generator is a single scheduler thread; it reports its own lateness (how late it submitted
relative to the real-time schedule) next to the engine's figures.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import build  # noqa: E402

from helpers.speech.stt import Segment, SttDone, SttDropped, SttEngine, SttOutcome  # noqa: E402
from helpers.speech.vad import Utterance  # noqa: E402

RATE = 8000


def _utterances() -> list[bytes]:
    items = build()
    pcms = [it.pcm() for it in items]
    out = [p for p in pcms if len(p) / 2 / RATE >= 1.0]
    rng = random.Random(7)
    gap = bytes(int(0.2 * RATE) * 2)
    for _ in range(40):  # 4-5 s utterances from two short ones
        a, b = rng.sample(pcms, 2)
        j = a + gap + b
        if 4.0 <= len(j) / 2 / RATE <= 5.0:
            out.append(j)
    return out


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def _engine(args: argparse.Namespace) -> SttEngine:
    eng = SttEngine(workers=args.workers, cpu_threads=args.threads,
                    short_window=not args.padded, beam_size=1)
    eng.start()
    return eng


def single_caller(eng: SttEngine, utts: list[bytes], n: int) -> None:
    """One utterance at a time: pure service latency by utterance length."""
    by_len: dict[str, list[float]] = {}
    allv: list[float] = []
    for pcm in utts[:n]:
        done = threading.Event()
        box: list[float] = []

        def cb(seg: Segment | None, out: SttOutcome, box: list[float] = box,
               done: threading.Event = done) -> None:
            box.append(out.latency_ms if isinstance(out, SttDone) else float("nan"))
            done.set()

        d = len(pcm) / 2 / RATE
        eng.submit("c0", Utterance(pcm, RATE, 0.0, d, False, 0.0, None), cb)
        done.wait(30)
        lat = box[0]
        allv.append(lat)
        key = f"{int(d)}-{int(d) + 1} s"
        by_len.setdefault(key, []).append(lat)
    print(f"one caller, {len(allv)} utterances: p50 {_pct(allv, 50):.0f} ms  "
          f"p95 {_pct(allv, 95):.0f} ms  max {max(allv):.0f} ms  rtf {eng.rtf:.3f}")
    for k in sorted(by_len):
        v = by_len[k]
        print(f"   {k}: n={len(v):3d} p50 {_pct(v, 50):.0f} ms  p95 {_pct(v, 95):.0f} ms")


def many_callers(eng: SttEngine, utts: list[bytes], callers: int, seconds: float,
                 pause: float) -> None:
    """``callers`` synthetic callers talk at real-time pace: speak (utterance length), pause,
    speak again. An utterance is submitted when its speech ends."""
    rng = random.Random(callers)
    lat: list[float] = []
    lateness: list[float] = []
    dropped = 0
    sent = 0
    lock = threading.Lock()
    outstanding = threading.Semaphore(0)

    def cb(seg: Segment | None, out: SttOutcome) -> None:
        nonlocal dropped
        with lock:
            if isinstance(out, SttDropped):
                dropped += 1
            elif isinstance(out, SttDone):
                lat.append(out.latency_ms)
        outstanding.release()

    t0 = time.monotonic() + 0.2
    heap: list[tuple[float, int, bytes]] = []
    for c in range(callers):
        pcm = rng.choice(utts)
        # Random phase so callers do not all stop talking together.
        heapq.heappush(heap, (t0 + rng.uniform(0, 2.0) + len(pcm) / 2 / RATE, c, pcm))
    end = t0 + seconds
    before = (eng.stats.dropped, eng.capacity)
    while heap:
        due, c, pcm = heapq.heappop(heap)
        if due > end:
            continue
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        now = time.monotonic()
        lateness.append((now - due) * 1000)
        d = len(pcm) / 2 / RATE
        eng.submit(f"c{c}", Utterance(pcm, RATE, 0.0, d, False, 0.0, None), cb,
                   speech_end_monotonic=due)
        sent += 1
        nxt = rng.choice(utts)
        heapq.heappush(heap, (due + pause + rng.uniform(0, 1.0) + len(nxt) / 2 / RATE, c, nxt))
    for _ in range(sent):
        outstanding.acquire(timeout=30)
    print(f"{callers:3d} callers: {sent:4d} utts  p50 {_pct(lat, 50):6.0f} ms  "
          f"p95 {_pct(lat, 95):6.0f} ms  max {max(lat, default=float('nan')):6.0f} ms  "
          f"dropped {dropped:3d} ({100 * dropped / max(1, sent):4.1f}%)  "
          f"capacity {before[1]}->{eng.capacity}  rtf {eng.rtf:.3f}  "
          f"generator late p95 {_pct(lateness, 95):.1f} ms")


def compare_windows(utts: list[bytes], n: int, threads: int) -> None:
    """Service time per config, interleaved per utterance (same load for all)."""
    from helpers.audio import pcm_to_float, resample_float
    from helpers.speech.stt import WhisperBackend

    configs: dict[str, WhisperBackend] = {
        "short, no pad": WhisperBackend(short_window=True, short_window_min_s=0.0,
                                        cpu_threads=threads),
        "short, 4 s window": WhisperBackend(short_window=True, short_window_min_s=4.0,
                                            cpu_threads=threads),
        "short, 8 s window": WhisperBackend(short_window=True, short_window_min_s=8.0,
                                            cpu_threads=threads),
        "padded 30 s": WhisperBackend(short_window=False, cpu_threads=threads),
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    warm = np.zeros(16000, dtype=np.float32)
    for b in configs.values():
        b.recognize(warm)
    for pcm in utts[:n]:
        audio = resample_float(pcm_to_float(pcm), RATE, 16000)
        for name, b in configs.items():
            t = time.perf_counter()
            b.recognize(audio)
            times[name].append((time.perf_counter() - t) * 1000)
    base = times["padded 30 s"]
    print(f"# window comparison, {n} utterances, {threads} thread(s), recognise only")
    for name, v in times.items():
        ratio = statistics.median(a / b for a, b in zip(v, base, strict=True))
        print(f"{name:<18} p50 {_pct(v, 50):6.0f} ms  p95 {_pct(v, 95):6.0f} ms  "
              f"median ratio to padded {ratio:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 threads per worker")
    ap.add_argument("--padded", action="store_true", help="standard 30 s path (slow)")
    ap.add_argument("--single", type=int, default=60, help="utterances for the 1-caller run")
    ap.add_argument("--callers", default="1,2,4,8,16")
    ap.add_argument("--seconds", type=float, default=20.0, help="per caller-count run")
    ap.add_argument("--pause", type=float, default=1.0, help="silence between a caller's turns")
    ap.add_argument("--compare", type=int, default=0,
                    help="also compare window sizes on N utterances (side by side)")
    args = ap.parse_args()
    utts = _utterances()
    random.Random(1).shuffle(utts)
    d = [len(u) / 2 / RATE for u in utts]
    print(f"# {len(utts)} utterances {min(d):.1f}-{max(d):.1f} s (median "
          f"{statistics.median(d):.1f}), workers {args.workers} x {args.threads} threads, "
          f"{'padded 30 s' if args.padded else 'short window'}")
    if args.compare:
        compare_windows(utts, args.compare, args.threads)
    eng = _engine(args)
    try:
        if args.single:
            single_caller(eng, utts, args.single)
        for n in (int(x) for x in args.callers.split(",") if x):
            many_callers(eng, utts, n, args.seconds, args.pause)
    finally:
        eng.stop()


if __name__ == "__main__":
    main()
