"""End to end: N callers talking to `audiosocket serve --app transcribe` at once.

Prints, per N: end-of-speech -> text latency (p50/p95, from the server's own histogram),
utterances transcribed and dropped, and the audio path's tick lateness (p50/p99) and
resyncs, which must not move while Whisper is busy. Each caller speaks Piper sentences at
8 kHz in real time with pauses, like a caller answering an agent.

    .venv/bin/python bench/stt_server_bench.py --callers 1,2,4,8,16 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audiosocket.caller import place_call  # noqa: E402
from tests.helpers.speech_fixtures import silence, synth_speech  # noqa: E402

SENTENCES = [
    "I would like to check the status of my order.",
    "My internet connection has been down since yesterday.",
    "Can you tell me when the technician will arrive?",
    "I was charged twice on my last invoice.",
    "Please cancel my subscription at the end of the month.",
    "I need to change the address on my account.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+0-9.eE]+|NaN)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def quantile(before: dict[str, float], after: dict[str, float], name: str, q: float) -> float:
    """A quantile from the delta of a Prometheus histogram's buckets (upper bound)."""
    buckets = []
    for key, value in after.items():
        m = re.match(rf'^{name}_bucket\{{le="([^"]+)"\}}$', key)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan")
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("inf")


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def caller(port: int, seconds: float, index: int) -> None:
    audio = b""
    i = index
    while len(audio) / 16000 < seconds:
        audio += synth_speech(SENTENCES[i % len(SENTENCES)]) + silence(1.2 + (i % 3) * 0.4)
        i += 1
    await place_call("127.0.0.1", port, pcm=audio, linger=0.5, max_seconds=seconds + 30)


async def run_point(port: int, http: int, n: int, seconds: float) -> dict[str, float]:
    before = scrape(http)
    await asyncio.gather(*(caller(port, seconds, k) for k in range(n)))
    await asyncio.sleep(3.0)  # the last utterances
    after = scrape(http)
    return {
        "callers": n,
        "utterances": delta(before, after, "audiosocket_stt_latency_seconds_count"),
        "dropped": sum(delta(before, after, k) for k in after  # every reason label
                       if k.startswith("audiosocket_stt_utterances_dropped_total")),
        "lat_p50": quantile(before, after, "audiosocket_stt_latency_seconds", 0.5),
        "lat_p95": quantile(before, after, "audiosocket_stt_latency_seconds", 0.95),
        "tick_p50": quantile(before, after, "audiosocket_tick_lateness_seconds", 0.5),
        "tick_p99": quantile(before, after, "audiosocket_tick_lateness_seconds", 0.99),
        "resyncs": delta(before, after, "audiosocket_clock_resyncs_total"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--callers", default="1,2,4,8,16")
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    for text in SENTENCES:  # synthesise (and cache) before the clock starts
        synth_speech(text)
    port, http = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="sttbench-")
    env = {**os.environ, "AUDIOSOCKET_POSTCALL__ENABLED": "false"}
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/audiosocket"), "serve", "--app", "transcribe", "--port", str(port),
         "--http-port", str(http), "--data-dir", data, "--log-format", "json",
         "--log-level", "warning"],
        env=env, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                scrape(http)
                break
            except OSError:
                time.sleep(0.5)
        print(f"loadavg {open('/proc/loadavg').read().split()[:3]}; {os.cpu_count()} CPUs")
        print("| callers | utterances | dropped | latency p50 | p95 | tick late p50 | p99 "
              "| resyncs |")
        print("|---|---|---|---|---|---|---|---|")
        for n in (int(x) for x in args.callers.split(",")):
            r = asyncio.run(run_point(port, http, n, args.seconds))
            print(f"| {n} | {r['utterances']:.0f} | {r['dropped']:.0f} | "
                  f"≤{r['lat_p50'] * 1000:.0f} ms | ≤{r['lat_p95'] * 1000:.0f} ms | "
                  f"≤{r['tick_p50'] * 1000:.1f} ms | ≤{r['tick_p99'] * 1000:.1f} ms | "
                  f"{r['resyncs']:.0f} |", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
