"""STT admission (issue 16.6): N IVR callers answer the demo menu by voice at the same moment.

Starts a real ``audiosocket serve`` (the default ``ivr`` app, demo flow, bundled tiny.en and
Piper voice); every caller waits out the menu prompt and says "sales, please" or "support,
please" in the same 20 ms tick. Prints, per round: answers dropped by the STT engine (by
reason), callers who took the wrong branch, and answer-to-next-prompt p50/p95: from the last
frame of the caller's answer (when it really left the generator) to the first audible frame
of the server's next prompt. That includes the VAD's 600 ms end-of-speech silence, the wait
for Whisper and the prompt start. The generator's own send lateness is printed beside it.

    .venv/bin/python bench/stt_admission.py --callers 16 --rounds 3
    .venv/bin/python bench/stt_admission.py --callers 16 --rounds 3 --gap 3

Between rounds it waits ``--gap`` seconds (default 30: the previous round's post-call jobs,
archives, full transcripts and summaries, are done); ``--gap 3`` runs each round beside the
previous round's post-call work, which shares the CPU and the AI slots (live speech first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audiosocket.caller import place_call  # noqa: E402
from bench.stt_server_bench import delta, free_port, scrape  # noqa: E402
from tests.helpers.speech_fixtures import silence, synth_speech  # noqa: E402

RATE = 8000
WAIT_S = 10.5  # the demo greeting + menu prompt last ~10 s
ANSWERS = [("Sales, please.", "sales"), ("Support, please.", "support")]
REASONS = ("deadline", "queue_bytes", "queue_full", "stopped")
AUDIBLE = 500.0  # RMS of a prompt frame; the server's silence is 0


async def one_caller(port: int, said: str) -> tuple[float, float]:
    """(answer-to-next-prompt seconds, the generator's worst send lateness in seconds)."""
    pre, speech = silence(WAIT_S), synth_speech(said)
    audio = pre + speech + silence(0.5)
    last = (len(pre) + len(speech)) // 320 - 1  # the last 20 ms frame of the answer
    t0 = time.monotonic()
    r = await place_call("127.0.0.1", port, pcm=audio, send_silence=True, max_seconds=60,
                         linger=20)
    answered = t0 + r.sent_at[last]
    late = max((at - k * 0.02 for k, at in enumerate(r.sent_at)), default=0.0)
    offset = 0
    for size, at in zip(r.frame_sizes, r.arrivals, strict=True):
        frame = np.frombuffer(bytes(r.received[offset:offset + size]), dtype="<i2")
        offset += size
        if at > answered and frame.size and np.sqrt(np.mean(frame.astype(float) ** 2)) > AUDIBLE:
            return at - answered, late
    return float("inf"), late


async def run_round(port: int, http: int, n: int) -> dict[str, float]:
    before = scrape(http)
    got = await asyncio.gather(*(one_caller(port, ANSWERS[i % 2][0]) for i in range(n)))
    await asyncio.sleep(1.0)
    after = scrape(http)
    dropped = {r: delta(before, after, f'audiosocket_stt_utterances_dropped_total{{reason="{r}"}}')
               for r in REASONS}
    # Before issue 16 the counter had no reason label: count it as deadline (bench vs HEAD~).
    dropped["deadline"] += delta(before, after, "audiosocket_stt_utterances_dropped_total")
    right = sum(delta(before, after, f'audiosocket_ivr_results_total{{flow="demo",result="{w}"}}')
                for _, w in ANSWERS)
    waits = sorted(w for w, _ in got)
    return {
        "dropped": sum(dropped.values()), "deadline": dropped["deadline"],
        "wrong": n - right,
        "p50": statistics.median(waits),
        "p95": waits[min(len(waits) - 1, int(np.ceil(0.95 * len(waits))) - 1)],
        "max": waits[-1],
        "gen_late": max(late for _, late in got),
        "rtf": after.get("audiosocket_stt_rtf", float("nan")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gap", type=float, default=30.0, help="seconds between rounds")
    args = ap.parse_args()
    for said, _ in ANSWERS:  # synthesise (and cache) before the clock starts
        synth_speech(said)
    port, http = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="sttadm-")
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/audiosocket"), "serve", "--port", str(port),
         "--http-port", str(http), "--data-dir", data, "--log-format", "json",
         "--log-level", "warning"],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(240):
            try:
                scrape(http)
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(2.0)  # let the prompt warm-up settle
        print(f"loadavg {open('/proc/loadavg').read().split()[:3]}; {os.cpu_count()} CPUs; "
              f"{args.callers} IVR callers answering at once, {args.gap:g} s between rounds")
        print("| round | answers dropped | wrong branch | answer → next prompt p50 | p95 | max "
              "| generator late (max) | STT RTF |")
        print("|---|---|---|---|---|---|---|---|")
        rows = []
        for k in range(1, args.rounds + 1):
            r = asyncio.run(run_round(port, http, args.callers))
            rows.append(r)
            print(f"| {k} | {r['dropped']:.0f} | {r['wrong']:.0f} | {r['p50']:.2f} s "
                  f"| {r['p95']:.2f} s | {r['max']:.2f} s | {r['gen_late'] * 1000:.0f} ms "
                  f"| {r['rtf']:.3f} |", flush=True)
            if k < args.rounds:
                time.sleep(args.gap)
        print(f"| median | {statistics.median(r['dropped'] for r in rows):.0f} "
              f"| {statistics.median(r['wrong'] for r in rows):.0f} "
              f"| {statistics.median(r['p50'] for r in rows):.2f} s "
              f"| {statistics.median(r['p95'] for r in rows):.2f} s "
              f"| {statistics.median(r['max'] for r in rows):.2f} s | | |")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
