"""Leased jobs on a real SQLite store: claims, heartbeats, fenced finishes, expiry, poison."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from helpers.store.db import CallStore
from helpers.store.schema import MIGRATIONS

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CallStore]:
    s = CallStore(tmp_path).open()
    yield s
    s.close()


def lost(op: str) -> float:
    return REGISTRY.get_sample_value("audiosocket_jobs_lost_lease_total", {"op": op}) or 0.0


def make_call(store: CallStore) -> str:
    cid = uuid.uuid4().hex
    store.call_started(cid, "record", 8000, None, T0)
    store.call_ended(cid, T0 + 5, "remote_closed", 0, 0)
    return cid


def test_claim_records_the_worker_and_its_lease(store: CallStore) -> None:
    cid = make_call(store)
    store.enqueue_jobs(cid, ["peaks", "transcript"], not_before=T0)
    before = time.time()
    job = store.claim_job({"transcript"}, worker="n1/10/0", lease_s=7.0)
    assert job is not None and job.step == "transcript" and job.worker == "n1/10/0"
    assert job.lease_until is not None and before + 7.0 <= job.lease_until <= time.time() + 7.0
    [row] = [j for j in store.jobs_for(cid) if j.step == "transcript"]
    assert (row.status, row.worker, row.attempts) == ("running", "n1/10/0", 1)
    # Only the steps asked for are claimed: the peaks job is left for a worker that takes it.
    assert store.claim_job({"transcript", "summary"}, worker="n1/10/1") is None
    other = store.claim_job({"peaks"}, worker="n1/10/1")
    assert other is not None and other.step == "peaks"


def test_the_claim_is_one_statement_with_a_lock_hook(store: CallStore) -> None:
    # PostgreSQL's dialect appends FOR UPDATE SKIP LOCKED to the row-choosing subquery.
    assert store._claim_subquery("x") == (
        "SELECT id FROM jobs WHERE x ORDER BY not_before, id LIMIT 1")

    from helpers.store.pg import PgDialect

    assert PgDialect.skip_locked == " FOR UPDATE SKIP LOCKED"


def test_two_stores_on_one_file_never_hand_out_a_job_twice(tmp_path: Path) -> None:
    # Two CallStores are two writers, as two processes would be: SQLite's lock, not our
    # writer thread, is what keeps the claim atomic here.
    a, b = CallStore(tmp_path).open(), CallStore(tmp_path).open()
    try:
        cid = make_call(a)
        a.enqueue_jobs(cid, [f"s{i}" for i in range(60)], not_before=T0)
        a.flush()
        claimed: list[tuple[str, int]] = []
        lock = threading.Lock()

        def work(s: CallStore, name: str) -> None:
            while (job := s.claim_job(worker=name)) is not None:
                assert s.finish_job(job.id, "done", worker=name).result(10)
                with lock:
                    claimed.append((name, job.id))

        threads = [threading.Thread(target=work, args=(s, f"w{i}"))
                   for i, s in enumerate((a, b, a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        ids = [i for _, i in claimed]
        assert len(ids) == 60 and len(set(ids)) == 60
        assert {j.status for j in a.jobs_for(cid)} == {"done"}
        assert all(j.attempts == 1 for j in a.jobs_for(cid))
    finally:
        a.close()
        b.close()


def test_a_stolen_job_cannot_be_finished_nor_written_by_its_old_worker(
    store: CallStore,
) -> None:
    cid = make_call(store)
    store.enqueue_jobs(cid, ["transcript"], not_before=T0)
    old = store.claim_job(worker="old", lease_s=5.0)
    assert old is not None
    assert store.extend_lease(old.id, "old", 5.0).result(5)  # heartbeat while held
    # "old" froze past its lease: it expired and another worker took the job.
    assert store.reset_running_jobs(now=time.time() + 6) == 1
    # Requeued but not yet taken: the row still names "old", and is still not its own.
    assert store.finish_job(old.id, "done", worker="old").result(5) is False
    assert store.jobs_for(cid)[0].status == "pending"
    new = store.claim_job(worker="new")
    assert new is not None and new.id == old.id and new.attempts == 2
    before = lost("finish_job")
    late_write = store.final_transcript_op(cid, [{"start": 0, "end": 1, "text": "stale"}])
    assert store.finish_job(old.id, "done", worker="old", write=late_write).result(5) is False
    assert lost("finish_job") == before + 1
    assert store.extend_lease(old.id, "old", 5.0).result(5) is False
    assert store.defer_job(old.id, 0.0, worker="old").result(5) is False
    [row] = store.jobs_for(cid)
    assert (row.status, row.worker) == ("running", "new")  # untouched by the old worker
    call = store.get_call(cid)
    assert call is not None and call.transcript == ()  # its result was discarded
    fresh = store.final_transcript_op(cid, [{"start": 0, "end": 1, "text": "fresh"}])
    assert store.finish_job(new.id, "done", worker="new", write=fresh).result(5) is True
    call = store.get_call(cid)
    assert call is not None and [s.text for s in call.transcript] == ["fresh"]
    [row] = store.jobs_for(cid)
    assert (row.status, row.worker, row.lease_until) == ("done", "new", None)


def test_the_step_write_and_the_finish_commit_together(store: CallStore) -> None:
    cid = make_call(store)
    store.enqueue_jobs(cid, ["transcript"], not_before=T0)
    job = store.claim_job(worker="w")
    assert job is not None

    def broken(conn: sqlite3.Connection) -> None:
        store.final_transcript_op(cid, [{"start": 0, "end": 1, "text": "half"}])(conn)
        raise sqlite3.IntegrityError("the rest of the write failed")

    with pytest.raises(sqlite3.IntegrityError):
        store.finish_job(job.id, "done", worker="w", write=broken).result(5)
    [row] = store.jobs_for(cid)
    assert row.status == "running"  # the finish was rolled back with the write
    call = store.get_call(cid)
    assert call is not None and call.transcript == ()


def test_only_expired_leases_are_requeued(store: CallStore) -> None:
    cid = make_call(store)
    store.enqueue_jobs(cid, ["a", "b"], not_before=T0)
    live = store.claim_job({"a"}, worker="alive", lease_s=60.0)
    dead = store.claim_job({"b"}, worker="dead", lease_s=1.0)
    assert live is not None and dead is not None
    # At start-up a second worker must not take the first one's live job.
    assert store.reset_running_jobs() == 0
    assert store.reset_running_jobs(now=time.time() + 2) == 1
    rows = {j.step: j for j in store.jobs_for(cid)}
    assert rows["a"].status == "running" and rows["a"].worker == "alive"
    # Requeued with the lost attempt counted, and claimable again at once.
    assert (rows["b"].status, rows["b"].attempts, rows["b"].lease_until) == ("pending", 1, None)
    again = store.claim_job(worker="next")
    assert again is not None and again.step == "b" and again.attempts == 2


def test_a_job_that_keeps_killing_its_worker_fails_with_the_reason(store: CallStore) -> None:
    cid = make_call(store)
    store.enqueue_jobs(cid, ["transcript"], not_before=T0)
    for attempt in (1, 2):
        job = store.claim_job(worker=f"w{attempt}", lease_s=1.0)
        assert job is not None and job.attempts == attempt
        # The worker died (no heartbeat); its lease runs out.
        assert store.reset_running_jobs(max_attempts=2, now=time.time() + 2) == 1
    [row] = store.jobs_for(cid)
    assert row.status == "failed" and row.attempts == 2
    assert row.error is not None and "lease expired" in row.error
    assert store.claim_job(worker="w3") is None


def test_jobs_running_before_the_lease_migration_count_as_expired(tmp_path: Path) -> None:
    cid = uuid.uuid4().hex
    with CallStore(tmp_path, migrations=MIGRATIONS[:3]) as old:
        # Rows as a v3 server wrote them (today's call_started writes columns v3 lacks).
        old._submit(lambda conn: conn.execute(
            "INSERT INTO calls (uuid, app, rate, started_at) VALUES (?, 'record', 8000, ?)",
            (cid, T0))).result(5)
        old._submit(lambda conn: conn.execute(
            "INSERT INTO jobs (call_uuid, step, status, attempts, updated_at) "
            "VALUES (?, 'peaks', 'running', 1, ?)", (cid, T0))).result(5)
    with CallStore(tmp_path) as s:
        [row] = s.jobs_for(cid)
        assert (row.status, row.worker, row.lease_until) == ("running", None, None)
        assert s.reset_running_jobs() == 1
        job = s.claim_job(worker="w")
        assert job is not None and job.attempts == 2 and job.worker == "w"


def test_claimable_jobs_counts_due_pending_jobs_of_the_steps(store: CallStore) -> None:
    cid = make_call(store)
    store.enqueue_jobs(cid, ["peaks", "transcript"], not_before=T0)
    store.enqueue_jobs(cid, ["summary"], not_before=time.time() + 3600)
    store.flush()
    assert store.claimable_jobs() == 2
    assert store.claimable_jobs({"peaks"}) == 1
    assert store.claimable_jobs({"summary"}) == 0
    assert store.claimable_jobs(set()) == 0
    store.claim_job({"peaks"}, worker="w")
    assert store.claimable_jobs({"peaks"}) == 0
