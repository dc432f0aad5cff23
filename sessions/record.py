"""The ``record`` app: silent; writes both directions as one time-aligned stereo WAV."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.recorder import CallRecorder, shared_writer
from sessions.base import Session

if TYPE_CHECKING:
    from audiosocket.app import AppContext
    from audiosocket.call import Call

__all__ = ["RecordSession", "recording_path"]


def recording_path(data_dir: Path, call_id: str) -> Path:
    """Where a call's WAV lives: ``<data>/recordings/<uuid>.wav``."""
    return data_dir / "recordings" / f"{call_id}.wav"


class RecordSession(Session):
    """Record: left channel the caller, right channel what we sent, aligned by the clock.

    Subclasses (``transcribe``, ``ivr``) inherit the recording and add behaviour.
    """

    name = "record"

    def __init__(self, call: Call, ctx: AppContext) -> None:
        super().__init__(call, ctx)
        self.recording = recording_path(ctx.data_dir, call.id)
        self.recorder = CallRecorder(self.recording, call.rate)

    def on_audio(self, pcm: bytes, rate: int) -> None:
        if rate == self.call.rate:
            self.recorder.add_inbound(pcm, self.call.tick)

    def on_tick(self, tick: int, sent: bytes | None) -> None:
        self.recorder.add_outbound(tick, sent)

    async def on_end(self, reason: str) -> None:
        self.recorder.close()
        # The writer thread may still hold the last second: wait for it before the
        # post-call jobs read the file.
        await asyncio.to_thread(shared_writer().flush)
        self.log.info("recording_closed", path=str(self.recording),
                      seconds=round(self.recorder.duration, 2))
        jobs = self.ctx.get("jobs")
        if jobs is not None and self.recorder.error is None:
            jobs.submit(self.uuid, self.recording)
