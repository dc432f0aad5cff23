"""The durable queue of post-call steps: one row per (call, step), claimed atomically."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Sequence
from typing import Any

from helpers.store.core import StoreCore
from helpers.store.dialect import Conn
from helpers.store.rows import JobRow

__all__ = ["JobQueries", "job_row"]


def job_row(r: Any) -> JobRow:
    """A ``jobs`` row as its typed row."""
    return JobRow(r["id"], r["call_uuid"], r["step"], r["status"], r["attempts"], r["error"],
                  r["duration"], r["not_before"], r["updated_at"])


class JobQueries(StoreCore):
    """Enqueue, claim, finish and defer post-call jobs."""

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

    def claim_job_async(
        self, steps: set[str] | None = None, now: float | None = None
    ) -> concurrent.futures.Future[JobRow | None]:
        """Queue an atomic pending→running claim; the future gives the job or None."""
        step_list = sorted(steps) if steps is not None else None
        # PostgreSQL: another node's writer may be claiming at the same moment; the row
        # lock makes it skip to the next job rather than take the same one.
        lock = self._dialect.skip_locked

        def op(conn: Conn) -> JobRow | None:
            at = time.time() if now is None else now
            where = "status='pending' AND not_before <= ?"
            params: list[Any] = [at]
            if step_list is not None:
                if not step_list:
                    return None
                where += f" AND step IN ({','.join('?' * len(step_list))})"
                params += step_list
            # One UPDATE ... RETURNING: atomic even against another process.
            row = conn.execute(
                "UPDATE jobs SET status='running', attempts=attempts+1, updated_at=? "
                f"WHERE id = (SELECT id FROM jobs WHERE {where} ORDER BY not_before, id "
                f"LIMIT 1{lock}) AND status='pending' RETURNING *",
                [at, *params],
            ).fetchone()
            return job_row(row) if row is not None else None

        return self._submit(op, "claim_job", skip_if_cancelled=True)

    def claim_job(
        self, steps: set[str] | None = None, now: float | None = None
    ) -> JobRow | None:
        """Claim the oldest due pending job (optionally among ``steps``), or None.

        Blocking (it waits for the writer): call it from a worker thread, or await
        ``asyncio.wrap_future(store.claim_job_async(...))`` on the loop.
        """
        return self.claim_job_async(steps, now).result()

    def finish_job(
        self,
        id: int,  # shadows a builtin: the column name, as in the brief
        status: str,
        error: str | None = None,
        duration: float | None = None,
        retry_delay: float | None = None,
    ) -> concurrent.futures.Future[None]:
        """Mark a job 'done' or 'failed'; 'failed' with ``retry_delay`` goes back to
        'pending', not before now + retry_delay (the caller decides how many attempts)."""
        if status not in ("done", "failed"):
            raise ValueError(f"finish_job status must be 'done' or 'failed', not {status!r}")
        now = time.time()
        job_id = id
        if status == "failed" and retry_delay is not None:
            new_status, not_before = "pending", now + retry_delay
        else:
            new_status, not_before = status, None

        def op(conn: Conn) -> None:
            conn.execute(
                "UPDATE jobs SET status=?, error=?, duration=?, updated_at=?, "
                "not_before=coalesce(?, not_before) WHERE id=?",
                (new_status, error, duration, now, not_before, job_id),
            )

        return self._submit(op, "finish_job")

    def defer_job(self, id: int, delay: float) -> concurrent.futures.Future[None]:
        """Put a claimed job back to 'pending' without counting the attempt: it could not
        run yet (a step it depends on is not done), which is not a failure."""
        job_id = id
        now = time.time()

        def op(conn: Conn) -> None:
            conn.execute(
                "UPDATE jobs SET status='pending', "
                "attempts=CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at=?, "
                "not_before=? WHERE id=?",
                (now, now + delay, job_id),
            )

        return self._submit(op, "defer_job")

    def pending_job_count(self) -> int:
        """Jobs waiting or running (the post-call queue depth)."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')"
            ).fetchone()
        return int(row[0])

    def reset_running_jobs(self) -> int:
        """At start-up (crash resume): running → pending. Blocks; returns how many."""

        def op(conn: Conn) -> int:
            return int(conn.execute(
                "UPDATE jobs SET status='pending', updated_at=? WHERE status='running'",
                (time.time(),),
            ).rowcount)

        return self._submit(op, "reset_running_jobs").result()

    def jobs_for(self, call_uuid: str) -> list[JobRow]:
        """All jobs of a call, oldest first."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE call_uuid=? ORDER BY id", (call_uuid,)
            ).fetchall()
        return [job_row(r) for r in rows]
