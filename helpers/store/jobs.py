"""The durable queue of post-call steps: one row per (call, step), claimed under a lease.

Several processes (servers and ``audiosocket worker``) may share one queue, so a claim is
not ownership forever but a lease: the claim sets ``status='running'``, ``worker`` (who) and
``lease_until`` (until when). The worker extends the lease while the step runs
(:meth:`JobQueries.extend_lease`); a worker that dies stops extending it, and once it has
expired anyone may put the job back (:meth:`JobQueries.reset_running_jobs`). Every write a
worker makes about its job is *fenced* (``WHERE id=? AND worker=? AND status='running'``):
a worker whose job was taken from it learns so from the row count, and its result is
thrown away instead of overwriting the new holder's.

The SQL is standard (``UPDATE ... WHERE id = (SELECT ...) RETURNING``), so it runs on SQLite
and PostgreSQL alike; the one difference, locking the chosen row so concurrent claimers skip
it, is the dialect's ``skip_locked`` (see :meth:`JobQueries._claim_subquery`).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from prometheus_client import Counter

from helpers.store.core import StoreCore
from helpers.store.dialect import Conn
from helpers.store.rows import JobRow

__all__ = ["DEFAULT_LEASE_S", "JOBS_LOST_LEASE", "LOCAL_WORKER", "JobQueries", "WriteOp",
           "job_row"]

log = structlog.get_logger("helpers.store.jobs")

#: The worker name of callers that do not give one (a single process, the tests).
LOCAL_WORKER = "local"
DEFAULT_LEASE_S = 30.0

#: A write that belongs to a job's result: run on the writer connection, in the same
#: transaction as the job's fenced finish (so both happen, or neither).
WriteOp = Callable[[Conn], Any]

JOBS_LOST_LEASE = Counter(
    "audiosocket_jobs_lost_lease_total",
    "Post-call job results discarded because the worker no longer held the job's lease",
    ["op"],
)


def job_row(r: Any) -> JobRow:
    """A ``jobs`` row as its typed row."""
    return JobRow(r["id"], r["call_uuid"], r["step"], r["status"], r["attempts"], r["error"],
                  r["duration"], r["not_before"], r["updated_at"], r["worker"],
                  r["lease_until"])


class JobQueries(StoreCore):
    """Enqueue, claim (with a lease), heartbeat, finish and defer post-call jobs."""

    def enqueue_jobs(
        self, call_uuid: str, steps: Sequence[str], not_before: float | None = None
    ) -> concurrent.futures.Future[None]:
        """Add pending jobs for a call; a step already present is left as it is."""
        now = time.time()
        nb = now if not_before is None else not_before
        rows = [(call_uuid, step, nb, now) for step in steps]

        def op(conn: Conn) -> None:
            conn.executemany(
                "INSERT INTO jobs (call_uuid, step, status, not_before, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?) ON CONFLICT(call_uuid, step) DO NOTHING",
                rows,
            )

        return self._submit(op, "enqueue_jobs")

    def _claim_subquery(self, where: str) -> str:
        """The SELECT that picks the job a claim takes: the oldest due one. The only place
        where the back-ends differ: SQLite needs nothing (its writer lock serialises the
        whole UPDATE); PostgreSQL appends ``FOR UPDATE SKIP LOCKED``, so two claimers never
        wait on, nor both pick, the same row."""
        return (f"SELECT id FROM jobs WHERE {where} ORDER BY not_before, id LIMIT 1"
                f"{self._dialect.skip_locked}")

    def claim_job_async(
        self,
        steps: set[str] | None = None,
        now: float | None = None,
        *,
        worker: str = LOCAL_WORKER,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> concurrent.futures.Future[JobRow | None]:
        """Queue an atomic pending→running claim for ``worker``, leased for ``lease_s``
        seconds; the future gives the job (attempts counted) or None."""
        step_list = sorted(steps) if steps is not None else None

        def op(conn: Conn) -> JobRow | None:
            at = time.time() if now is None else now
            where = "status='pending' AND not_before <= ?"
            params: list[Any] = [at]
            if step_list is not None:
                if not step_list:
                    return None
                where += f" AND step IN ({','.join('?' * len(step_list))})"
                params += step_list
            # ONE statement: the choice and the take cannot be split by another claimer,
            # in this process or another one.
            row = conn.execute(
                "UPDATE jobs SET status='running', attempts=attempts+1, worker=?, "
                f"lease_until=?, updated_at=? WHERE id = ({self._claim_subquery(where)}) "
                # PostgreSQL re-reads a row locked meanwhile: still pending, or no claim.
                "AND status='pending' RETURNING *",
                [worker, at + lease_s, at, *params],
            ).fetchone()
            return job_row(row) if row is not None else None

        return self._submit(op, "claim_job", skip_if_cancelled=True)

    def claim_job(
        self,
        steps: set[str] | None = None,
        now: float | None = None,
        *,
        worker: str = LOCAL_WORKER,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> JobRow | None:
        """Claim the oldest due pending job (optionally among ``steps``), or None.

        Blocking (it waits for the writer): call it from a worker thread, or await
        ``asyncio.wrap_future(store.claim_job_async(...))`` on the loop.
        """
        return self.claim_job_async(steps, now, worker=worker, lease_s=lease_s).result()

    def claimable_jobs(self, steps: set[str] | None = None, now: float | None = None) -> int:
        """How many pending jobs are due (among ``steps``): a read, so idle workers poll
        with it and only take the writer's lock when there is something to claim."""
        where = "status='pending' AND not_before <= ?"
        params: list[Any] = [time.time() if now is None else now]
        if steps is not None:
            if not steps:
                return 0
            where += f" AND step IN ({','.join('?' * len(steps))})"
            params += sorted(steps)
        with self._reader() as conn:
            row = conn.execute(f"SELECT count(*) FROM jobs WHERE {where}", params).fetchone()
        return int(row[0])

    def extend_lease(
        self, id: int, worker: str, lease_s: float = DEFAULT_LEASE_S
    ) -> concurrent.futures.Future[bool]:
        """The heartbeat: push a running job's lease to now + ``lease_s``. False when
        ``worker`` no longer holds the job (its lease expired and it was requeued)."""
        job_id = id

        def op(conn: Conn) -> bool:
            at = time.time()
            return bool(conn.execute(
                "UPDATE jobs SET lease_until=? WHERE id=? AND worker=? AND status='running'",
                (at + lease_s, job_id, worker),
            ).rowcount == 1)

        return self._submit(op, "extend_lease")

    def finish_job(
        self,
        id: int,  # shadows a builtin: the column name, as in the brief
        status: str,
        error: str | None = None,
        duration: float | None = None,
        retry_delay: float | None = None,
        *,
        worker: str = LOCAL_WORKER,
        write: WriteOp | None = None,
    ) -> concurrent.futures.Future[bool]:
        """Mark ``worker``'s job 'done' or 'failed'; 'failed' with ``retry_delay`` goes back
        to 'pending', not before now + retry_delay (the caller decides how many attempts).

        Fenced: only while ``worker`` holds the job. ``write`` (the step's result, e.g. the
        transcript's segments) runs in the same transaction, after the fence, so a worker
        that lost the job writes nothing. The future gives False when the job was no longer
        ``worker``'s (logged as ``job_lost_lease`` and counted)."""
        if status not in ("done", "failed"):
            raise ValueError(f"finish_job status must be 'done' or 'failed', not {status!r}")
        now = time.time()
        job_id = id
        if status == "failed" and retry_delay is not None:
            new_status, not_before = "pending", now + retry_delay
        else:
            new_status, not_before = status, None

        def op(conn: Conn) -> bool:
            # worker is kept (who did it); the lease ends with the run.
            taken = conn.execute(
                "UPDATE jobs SET status=?, error=?, duration=?, updated_at=?, lease_until=NULL, "
                "not_before=coalesce(?, not_before) "
                "WHERE id=? AND worker=? AND status='running'",
                (new_status, error, duration, now, not_before, job_id, worker),
            ).rowcount == 1
            if not taken:
                _lost("finish_job", job_id, worker)
                return False
            if write is not None:
                write(conn)
            return True

        return self._submit(op, "finish_job")

    def defer_job(
        self, id: int, delay: float, *, worker: str = LOCAL_WORKER
    ) -> concurrent.futures.Future[bool]:
        """Put ``worker``'s claimed job back to 'pending' without counting the attempt: it
        could not run yet (a step it depends on is not done) or its worker is stopping,
        which is not a failure. Fenced like :meth:`finish_job`."""
        job_id = id
        now = time.time()

        def op(conn: Conn) -> bool:
            taken = conn.execute(
                # CASE, not SQLite's two-argument max(): standard SQL, PostgreSQL too.
                "UPDATE jobs SET status='pending', "
                "attempts=CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at=?, "
                "not_before=?, lease_until=NULL WHERE id=? AND worker=? AND status='running'",
                (now, now + delay, job_id, worker),
            ).rowcount == 1
            if not taken:
                _lost("defer_job", job_id, worker)
            return bool(taken)

        return self._submit(op, "defer_job")

    def pending_job_count(self) -> int:
        """Jobs waiting or running (the post-call queue depth)."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')"
            ).fetchone()
        return int(row[0])

    def requeue_expired_jobs_async(
        self, max_attempts: int | None = None, now: float | None = None
    ) -> concurrent.futures.Future[int]:
        """Running jobs whose lease has expired (their worker died or hung; NULL: claimed
        before leases existed) go back to 'pending'; the future gives how many.

        The lost attempt stays counted: a step that kills its worker (a decoder crash, the
        OOM killer on a huge file) must not be retried forever. A job that has used up
        ``max_attempts`` this way is failed instead, with the reason in ``error``."""

        def op(conn: Conn) -> int:
            at = time.time() if now is None else now
            expired = "status='running' AND (lease_until IS NULL OR lease_until < ?)"
            failed = 0
            if max_attempts is not None:
                failed = conn.execute(
                    "UPDATE jobs SET status='failed', lease_until=NULL, updated_at=?, "
                    "error=coalesce(error || '\n', '') || ? "
                    f"WHERE {expired} AND attempts >= ?",
                    (at, "worker lost on the last attempt (its lease expired)", at, max_attempts),
                ).rowcount
            requeued = conn.execute(
                "UPDATE jobs SET status='pending', lease_until=NULL, updated_at=? "
                f"WHERE {expired}",
                (at, at),
            ).rowcount
            return int(requeued) + int(failed)

        return self._submit(op, "requeue_expired_jobs")

    def reset_running_jobs(
        self, max_attempts: int | None = None, now: float | None = None
    ) -> int:
        """Requeue running jobs whose lease expired (:meth:`requeue_expired_jobs_async`).
        Blocks; returns how many. Live leases are left alone: with several workers on one
        store, the other workers' running jobs are not this process's to take."""
        return self.requeue_expired_jobs_async(max_attempts, now).result()

    def jobs_for(self, call_uuid: str) -> list[JobRow]:
        """All jobs of a call, oldest first."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE call_uuid=? ORDER BY id", (call_uuid,)
            ).fetchall()
        return [job_row(r) for r in rows]


def _lost(op: str, job_id: int, worker: str) -> None:
    """A fenced write found the job no longer held by ``worker``: say so and count it."""
    JOBS_LOST_LEASE.labels(op=op).inc()
    log.warning("job_lost_lease", op=op, job=job_id, worker=worker)
