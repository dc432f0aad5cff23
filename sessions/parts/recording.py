"""The recording part: both directions of a call as one time-aligned stereo WAV."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiosocket import native
from helpers.recorder import HOLD_SLOTS, CallRecorder, RecorderWriter, interleave_legs
from sessions.parts import Part

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.live import LiveCall
    from audiosocket.media import MediaBlock
    from helpers.postcall.jobs import PostCallJobs

__all__ = ["Recording", "recording_path"]

#: Retries of recordings the disk refused at hang-up (kept referenced until done).
_BACKGROUND: set[asyncio.Task[None]] = set()


def recording_path(data_dir: Path, call_id: str) -> Path:
    """Where a call's WAV lives: ``<root>/recordings/<call id>.wav`` (the call's own id, not
    its AudioSocket UUID, which a fixed-UUID dialplan repeats). ``data_dir`` is the files
    root: ``cluster.shared_dir`` when set (every node writes there), else the data dir; the
    store keeps the path relative to it (``helpers.storage``)."""
    return data_dir / "recordings" / f"{call_id}.wav"


class Recording(Part):
    """Left channel the caller, right channel what we sent, aligned by the clock; the
    post-call jobs are queued once the file is whole. Also the live view's listen-in tap."""

    def __init__(
        self,
        call: Call,
        data_dir: Path,
        *,
        writer: RecorderWriter,
        live: LiveCall | None,
        jobs: PostCallJobs | None,
        log: Any,
    ) -> None:
        self.call = call
        self.path = recording_path(data_dir, call.id)
        self.writer = writer
        # The C interleave when built (helpers may not import the core), else its numpy one.
        self.recorder = CallRecorder(
            self.path, call.rate, hold_slots=HOLD_SLOTS, writer=writer,
            interleave=native.interleave if native.AVAILABLE else interleave_legs,
            interleave_parts=native.interleave_parts if native.AVAILABLE else None)
        #: This call in the portal's live view (IVR node, transcript lines, listen-in tap).
        self.live = live
        if live is not None:
            live.tap = True
        self.jobs = jobs
        self.log = log

    def hear(self, pcm: bytes, tick: int) -> None:
        self.recorder.add_inbound(pcm, tick)
        live = self.live
        if live is not None and live.listeners:  # the tap costs nothing unheard
            live.heard(pcm)

    def sent(self, slot: int, pcm: bytes | None) -> None:
        self.recorder.add_outbound(slot, pcm)
        live = self.live
        if live is not None and live.listeners:
            live.sent(pcm)

    def ready(self) -> bool:
        # A listen-in needs the audio as it happens.
        return self.live is None or not self.live.listeners

    def take(self, block: MediaBlock) -> None:
        rec = self.recorder
        if rec.add_media(block):
            return  # the common case, jitter included: at once
        # A gap or a burst somewhere: its steady runs at once, the rest frame by frame.
        self.take_runs(block, lambda run: rec.add_run(run.first_slot, run.heard, run.sent))

    async def end(self, reason: str) -> None:
        self.recorder.close()
        # The writer thread may still hold the last second: wait for it before the
        # post-call jobs read the file.
        await asyncio.to_thread(self.writer.flush)
        if self.recorder.refused:
            # Its jobs would archive the other call's file as this one's.
            self.log.error("recording_refused", path=str(self.path), error=self.recorder.error)
            return
        self.log.info("recording_closed", path=str(self.path),
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
        if self.jobs is not None:
            await self.jobs.asubmit(self.call.id, self.path)

    async def _finish_later(self, every_s: float = 2.0, attempts: int = 300) -> None:
        for _ in range(attempts):
            await asyncio.sleep(every_s)
            self.recorder.retry()
            await asyncio.to_thread(self.writer.flush)
            if not self.recorder.pending_bytes:
                self.log.info("recording_completed_late", path=str(self.path))
                await self._submit_jobs()
                return
        self.log.error("recording_abandoned", pending=self.recorder.pending_bytes)
