"""Call store figures: submit cost on the caller's thread, writer throughput, read latency.

Run: ``.venv/bin/python bench/store_bench.py [--calls 10000] [--segments 20]
[--store postgresql://…]``. Prints medians of several runs; never a pass/fail test. Uses a
temporary directory (SQLite), or the PostgreSQL database named by ``--store`` (which should
be empty and have the store's schema; the bench's rows stay in it).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid

from helpers.store.db import CallStore


def median_ms(fn: object, runs: int = 7) -> float:
    """Median wall time of ``fn()`` in ms."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    """Fill a store and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--segments", type=int, default=20, help="segments per call")
    ap.add_argument("--keep", help="directory for the database (kept), default a temp dir")
    ap.add_argument("--store", help="a postgresql:// URL instead of SQLite")
    args = ap.parse_args()
    rng = random.Random(1)
    # A Zipf-like vocabulary: a few very common words ("the") and a long tail, so that
    # searches for common words show the worst case and rare ones the usual case.
    vocab = ["the", "please", "order", "refund"] + [f"w{i}" for i in range(5000)]
    cum: list[float] = []
    for r in range(len(vocab)):
        cum.append((cum[-1] if cum else 0.0) + 1 / (r + 1))
    texts = [" ".join(rng.choices(vocab, cum_weights=cum, k=8)) for _ in range(4096)]
    with tempfile.TemporaryDirectory() as tmp, CallStore(args.store or args.keep or tmp) as store:
        print(f"store: {store.backend} ({store.location})")
        t0 = 1_795_000_000.0
        ids = [str(uuid.uuid4()) for _ in range(args.calls)]
        submit: list[float] = []
        t_all = time.perf_counter()
        for i, cid in enumerate(ids):
            t = time.perf_counter()
            store.call_started(cid, ("echo", "ivr", "transcribe")[i % 3], 8000, "p", t0 + i)
            submit.append(time.perf_counter() - t)
            for k in range(args.segments):
                text = texts[(i * 31 + k) % len(texts)]
                t = time.perf_counter()
                store.add_segment(cid, k, k + 1, text, 0.9, 100.0)
                submit.append(time.perf_counter() - t)
            store.call_ended(cid, t0 + i + 30, "remote_closed", 1500, 1500)
            if i % 200 == 0:  # a steady producer, not a firehose that fills the queue
                store.flush()
        t_queued = time.perf_counter() - t_all
        store.flush()
        t_total = time.perf_counter() - t_all
        n = args.calls * (args.segments + 2)
        submit.sort()
        print(
            f"{n} writes: queued in {t_queued:.2f} s, committed after {t_total:.2f} s "
            f"({n / t_total:,.0f} writes/s)"
        )
        print(
            f"submit cost on caller thread: median {statistics.median(submit) * 1e6:.1f} µs,"
            f" p99 {submit[int(len(submit) * 0.99)] * 1e6:.1f} µs"
        )
        if store.backend == "postgresql":  # statistics, as autovacuum would have them by now
            store._submit(lambda conn: conn.execute("ANALYZE")).result()
        print(f"list_calls first page:   {median_ms(lambda: store.list_calls()):.2f} ms")
        print(f"list_calls offset 9000:  {median_ms(lambda: store.list_calls(offset=9000)):.2f} ms")
        print(f"list_calls app=ivr:      {median_ms(lambda: store.list_calls(app='ivr')):.2f} ms")
        for q in ("the", "refund", "w10", "w4000", "the w100"):
            hits = store.search(q).total
            print(
                f"q={q!r:11} ({hits:6} segments) list_calls "
                f"{median_ms(lambda q=q: store.list_calls(q=q), 3):7.1f} ms, "
                f"search {median_ms(lambda q=q: store.search(q), 3):7.1f} ms"
            )
        print(f"get_call:                {median_ms(lambda: store.get_call(ids[-1])):.2f} ms")

        async def loop_reads() -> float:
            t = time.perf_counter()
            await asyncio.gather(*(store.aread(store.get_call, ids[i]) for i in range(200)))
            return (time.perf_counter() - t) * 1000

        print(f"200 concurrent aread(get_call): {asyncio.run(loop_reads()):.1f} ms")


if __name__ == "__main__":
    main()
