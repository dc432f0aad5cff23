"""Wake idle post-call workers when a job becomes pending: PostgreSQL LISTEN/NOTIFY.

The ``jobs_pending`` trigger (``helpers.store.pg_schema``) notifies ``audiosocket_jobs``
when a row turns pending, at its commit. :class:`JobWakeups` is the ``wakeup`` of
:class:`helpers.postcall.jobs.PostCallJobs`: one asyncio task per process holds a LISTEN
connection (psycopg's async connection, on the caller's loop: no thread, nothing blocks)
and sets an event that every waiting worker task sees. Polling stays underneath: a
notification lost while the connection is down costs at most one poll interval, and the
task reconnects with a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import structlog

__all__ = ["CHANNEL", "JobWakeups"]

log = structlog.get_logger("helpers.store.pg_listen")

CHANNEL = "audiosocket_jobs"


class JobWakeups:
    """``await wakeups(timeout)`` returns at the next notification (or after ``timeout``)."""

    def __init__(self, url: str, *, retry_s: float = 1.0) -> None:
        self.url = url
        self.retry_s = retry_s
        self._event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: Notifications received (for tests and the log).
        self.received = 0

    def start(self) -> None:
        """Start listening on the running loop (idempotent)."""
        if self._task is None:
            self._event = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._listen())

    async def __call__(self, timeout: float) -> None:
        self.start()
        assert self._event is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
        self._event.clear()

    async def _listen(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    log.info("job_wakeups_listening")
                    async for _ in conn.notifies():
                        self.received += 1
                        if self._event is not None:
                            self._event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: poll until it is back
                log.warning("job_wakeups_lost", error=str(exc))
            await asyncio.sleep(self.retry_s)

    async def aclose(self) -> None:
        """Stop listening."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
