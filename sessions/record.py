"""The ``record`` app: silent; writes both directions as one time-aligned stereo WAV."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from helpers.recorder import CallRecorder
from sessions.compose import Composed
from sessions.parts.recording import Recording, recording_path

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.live import LiveCall
    from audiosocket.root.app import AppContext

__all__ = ["RecordSession", "recording_for", "recording_path"]


def recording_for(call: Call, ctx: AppContext, log: object) -> Recording:
    """The recording part as the built-in apps use it (the live view and the post-call
    jobs when the root built them)."""
    live = ctx.services.live
    return Recording(
        call, ctx.shared_dir, writer=ctx.services.writer,
        live=live.attach(call) if live is not None else None,
        jobs=ctx.services.jobs, log=log,
    )


class RecordSession(Composed):
    """Record: left channel the caller, right channel what we sent, aligned by the clock.

    One part, :class:`~sessions.parts.recording.Recording`; the ``transcribe`` and ``ivr``
    apps add theirs to it.
    """

    name = "record"

    def __init__(self, call: Call, ctx: AppContext) -> None:
        super().__init__(call, ctx)
        self.recording_part = recording_for(call, ctx, self.log)
        self.parts.append(self.recording_part)

    @property
    def recording(self) -> Path:
        """The call's WAV."""
        return self.recording_part.path

    @property
    def recorder(self) -> CallRecorder:
        return self.recording_part.recorder

    @property
    def live(self) -> LiveCall | None:
        """This call in the portal's live view, when the hub runs."""
        return self.recording_part.live
