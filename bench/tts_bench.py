"""TTS benchmark: time to first PCM, synthesis RTF, and concurrent callers vs real time.

Prints figures; not a test. Usage (from the repository root):

    .venv/bin/python bench/tts_bench.py [--runs 5] [--callers 1,10,50] [--workers 2]

What it measures, each as the median of ``--runs`` runs (a shared, noisy machine):

1. Time to first PCM of ``TtsEngine.stream`` for an uncached one-sentence prompt (a new
   text every run, so it is a real cache miss: lookup, Piper, resample, cache write), for a
   prompt in the cache's RAM layer, and for one only on disk.
2. Synthesis real-time factor per sentence at 8 kHz (wall time / audio duration), with
   ``threads`` intra-op threads per inference.
3. N simultaneous callers, each streaming its own uncached two-sentence prompt through one
   engine (one process, one thread pool of ``--workers``). Each caller "plays" its audio at
   real-time pace starting when its first chunk arrives; an underrun is a sentence whose audio
   arrived after the previous sentence finished playing. Also reported: time to first audio
   across callers (median and worst).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiosocket.clock import Clock, Playout
from helpers.speech.prompt_cache import PromptCache
from helpers.speech.tts import TtsEngine

RATE = 8000
BYTES_PER_SECOND = RATE * 2
_SERIAL = 0


def _unique(template: str) -> str:
    """A text never synthesised before in this process (so never a cache hit)."""
    global _SERIAL
    _SERIAL += 1
    return template.format(n=_SERIAL, m=1000 + 37 * _SERIAL)


async def first_chunk_seconds(engine: TtsEngine, text: str) -> float:
    """Wall time from calling stream() to holding its first chunk."""
    t0 = time.perf_counter()
    it = engine.stream(text, RATE)
    try:
        await it.__anext__()
        return time.perf_counter() - t0
    finally:
        await it.aclose()


async def bench_first_pcm(engine: TtsEngine, disk_engine: TtsEngine, runs: int) -> None:
    """Time to first PCM: uncached, cached in RAM, cached on disk only."""
    uncached = [
        await first_chunk_seconds(engine, _unique("Your reference number is {m}."))
        for _ in range(runs)
    ]
    prompt = "Thank you for calling. Please hold."
    await engine.prewarm([prompt], [RATE])
    hot = [await first_chunk_seconds(engine, prompt) for _ in range(max(runs, 20))]
    await disk_engine.prewarm([prompt], [RATE])
    disk = [await first_chunk_seconds(disk_engine, prompt) for _ in range(max(runs, 20))]
    print("## Time to first PCM (8 kHz, one sentence)")
    print(
        f"uncached 'Your reference number is NNNN.': median {_ms(uncached)}"
        f"  (runs: {', '.join(f'{x * 1000:.0f}' for x in uncached)} ms)"
    )
    print(f"cached, RAM layer:  median {_ms(hot)}   worst {max(hot) * 1000:.2f} ms")
    print(f"cached, disk only:  median {_ms(disk)}   worst {max(disk) * 1000:.2f} ms")
    print()


def bench_rtf(engines: dict[str, TtsEngine], runs: int) -> None:
    """Synthesis RTF per sentence at 8 kHz for short, medium and long sentences.

    Wall RTF depends on what else the machine runs; CPU RTF (process CPU seconds per audio
    second, measured while nothing else in this process works) is the contention-robust
    cost, and ``cores / CPU RTF`` bounds how many streams one process can keep speaking.
    Configurations are interleaved run by run so they share the same noise.
    """
    sentences = {
        "short": "Please hold.",
        "medium": "Press one for sales, or two for support.",
        "long": "Your call is important to us, and the next available agent will be "
        "with you as soon as possible, so please stay on the line.",
    }
    print("## Synthesis RTF per sentence at 8 kHz (lower is faster): wall RTF / CPU RTF")
    print("| sentence | audio | " + " | ".join(engines) + " |")
    print("|---|---|" + "---|" * len(engines))
    for label, text in sentences.items():
        walls: dict[str, list[float]] = {name: [] for name in engines}
        cpus: dict[str, list[float]] = {name: [] for name in engines}
        audio = 0.0
        for _ in range(runs):
            for name, engine in engines.items():
                t0, c0 = time.perf_counter(), time.process_time()
                pcm = engine.synthesize_sentence(text, RATE)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                audio = len(pcm) / BYTES_PER_SECOND
                walls[name].append(wall / audio)
                cpus[name].append(cpu / audio)
        cells = [
            f"{statistics.median(walls[n]):.3f} / {statistics.median(cpus[n]):.3f}" for n in engines
        ]
        print(f"| {label} | {audio:.1f} s | " + " | ".join(cells) + " |")
    print()


async def caller(engine: TtsEngine, text: str, t0: float) -> tuple[float, int, int]:
    """One caller: returns (time to first audio, underruns, sentences)."""
    play_end = 0.0  # when the audio received so far finishes playing (perf_counter time)
    first = 0.0
    underruns = 0
    n = 0
    async for chunk in engine.stream(text, RATE):
        now = time.perf_counter()
        if n == 0:
            first = now - t0
            play_end = now
        elif now > play_end:
            underruns += 1  # the previous sentence finished playing before this arrived
            play_end = now
        play_end += len(chunk) / BYTES_PER_SECOND
        n += 1
    return first, underruns, n


async def bench_callers(
    engine: TtsEngine, counts: list[int], runs: int, big: int, big_runs: int
) -> None:
    """N simultaneous callers, each streaming an uncached two-sentence prompt."""
    template = (
        "Thank you for calling, caller number {n}. "
        "Your reference number is {m}, please keep it for your records."
    )
    print("## Simultaneous callers, uncached 2-sentence prompt each (8 kHz)")
    print(
        "| callers | callers with an underrun | underruns / sentences | first audio median |"
        " first audio worst | wall for all |"
    )
    print("|---|---|---|---|---|---|")
    for count in counts:
        rows = []
        for _ in range(runs if count < big else big_runs):
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(caller(engine, _unique(template), t0) for _ in range(count))
            )
            wall = time.perf_counter() - t0
            firsts = [r[0] for r in results]
            rows.append(
                (
                    sum(1 for r in results if r[1]),
                    sum(r[1] for r in results),
                    sum(r[2] - 1 for r in results),
                    statistics.median(firsts),
                    max(firsts),
                    wall,
                )
            )
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(
            f"| {count} | {med[0]:.0f} / {count} | {med[1]:.0f} / {med[2]:.0f} |"
            f" {med[3] * 1000:.0f} ms | {med[4] * 1000:.0f} ms | {med[5]:.1f} s |"
        )
    print()


class _NullTransport:
    """Where the frames would go: counts them (a socket would only add noise here)."""

    def __init__(self) -> None:
        self.frames = 0

    def write(self, data: bytes) -> None:
        self.frames += 1

    def is_closing(self) -> bool:
        return False


async def clocked_caller(engine: TtsEngine, text: str, playout: Playout) -> tuple[float, int]:
    """What ``Session.say`` does, on a real Playout and Clock: (first frame s, underruns)."""
    loop = asyncio.get_running_loop()
    asked = loop.time()
    playout.begin_stream()
    first = last = None
    try:
        async for chunk in engine.stream(text, RATE):
            last = playout.play(chunk)
            first = first or last
    finally:
        playout.end_stream()
    assert first is not None and last is not None
    started = await first.started
    await last
    return started - asked, playout.underruns


async def bench_clocked(engine: TtsEngine, counts: list[int], runs: int) -> None:
    """N callers through the server's own clock and playout buffers (no sockets): an
    underrun is a tick inside a prompt that found the buffer empty (``say()``'s metric)."""
    template = (
        "Thank you for calling, caller number {n}. "
        "Your reference number is {m}, please keep it for your records."
    )
    print("## Through the 20 ms clock: ticks inside a prompt with nothing to send (8 kHz)")
    print("| callers | calls with an underrun | underrun ticks | prompt ticks | clock resyncs |"
          " first frame median | first frame worst |")
    print("|---|---|---|---|---|---|---|")
    for count in counts:
        rows = []
        for _ in range(runs):
            clock = Clock()
            playouts = [Playout(_NullTransport(), RATE) for _ in range(count)]
            for p in playouts:
                clock.register(p)
            clock.start()
            try:
                results = await asyncio.gather(
                    *(clocked_caller(engine, _unique(template), p) for p in playouts))
            finally:
                clock.stop()
            firsts = [r[0] for r in results]
            rows.append((sum(1 for r in results if r[1]), sum(r[1] for r in results),
                         sum(p.audio_frames_sent for p in playouts), clock.resyncs,
                         statistics.median(firsts), max(firsts)))
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(f"| {count} | {med[0]:.0f} / {count} | {med[1]:.0f} | {med[2]:.0f} |"
              f" {med[3]:.0f} | {med[4] * 1000:.0f} ms | {med[5] * 1000:.0f} ms |")
    print()


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.2f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--caller-runs", type=int, default=3)
    parser.add_argument("--big", type=int, default=50, help="caller counts from here on...")
    parser.add_argument("--big-runs", type=int, default=1, help="...run this many times")
    parser.add_argument("--callers", default="1,2,4,10,50")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=1, help="ONNX intra-op threads")
    parser.add_argument("--clocked", default="1,10,50",
                        help="caller counts to run through the real clock ('' to skip)")
    parser.add_argument("--safety", type=float, default=1.5,
                        help="the scheduler's safety factor on cost estimates")
    parser.add_argument("--solo-threads", type=int, default=None,
                        help="threads when a synthesis runs alone (default: all cores)")
    args = parser.parse_args()
    print(
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} workers={args.workers} "
        f"threads={args.threads}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = PromptCache(Path(tmp) / "hot")
        disk_cache = PromptCache(Path(tmp) / "disk", memory_bytes=0)
        t = time.perf_counter()
        engine = TtsEngine(cache=cache, threads=args.threads, workers=args.workers,
                           solo_threads=args.solo_threads, safety=args.safety)
        print(f"voice load: {time.perf_counter() - t:.2f} s")
        disk_engine = TtsEngine(cache=disk_cache, threads=args.threads, workers=args.workers)
        await engine.prewarm([], [RATE])  # the first ONNX run is slower: not what we measure
        await bench_first_pcm(engine, disk_engine, args.runs)
        engines = {f"threads={args.threads}": engine}
        other = 2 if args.threads == 1 else 1
        engines[f"threads={other}"] = TtsEngine(threads=other, workers=args.workers)
        engines[f"threads={other}"].synthesize_sentence("Warm up.", RATE)
        bench_rtf(engines, args.runs)
        await bench_callers(
            engine,
            [int(c) for c in args.callers.split(",")],
            args.caller_runs,
            args.big,
            args.big_runs,
        )
        if args.clocked:
            await bench_clocked(engine, [int(c) for c in args.clocked.split(",")],
                                args.caller_runs)
        print(f"load at end={os.getloadavg()[0]:.2f}")
        for e in (engine, disk_engine, *engines.values()):
            e.close()


if __name__ == "__main__":
    asyncio.run(main())
