"""The ``transcribe`` app: records the call and transcribes the caller live.

Two parts: :class:`~sessions.parts.recording.Recording` and
:class:`~sessions.parts.transcriber.Transcriber` (see there for how speech becomes lines).
At hang-up the speech in progress is flushed and the app waits (bounded) for the last lines,
so the stored transcript is complete within seconds of the end of the call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sessions.compose import Composed
from sessions.parts import needs_of
from sessions.parts.recording import Recording
from sessions.parts.transcriber import Transcriber
from sessions.record import recording_for

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.live import LiveCall
    from audiosocket.root.app import AppContext, Need
    from helpers.speech.stt import Segment
    from helpers.speech.vad import VadSegmenter

__all__ = ["TranscribeSession"]


class TranscribeSession(Composed):
    """Record + live transcription: the parts Recording and Transcriber. Subclasses get
    ``on_transcript`` and ``on_speech_start`` (the transcriber tells the session, its
    listener)."""

    name = "transcribe"
    needs: ClassVar[tuple[Need, ...]] = needs_of(Recording, Transcriber)

    def __init__(self, call: Call, ctx: AppContext) -> None:
        super().__init__(call, ctx)
        self.stt = ctx.services.stt
        self.store = ctx.services.store
        self.recording_part = recording_for(call, ctx, self.log)
        self.transcriber = Transcriber(
            call, ctx.config.stt, stt=self.stt, store=self.store,
            live=self.recording_part.live, listener=self, log=self.log,
        )
        self.parts += [self.recording_part, self.transcriber]

    @property
    def live(self) -> LiveCall | None:
        """This call in the portal's live view, when the hub runs."""
        return self.recording_part.live

    @property
    def segments(self) -> list[Segment]:
        """The caller's lines so far."""
        return self.transcriber.segments

    @property
    def vad(self) -> VadSegmenter:
        return self.transcriber.vad

    @property
    def dropped(self) -> int:
        return self.transcriber.dropped

    @property
    def transcribing(self) -> bool:
        """Speech is in progress or utterances are waiting for text."""
        return self.transcriber.transcribing

    # -- what the transcriber tells the app (TranscriptListener) -------------------------

    def on_speech_start(self, at: float) -> None:
        """The caller started speaking (``at`` on the call's timeline). Barge-in goes here."""
        self.speaker.speech_started(at)

    def on_transcript(self, seg: Segment) -> None:
        """A final line of what the caller said."""

    def on_dropped(self, reason: str) -> None:
        """An utterance of the caller's was dropped unheard (``reason`` as the metric's)."""

    def transcript_lines(self, seg: Segment) -> list[Segment]:
        """The lines one recognised utterance becomes: sentence-sized. An app that must
        see the utterance whole (an IVR answer) returns ``[seg]``."""
        return seg.lines()

    def stt_deadline_s(self) -> float:
        """How long after the end of speech its text is still wanted: a live line's."""
        return float(self.ctx.config.stt.live_deadline_s)
