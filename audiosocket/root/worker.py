"""``audiosocket worker``: post-call jobs and remote live STT in a process of their own.

A server with ``cluster.store`` set leaves its post-call jobs in the shared store; any number
of workers claim them (``helpers.store.jobs``). With ``--stt`` the process also answers the
live utterances that servers with ``cluster.stt_remote`` send over NATS
(``audiosocket.root.stt_worker``).
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from audiosocket.config import Config, ConfigError

__all__ = ["STEP_GROUPS", "parse_steps", "run_worker"]

log = structlog.get_logger("audiosocket.worker")

#: ``--steps`` groups: what needs FFmpeg (and the cheap peaks beside it) and what needs models.
STEP_GROUPS: dict[str, tuple[str, ...]] = {
    "ffmpeg": ("archive_aac", "archive_mp3", "peaks"),
    "ai": ("transcript", "summary"),
}
ALL_STEPS = STEP_GROUPS["ffmpeg"] + STEP_GROUPS["ai"]


def parse_steps(text: str | None, *, stt: bool) -> tuple[str, ...]:
    """The post-call steps ``--steps`` names (groups or step names); all of them when it is
    absent, none when only ``--stt`` is given. A name we do not know is a :class:`ConfigError`."""
    if text is None:
        return () if stt else ALL_STEPS
    steps: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        group = STEP_GROUPS.get(name, (name,) if name in ALL_STEPS else None)
        if group is None:
            raise ConfigError(
                f"--steps: {name!r} is not one of {', '.join([*STEP_GROUPS, *ALL_STEPS])}"
            )
        steps += [s for s in group if s not in steps]
    if not steps and not stt:
        raise ConfigError("--steps: names no step")
    return tuple(steps)


async def run_worker(config: Config, *, steps: tuple[str, ...], stt: bool) -> int:
    """Run until SIGTERM/SIGINT; the exit code of the first part that fails, else 0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parts = []
    if steps:
        from audiosocket.root.job_worker import run_job_worker

        parts.append(run_job_worker(config, steps, stop))
    if stt:
        from audiosocket.root.stt_worker import run_stt_worker

        parts.append(run_stt_worker(config, stop))
    log.info("worker_start", node=config.node, steps=list(steps), stt=stt)
    codes = await asyncio.gather(*parts)
    code = next((c for c in codes if c), 0)
    log.info("worker_exit", code=code)
    return code
