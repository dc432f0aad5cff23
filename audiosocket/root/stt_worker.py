"""Placeholder until the stt_worker lands: says so and exits 1."""

from __future__ import annotations

import asyncio
import sys

from audiosocket.config import Config

__all__ = ["run_stt_worker"]


async def run_stt_worker(config: Config, stop: asyncio.Event) -> int:
    """Not built yet."""
    print("audiosocket worker: stt worker is not built yet", file=sys.stderr)
    return 1
