"""The ``record`` app: silent; writes both directions as one time-aligned stereo WAV."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.recorder import HOLD_SLOTS, CallRecorder
from sessions.base import Session

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.live import LiveCall
    from audiosocket.root.app import AppContext

__all__ = ["RecordSession", "recording_path"]

#: Retries of recordings the disk refused at hang-up (kept referenced until done).
_BACKGROUND: set[asyncio.Task[None]] = set()


def recording_path(data_dir: Path, call_id: str) -> Path:
    """Where a call's WAV lives: ``<data>/recordings/<call id>.wav`` (the call's own id, not
    its AudioSocket UUID, which a fixed-UUID dialplan repeats)."""
    return data_dir / "recordings" / f"{call_id}.wav"


class RecordSession(Session):
    """Record: left channel the caller, right channel what we sent, aligned by the clock.

    Subclasses (``transcribe``, ``ivr``) inherit the recording and add behaviour.
    """

    name = "record"

    def __init__(self, call: Call, ctx: AppContext) -> None:
        super().__init__(call, ctx)
        self.recording = recording_path(ctx.data_dir, call.id)
        self.recorder = CallRecorder(self.recording, call.rate, hold_slots=HOLD_SLOTS,
                                     writer=ctx.services.writer)
        live = ctx.services.live
        #: This call in the portal's live view (IVR node, transcript lines, listen-in tap).
        self.live: LiveCall | None = live.attach(call) if live is not None else None
        if self.live is not None:
            self.live.tap = True

    def on_audio(self, pcm: bytes, rate: int) -> None:
        if rate == self.call.rate:
            self.recorder.add_inbound(pcm, self.call.tick)
            live = self.live
            if live is not None and live.listeners:  # the tap costs nothing unheard
                live.heard(pcm)

    def on_tick(self, tick: int, sent: bytes | None) -> None:
        self.recorder.add_outbound(tick, sent)
        live = self.live
        if live is not None and live.listeners:
            live.sent(sent)

    async def on_end(self, reason: str) -> None:
        self.recorder.close()
        # The writer thread may still hold the last second: wait for it before the
        # post-call jobs read the file.
        await asyncio.to_thread(self.ctx.services.writer.flush)
        if self.recorder.refused:
            # Its jobs would archive the other call's file as this one's.
            self.log.error("recording_refused", path=str(self.recording),
                           error=self.recorder.error)
            return
        self.log.info("recording_closed", path=str(self.recording),
                      seconds=round(self.recorder.duration, 2))
        if self.recorder.pending_bytes:
            # The disk refused the end of the recording (full?): keep retrying in the
            # background, and queue the post-call jobs only once the file is whole.
            self.log.error("recording_incomplete", pending=self.recorder.pending_bytes,
                           error=self.recorder.error)
            task = asyncio.create_task(self._finish_later())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
            return
        await self._submit_jobs()

    async def _submit_jobs(self) -> None:
        jobs = self.ctx.services.jobs
        if jobs is not None:
            await jobs.asubmit(self.uuid, self.recording)

    async def _finish_later(self, every_s: float = 2.0, attempts: int = 300) -> None:
        for _ in range(attempts):
            await asyncio.sleep(every_s)
            self.recorder.retry()
            await asyncio.to_thread(self.ctx.services.writer.flush)
            if not self.recorder.pending_bytes:
                self.log.info("recording_completed_late", path=str(self.recording))
                await self._submit_jobs()
                return
        self.log.error("recording_abandoned", pending=self.recorder.pending_bytes)
