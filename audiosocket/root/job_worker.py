"""Placeholder until the job_worker lands: says so and exits 1."""

from __future__ import annotations

import asyncio
import sys

from audiosocket.config import Config

__all__ = ["run_job_worker"]


async def run_job_worker(config: Config, steps: tuple[str, ...], stop: asyncio.Event) -> int:
    """Not built yet."""
    print("audiosocket worker: job worker is not built yet", file=sys.stderr)
    return 1
