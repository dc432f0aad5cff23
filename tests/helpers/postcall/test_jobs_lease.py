"""PostCallJobs pools sharing one real SQLite store: exactly once, heartbeats, lost leases,
expiry, step filters, shutdown and poison jobs. The steps are stand-ins (timing is what is
tested here); the real steps in real worker processes are in tests/audiosocket/root/."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from helpers.postcall.jobs import STEPS, PostCallJobs
from helpers.store.db import CallStore

T0 = 1_700_000_000.0


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[CallStore, CallStore]]:
    # Two stores on one file: two writers, as two processes have.
    a, b = CallStore(tmp_path).open(), CallStore(tmp_path).open()
    yield a, b
    await asyncio.to_thread(a.close)
    await asyncio.to_thread(b.close)


def lost(op: str) -> float:
    return REGISTRY.get_sample_value("audiosocket_jobs_lost_lease_total", {"op": op}) or 0.0


def make_calls(store: CallStore, n: int, steps: tuple[str, ...] = STEPS) -> list[str]:
    ids = []
    for _ in range(n):
        cid = uuid.uuid4().hex
        store.call_started(cid, "record", 8000, None, T0)
        store.call_ended(cid, T0 + 1, "remote_closed", 0, 0)
        store.enqueue_jobs(cid, steps)
        ids.append(cid)
    store.flush()
    return ids


def pool(store: CallStore, tmp_path: Path, runs: list[tuple[str, str, str]], name: str,
         seconds: float = 0.02, **kw: Any) -> PostCallJobs:
    """A pool whose every step records (pool, call, step) and takes ``seconds``."""
    jobs = PostCallJobs(store, tmp_path / "data", node=name, poll_s=0.1, **kw)
    for step in STEPS:
        async def run(call_uuid: str, step: str = step) -> None:
            runs.append((name, call_uuid, step))
            await asyncio.sleep(seconds)
        setattr(jobs, f"_step_{step}", run)
    return jobs


async def until(check: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


def all_done(store: CallStore, ids: list[str]) -> bool:
    return all(j.status == "done" for cid in ids for j in store.jobs_for(cid))


async def test_two_pools_on_one_store_run_each_job_exactly_once(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, b = stores
    runs: list[tuple[str, str, str]] = []
    ids = make_calls(a, 8)
    pa, pb = pool(a, tmp_path, runs, "A"), pool(b, tmp_path, runs, "B")
    await pa.start()
    await pb.start()
    try:
        await until(lambda: all_done(a, ids))
    finally:
        await pa.aclose()
        await pb.aclose()
    done = [(c, s) for _, c, s in runs]
    assert sorted(done) == sorted((c, s) for c in ids for s in STEPS)  # each once
    assert {p for p, _, _ in runs} == {"A", "B"}  # both took work
    rows = [j for cid in ids for j in a.jobs_for(cid)]
    assert all(j.attempts == 1 and j.lease_until is None for j in rows)
    assert {j.worker.split("/")[0] for j in rows if j.worker} == {"A", "B"}
    assert len(set(pa.worker_ids) | set(pb.worker_ids)) == 8  # <node>/<pid>/<n>, unique


async def test_an_idle_pool_sees_work_another_process_enqueued(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, b = stores
    runs: list[tuple[str, str, str]] = []
    pa = pool(a, tmp_path, runs, "A", workers=1)
    await pa.start()
    try:
        await asyncio.sleep(0.3)  # idle: nothing to poke it but the store
        ids = make_calls(b, 1, ("peaks",))
        started = time.monotonic()
        await until(lambda: all_done(a, ids), timeout=5)
        assert time.monotonic() - started < 2.0  # found by polling (poll_s 0.1)
    finally:
        await pa.aclose()


async def test_the_wakeup_seam_is_awaited_when_idle(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, _ = stores
    calls: list[float] = []

    async def wakeup(timeout: float) -> None:
        calls.append(timeout)
        await asyncio.sleep(timeout)

    jobs = pool(a, tmp_path, [], "A", workers=1, wakeup=wakeup)
    await jobs.start()
    await asyncio.sleep(0.35)
    await jobs.aclose()
    assert calls and all(t == jobs.poll_s for t in calls)


async def test_a_heartbeat_keeps_a_job_longer_than_its_lease(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, b = stores
    runs: list[tuple[str, str, str]] = []
    ids = make_calls(a, 1, ("transcript",))
    # The step takes 2.7 leases; the other pool reaps expired leases all the while.
    long = pool(a, tmp_path, runs, "A", seconds=4.0, lease_s=1.5, workers=1)
    other = pool(b, tmp_path, runs, "B", lease_s=1.5, workers=1)
    before = lost("heartbeat") + lost("finish_job")
    await long.start()
    await until(lambda: runs)
    await other.start()
    try:
        await until(lambda: all_done(a, ids), timeout=10)
    finally:
        await long.aclose()
        await other.aclose()
    assert runs == [("A", ids[0], "transcript")]
    [row] = a.jobs_for(ids[0])
    assert row.attempts == 1 and row.worker is not None and row.worker.startswith("A/")
    assert lost("heartbeat") + lost("finish_job") == before


async def test_an_expired_lease_is_requeued_and_run_elsewhere(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, b = stores
    ids = make_calls(a, 1, ("peaks",))
    ghost = a.claim_job(worker="ghost/1/0", lease_s=1.0)  # a worker that then died
    assert ghost is not None
    runs: list[tuple[str, str, str]] = []
    jobs = pool(b, tmp_path, runs, "B", lease_s=1.0, workers=1)
    started = time.monotonic()
    await jobs.start()
    try:
        await until(lambda: all_done(a, ids), timeout=10)
    finally:
        await jobs.aclose()
    # Within a lease and a reaper period (lease / 4), plus the start and the step.
    assert time.monotonic() - started < 1.0 + 0.25 + 2.5
    [row] = a.jobs_for(ids[0])
    assert row.attempts == 2 and row.worker is not None and row.worker.startswith("B/")
    assert runs == [("B", ids[0], "peaks")]


async def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, b = stores
    ids = make_calls(a, 1, ("transcript",))
    entered = asyncio.Event()
    cancelled: list[bool] = []
    jobs = PostCallJobs(a, tmp_path / "data", node="A", lease_s=1.5, workers=1, poll_s=0.1)

    async def transcript(call_uuid: str) -> Any:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return a.final_transcript_op(call_uuid, [{"start": 0, "end": 1, "text": "late"}])

    jobs._step_transcript = transcript  # type: ignore[method-assign]
    before = lost("heartbeat")
    await jobs.start()
    try:
        async with asyncio.timeout(10):
            await entered.wait()
        # A thief takes the job as if A had frozen past its lease (reaped, then claimed).
        assert b.reset_running_jobs(now=time.time() + 60) == 1
        thief = b.claim_job(worker="thief/1/0", lease_s=60)
        assert thief is not None
        await until(lambda: cancelled, timeout=5)  # A's next heartbeat sees it
    finally:
        await jobs.aclose()
    assert lost("heartbeat") == before + 1
    [row] = a.jobs_for(ids[0])
    assert (row.status, row.worker) == ("running", "thief/1/0")
    call = a.get_call(ids[0])
    assert call is not None and call.transcript == ()


async def test_steps_filter_what_a_pool_takes(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, _ = stores
    runs: list[tuple[str, str, str]] = []
    ids = make_calls(a, 2)
    jobs = pool(a, tmp_path, runs, "A", steps=("archive_aac", "archive_mp3", "peaks"),
                listener=False)
    await jobs.start()
    try:
        await until(lambda: all(j.status == "done" for cid in ids for j in a.jobs_for(cid)
                                if j.step != "transcript" and j.step != "summary"))
        await asyncio.sleep(0.3)
    finally:
        await jobs.aclose()
    assert {s for _, _, s in runs} == {"archive_aac", "archive_mp3", "peaks"}
    rest = [j for cid in ids for j in a.jobs_for(cid) if j.step in ("transcript", "summary")]
    assert len(rest) == 4 and all(j.status == "pending" and j.attempts == 0 for j in rest)
    with pytest.raises(RuntimeError):
        jobs.submit(ids[0], tmp_path / "x.wav")  # a worker pool submits nothing
    with pytest.raises(ValueError):
        PostCallJobs(a, tmp_path, steps=("archive",))


async def test_shutdown_hands_a_running_job_back_at_once(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, _ = stores
    runs: list[tuple[str, str, str]] = []
    ids = make_calls(a, 1, ("peaks",))
    jobs = pool(a, tmp_path, runs, "A", seconds=30, workers=1)
    await jobs.start()
    await until(lambda: runs)
    await jobs.aclose()
    await asyncio.to_thread(a.flush)
    [row] = a.jobs_for(ids[0])
    # Pending again, the abandoned attempt not counted: the next worker need not wait.
    assert (row.status, row.attempts, row.lease_until) == ("pending", 0, None)


async def test_a_server_that_leaves_work_to_workers_only_queues(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, _ = stores
    jobs = PostCallJobs(a, tmp_path / "data", workers=0)
    await jobs.start()
    wav = tmp_path / "c.wav"
    wav.write_bytes(b"")
    [cid] = make_calls(a, 1, ())
    await jobs.asubmit(cid, wav)
    await asyncio.sleep(0.3)
    await jobs.aclose()
    await asyncio.to_thread(a.flush)
    rows = a.jobs_for(cid)
    assert len(rows) == len(STEPS) and all(j.status == "pending" for j in rows)


async def test_a_poison_job_fails_after_max_attempts_with_its_error(
    stores: tuple[CallStore, CallStore], tmp_path: Path
) -> None:
    a, b = stores
    ids = make_calls(a, 1, ("peaks",))
    attempts: list[str] = []
    pools = [PostCallJobs(s, tmp_path / "data", node=n, max_attempts=2, workers=1,
                          poll_s=0.1) for s, n in ((a, "A"), (b, "B"))]
    for p, name in zip(pools, "AB", strict=True):
        async def poison(call_uuid: str, name: str = name) -> None:
            attempts.append(name)
            raise ValueError(f"cannot decode {call_uuid} (try {len(attempts)})")
        p._step_peaks = poison  # type: ignore[method-assign]
        await p.start()
    try:
        # Attempt 1 fails, retried after 2 s; attempt 2 fails for good.
        await until(lambda: a.jobs_for(ids[0])[0].status == "failed", timeout=15)
        await asyncio.sleep(0.5)  # nothing claims it again
    finally:
        for p in pools:
            await p.aclose()
    [row] = a.jobs_for(ids[0])
    assert len(attempts) == 2 and row.attempts == 2
    assert row.error is not None and "ValueError: cannot decode" in row.error
    assert "(try 2)" in row.error


async def test_orphans_are_only_this_nodes_recordings(
    stores: tuple[CallStore, CallStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # calls.node is the store's (being added beside this); its rows are stood in for here:
    # with a shared recordings folder, another node's call is that node's to submit.
    import types

    a, _ = stores
    rec = tmp_path / "data" / "recordings"
    rec.mkdir(parents=True)
    [mine, theirs, legacy] = make_calls(a, 3, ())
    for cid in (mine, theirs, legacy):
        (rec / f"{cid}.wav").write_bytes(b"")
    owner = {mine: "A", theirs: "B", legacy: None}
    monkeypatch.setattr(a, "get_call_row", lambda cid: types.SimpleNamespace(
        ended_at=T0, node=owner[cid]))
    jobs = PostCallJobs(a, tmp_path / "data", node="A", workers=0)
    assert sorted(c for c, _ in jobs._orphans()) == sorted([mine, legacy])
