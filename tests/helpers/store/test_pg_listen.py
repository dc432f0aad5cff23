"""LISTEN/NOTIFY wakes idle post-call workers on PostgreSQL (real server)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from helpers.store.db import open_store
from helpers.store.pg_listen import JobWakeups

T0 = 1_700_000_000.0


def test_a_pending_job_wakes_the_listener_and_a_claim_or_heartbeat_does_not(
    pg_url: str, tmp_path: Path
) -> None:
    store = open_store(pg_url, tmp_path, node="n1")
    try:
        assert store.listen_url == pg_url
        cid = uuid.uuid4().hex
        store.call_started(cid, "record", 8000, None, T0)
        store.flush()

        async def run() -> None:
            wakeups = JobWakeups(pg_url)
            wakeups.start()
            await asyncio.sleep(0.3)  # LISTEN is in place
            t0 = time.monotonic()
            waiting = asyncio.ensure_future(wakeups(10.0))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(lambda: store.enqueue_jobs(cid, ["peaks"]).result())
            await waiting
            woke_s = time.monotonic() - t0
            assert woke_s < 3.0, woke_s  # the commit, not the 10 s timeout
            assert wakeups.received >= 1
            # Taking the job and heartbeating it make nothing new to claim: no wake-up.
            job = await asyncio.to_thread(store.claim_job, None, None, worker="w")
            assert job is not None
            await asyncio.to_thread(lambda: store.extend_lease(job.id, "w").result())
            before = wakeups.received
            t1 = time.monotonic()
            await wakeups(0.5)
            assert time.monotonic() - t1 >= 0.45 and wakeups.received == before
            await wakeups.aclose()

        asyncio.run(run())
    finally:
        store.close()


def test_sqlite_has_no_listen_url(tmp_path: Path) -> None:
    store = open_store("", tmp_path)
    try:
        assert store.listen_url is None
    finally:
        store.close()


def test_the_listener_survives_an_unreachable_database() -> None:
    async def run() -> None:
        wakeups = JobWakeups("postgresql://nobody@127.0.0.1:1/none", retry_s=0.05)
        t0 = time.monotonic()
        await wakeups(0.3)  # no error: it keeps retrying and the caller polls
        assert 0.25 <= time.monotonic() - t0 < 2.0
        await wakeups.aclose()

    asyncio.run(run())
