"""The job half of ``audiosocket worker``: post-call steps claimed from the shared store.

The process takes no calls. It opens the store the servers write (``cluster.store``, or the
SQLite file under ``data_dir`` when they share the data directory), runs
:class:`helpers.postcall.jobs.PostCallJobs` with no listener (it submits nothing and scans
no recordings: the servers do that) on the steps ``--steps`` names, under the process's caps
of ``postcall.ffmpeg_limit`` FFmpeg children and ``postcall.ai_limit`` AI inferences, until
``stop`` is set (SIGTERM/SIGINT). Its running jobs are then handed back to pending at once;
were the process killed instead, their leases expire and another worker takes them.
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from audiosocket.config import Config
from audiosocket.root.app import AppContext
from audiosocket.root.services import close_services, ensure_jobs, ensure_store, ensure_stt

__all__ = ["run_job_worker", "worker_tasks"]

log = structlog.get_logger("audiosocket.worker.jobs")

_FFMPEG_STEPS = frozenset({"archive_aac", "archive_mp3", "peaks"})
_AI_STEPS = frozenset({"transcript", "summary"})


def worker_tasks(config: Config, steps: tuple[str, ...]) -> int:
    """As many claiming tasks as the caps can run at once: a task beyond them would only
    hold a job (and its lease) that another worker process could be running."""
    n = 0
    if _FFMPEG_STEPS & set(steps):
        n += config.postcall.ffmpeg_limit
    if _AI_STEPS & set(steps):
        n += config.postcall.ai_limit
    return max(1, n)


async def run_job_worker(config: Config, steps: tuple[str, ...], stop: asyncio.Event) -> int:
    """Work post-call jobs until ``stop``; 1 when the store stays unreachable for
    ``cluster.connect_timeout_s`` (or the pool cannot start), else 0."""
    ctx = AppContext(config)
    try:
        try:
            # open_store already retries an unreachable PostgreSQL until
            # cluster.connect_timeout_s; what it raises is final.
            await ensure_store(ctx, own_calls=False)
        except Exception as exc:
            log.error("worker_store_unreachable", error=str(exc),
                      timeout_s=config.cluster.connect_timeout_s)
            print(f"audiosocket worker: the store is unreachable: {exc}", file=sys.stderr)
            return 1
        try:
            if "transcript" in steps:
                # Load Whisper before claiming anything: loading holds the GIL in stretches
                # (seconds on a busy machine), and a job claimed meanwhile could miss its
                # heartbeats and lose its lease. (The summariser loads in ``start``.)
                await ensure_stt(ctx)
            jobs = await ensure_jobs(ctx, steps=steps, listener=False,
                                     workers=worker_tasks(config, steps))
        except Exception as exc:
            log.error("worker_jobs_failed", error=repr(exc))
            print(f"audiosocket worker: cannot start the job workers: {exc}", file=sys.stderr)
            return 1
        log.info("job_worker_ready", workers=jobs.worker_ids, steps=list(steps),
                 lease_s=jobs.lease_s)
        await stop.wait()
        log.info("job_worker_stopping", running=jobs.running)
        return 0
    finally:
        await close_services(ctx)
