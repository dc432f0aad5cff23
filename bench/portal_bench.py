"""Portal API latency with 10,000 calls: the list page's query and a transcript search.

Measured over HTTP against the real app (``web.app.make_app``) on a loopback port, warm
(a few requests first), sequentially, so each figure is one request's latency. Prints
p50/p95/max per query. Targets (issue): list <= 200 ms, search <= 100 ms.

    .venv/bin/python bench/portal_bench.py [--calls 10000] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiosocket.config import Config
from audiosocket.root.app import Services
from helpers.store.db import CallStore
from web.app import make_app

WORDS = ("order parcel refund invoice delivery account password balance appointment "
         "cancel subscription broken washing machine table booking flight hotel manager "
         "address payment card tomorrow morning afternoon evening thanks please help "
         "problem question number tracking Manchester London Leeds Bristol").split()
APPS = ("ivr", "echo", "record", "transcribe", "upload")
REASONS = ("remote_closed", "hangup", "timeout", "imported")


def seed(store: CallStore, calls: int, rng: random.Random) -> None:
    t0 = time.time() - calls * 60
    for i in range(calls):
        cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        start = t0 + i * 60
        store.call_started(cid, rng.choice(APPS), 8000, None, start)
        store.call_ended(cid, start + rng.uniform(5, 600), rng.choice(REASONS), 0, 0)
        segs = []
        t = 0.0
        for _ in range(rng.randint(3, 8)):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16)))
            segs.append({"start": t, "end": t + 3.0, "text": text})
            t += 3.5
        store.replace_final_transcript(cid, segs)
        if i % 3 == 0:
            store.set_summary(cid, f"Call about {rng.choice(WORDS)}", "…", "extractive")
        if i % 4 == 0:
            store.set_ivr(cid, ["welcome", "menu"], {}, rng.choice(("sales", "support")))
    store.flush()


async def measure(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    for _ in range(5):  # warm: reader connections, page cache, FTS pages
        async with session.get(url) as r:
            assert r.status == 200, (r.status, await r.text())
            await r.read()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.get(url) as r:
            await r.read()
        out.append((time.perf_counter() - t) * 1000)
    return out


def report(name: str, ms: list[float], target: float) -> None:
    ms = sorted(ms)
    p50 = statistics.median(ms)
    p95 = ms[int(0.95 * (len(ms) - 1))]
    verdict = "ok" if p95 <= target else "OVER"
    print(f"{name:<44} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  max {ms[-1]:7.2f} ms  "
          f"(target {target:.0f} ms: {verdict})")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        store = CallStore(data).open()
        t = time.perf_counter()
        seed(store, args.calls, random.Random(args.seed))
        segs = store.execute_read("SELECT count(*) AS n FROM segments")[0]["n"]
        print(f"seeded {args.calls} calls, {segs} segments in {time.perf_counter() - t:.1f} s")
        app = make_app(Config(data_dir=tmp), Services(store=store))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        try:
            async with aiohttp.ClientSession() as s:
                cases = [
                    ("list: /api/calls?limit=50", "/api/calls?limit=50", 200),
                    ("list page 100: offset=5000", "/api/calls?limit=50&offset=5000", 200),
                    ("list filtered: app=ivr&has_summary=true",
                     "/api/calls?limit=50&app=ivr&has_summary=true", 200),
                    ("search (common word): q=parcel", "/api/calls?limit=50&q=parcel", 100),
                    ("search (two words): q=refund manchester",
                     "/api/calls?limit=50&q=refund%20manchester", 100),
                    ("search (no hit): q=zeppelin", "/api/calls?limit=50&q=zeppelin", 100),
                ]
                for name, path, target in cases:
                    report(name, await measure(s, base + path, args.requests), target)
        finally:
            await runner.cleanup()
            store.close()


if __name__ == "__main__":
    asyncio.run(main())
