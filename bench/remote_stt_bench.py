"""Remote STT (issue 15.3): the latency NATS adds over local Whisper, and drops near capacity.

Starts a real nats-server (``tests/engines/nats.py`` finds the binary) and one
``audiosocket worker --stt`` subprocess with ``--workers`` Whisper slots; the local baseline
is an ``SttEngine`` with as many worker threads in this process. Both transcribe the same
~3 s Piper sentence (bundled tiny.en), offered as Poisson arrivals at a fraction of the
measured capacity (``workers / Whisper seconds per utterance``), and report end-of-speech to
text (``Segment.latency_ms``) p50/p95 and drops by reason. Local and remote runs alternate,
``--rounds`` times, so that the machine's noise falls on both; the figure to quote is the
median over rounds of remote minus local. On a noisy machine that difference is mostly
Whisper's own variance; the remote lines also print, per utterance, the round trip less the
worker's Whisper time (NATS both ways, the stream, the fetch, JSON), which is not.

    .venv/bin/python bench/remote_stt_bench.py                # 1/3 load and 85 %, 2 rounds
    .venv/bin/python bench/remote_stt_bench.py --utterances 120 --rounds 3 --workers 2

Run it on a quiet machine (``uptime`` load < 1): Whisper shares the cores with everything.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.speech.remote_stt import RemoteSttEngine  # noqa: E402
from helpers.speech.stt import Segment, SttDone, SttEngine, SttOutcome  # noqa: E402
from helpers.speech.vad import Utterance  # noqa: E402
from tests.engines.nats import NatsServer, nats_binary  # noqa: E402
from tests.helpers.speech_fixtures import silence, synth_speech  # noqa: E402

SENTENCE = "Hello, I would like to check the balance of my account please."
REASONS = ("deadline", "queue_full", "queue_bytes", "pool_full", "timeout", "no_workers")


def drops() -> dict[str, float]:
    return {r: REGISTRY.get_sample_value("audiosocket_stt_utterances_dropped_total",
                                         {"reason": r}) or 0.0 for r in REASONS}


def run_load(engine: SttEngine, pcm: bytes, rate_hz: float, n: int, seed: int) -> dict[str, Any]:
    """Offer ``n`` utterances as Poisson arrivals at ``rate_hz``; wait for every answer."""
    rng = random.Random(seed)
    lat: list[float] = []
    wire: list[float] = []  # remote: the round trip less the worker's own Whisper time
    done = threading.Semaphore(0)
    lock = threading.Lock()

    def cb(seg: Segment | None, out: SttOutcome) -> None:
        if seg is not None:
            with lock:
                lat.append(seg.latency_ms)
                if isinstance(out, SttDone) and out.remote_ms is not None:
                    wire.append(out.remote_ms - out.result.processing_ms)
        done.release()

    before = drops()
    start = time.monotonic()
    t = start
    for _ in range(n):
        t += rng.expovariate(rate_hz)
        time.sleep(max(0.0, t - time.monotonic()))
        end = 1.0 + len(pcm) / 16000
        engine.submit("bench", Utterance(pcm, 8000, 1.0, end, False, 1.0, None), cb,
                      speech_end_monotonic=time.monotonic())
    for _ in range(n):
        done.acquire(timeout=60)
    after = drops()
    lat.sort()
    wire.sort()
    return {
        "done": len(lat), "p50": statistics.median(lat) if lat else float("nan"),
        "p95": lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
        "wire_p50": statistics.median(wire) if wire else None,
        "wire_p95": wire[int(0.95 * (len(wire) - 1))] if wire else None,
        "drops": {r: int(after[r] - before[r]) for r in REASONS if after[r] - before[r]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=1, help="Whisper slots, local and remote")
    ap.add_argument("--utterances", type=int, default=60, help="per run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loads", default="0.33,0.85", help="fractions of the capacity")
    args = ap.parse_args()
    binary = nats_binary()
    if binary is None:
        sys.exit("no nats-server (set AUDIOSOCKET_NATS_SERVER)")
    pcm = silence(0.3) + synth_speech(SENTENCE, 8000) + silence(0.3)
    tmp = Path(tempfile.mkdtemp(prefix="remote-stt-bench-"))
    nats = NatsServer(binary, tmp / "nats").start()
    local = SttEngine(workers=args.workers)
    local.start()
    # Whisper seconds per utterance, warm, one at a time: the capacity is workers / that.
    took = []
    for _ in range(5):
        t0 = time.perf_counter()
        local.transcribe(pcm, 8000)
        took.append(time.perf_counter() - t0)
    proc_s = statistics.median(took)
    capacity = args.workers / proc_s
    print(f"utterance {len(pcm) / 16000:.2f} s, Whisper {proc_s * 1000:.0f} ms, "
          f"capacity {capacity:.1f}/s with {args.workers} slot(s)")
    env = {**os.environ, "AUDIOSOCKET_CLUSTER__NATS": nats.url,
           "AUDIOSOCKET_STT__WORKERS": str(args.workers), "PYTHONPATH": str(ROOT)}
    with open(tmp / "worker.log", "wb") as out:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "audiosocket"), "worker", "--stt",
             "--data-dir", str(tmp / "w"), "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp,
        )
    remote = RemoteSttEngine(nats_url=nats.url, inflight=max(4, args.workers))
    remote.start()
    try:
        end = time.monotonic() + 120
        while not remote._workers:
            if worker.poll() is not None or time.monotonic() > end:
                sys.exit(f"worker did not start:\n{(tmp / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.1)
        run_load(remote, pcm, 1.0, 3, 0)  # warm the worker (its first decode allocates)
        for load in (float(x) for x in args.loads.split(",")):
            added_p50, added_p95 = [], []
            for r in range(args.rounds):
                res = {}
                for name, engine in (("local", local), ("remote", remote)):
                    res[name] = run_load(engine, pcm, capacity * load, args.utterances, r)
                    out_ = res[name]
                    wire = (f" (round trip less Whisper: p50 {out_['wire_p50']:.1f} ms, "
                            f"p95 {out_['wire_p95']:.1f} ms)" if out_["wire_p50"] is not None
                            else "")
                    print(f"load {load:.0%} round {r + 1} {name:6}: {out_['done']}/"
                          f"{args.utterances} p50 {out_['p50']:.0f} ms p95 "
                          f"{out_['p95']:.0f} ms drops {out_['drops'] or 0}{wire}")
                added_p50.append(res["remote"]["p50"] - res["local"]["p50"])
                added_p95.append(res["remote"]["p95"] - res["local"]["p95"])
            print(f"load {load:.0%}: remote adds p50 {statistics.median(added_p50):+.1f} ms, "
                  f"p95 {statistics.median(added_p95):+.1f} ms (median of {args.rounds})")
    finally:
        remote.stop()
        local.stop()
        os.kill(worker.pid, signal.SIGTERM)
        worker.wait(20)
        nats.stop()


if __name__ == "__main__":
    main()
