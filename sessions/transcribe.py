"""The ``transcribe`` app: records the call and transcribes the caller live.

The caller's frames go through the VAD on the loop (a few µs a frame); each finished
utterance goes to the shared STT engine's bounded queue (never blocking), and its text comes
back on the loop as a segment: stored, and handed to ``on_transcript``. Silence is measured on
the clock's timeline, so a caller who simply stops sending frames still ends an utterance
(half a second later than one who sends silent frames: frames a stalled loop has not read yet
must not count as a pause). Audio is placed on that timeline as the recorder places it, so a
line's time is its position in the recording.
At hang-up the speech in progress is flushed and the app waits (bounded) for the last
segments, so the stored transcript is complete within seconds of the end of the call.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, ClassVar

from helpers.recorder import HOLD_SLOTS
from helpers.vad import Utterance, VadSegmenter
from sessions.metrics import TRANSCRIPT_SEGMENTS
from sessions.record import RecordSession

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.root.app import AppContext, Need
    from helpers.stt import Segment

__all__ = ["TranscribeSession"]

#: Check for silence (no frames) every this many ticks.
SILENCE_CHECK_TICKS = 5
#: At hang-up, wait at most this long for the last utterances to be transcribed.
FINAL_WAIT_S = 30.0


class TranscribeSession(RecordSession):
    """Record + live transcription. Subclasses get ``on_transcript`` and ``on_speech_start``."""

    name = "transcribe"
    needs: ClassVar[tuple[Need, ...]] = ("store", "stt")

    def __init__(self, call: Call, ctx: AppContext) -> None:
        super().__init__(call, ctx)
        cfg = ctx.config.stt
        self.loop = asyncio.get_running_loop()
        self.stt = ctx.services.stt
        self.store = ctx.services.store
        self.vad = VadSegmenter(
            call.rate, aggressiveness=cfg.vad_aggressiveness, pre_roll_ms=cfg.pre_roll_ms,
            end_silence_ms=cfg.end_silence_ms, min_speech_ms=cfg.min_speech_ms,
            max_utterance_s=cfg.max_utterance_s, max_utterance_bytes=cfg.max_utterance_bytes,
            on_speech_start=self._speech_started,
            engine=cfg.vad_engine, silero_threshold=cfg.silero_threshold,
            models=ctx.services.models,
        )
        self.segments: list[Segment] = []
        self.dropped = 0
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._batch: list[bytes] = []
        self._batch_tick = 0

    # -- audio in ------------------------------------------------------------------------

    def on_audio(self, pcm: bytes, rate: int) -> None:
        super().on_audio(pcm, rate)
        if rate != self.call.rate:
            return
        # What arrives in one tick goes to the VAD together, so a burst after a stall is
        # placed as the recorder places it (right-aligned), and lines match the recording.
        tick = self.call.tick
        if tick != self._batch_tick:
            self._push_batch()
            self._batch_tick = tick
        self._batch.append(pcm)

    def _push_batch(self) -> None:
        if not self._batch:
            return
        pcm = self._batch[0] if len(self._batch) == 1 else b"".join(self._batch)
        self._batch.clear()
        for utt in self.vad.push(pcm, self._batch_tick):
            self._submit(utt)

    def on_tick(self, tick: int, sent: bytes | None) -> None:
        super().on_tick(tick, sent)
        self._push_batch()
        # Missing audio becomes silence only HOLD_SLOTS behind the clock: a stalled loop
        # reads half a second of frames late, and they must fill the gap, not follow it.
        if tick % SILENCE_CHECK_TICKS == 0 and tick > HOLD_SLOTS:
            for utt in self.vad.silence_until(tick - HOLD_SLOTS):
                self._submit(utt)

    def _speech_started(self, at: float) -> None:
        self.on_speech_start(at)

    def on_speech_start(self, at: float) -> None:
        """The caller started speaking (``at`` on the call's timeline). Barge-in goes here."""
        after = self.barge_in_after
        if after is not None and self.call.time >= after:
            self.interrupt("speech")

    # -- STT -----------------------------------------------------------------------------

    def _submit(self, utt: Utterance) -> None:
        if self.stt is None:
            return
        self._pending += 1
        self._idle.clear()
        self.stt.submit(self.uuid, utt, self._from_worker, speech_end_monotonic=time.monotonic(),
                        deadline_s=self.stt_deadline_s())

    def stt_deadline_s(self) -> float:
        """How long after the end of speech its text is still wanted: a live line's."""
        return float(self.ctx.config.stt.live_deadline_s)

    def _from_worker(self, seg: Segment | None, info: dict[str, Any]) -> None:
        # Called on an STT worker thread (or inline when dropping): hop back to the loop.
        try:
            self.loop.call_soon_threadsafe(self._transcribed, seg, info)
        except RuntimeError:
            pass  # the loop is closed: the server is gone

    def _transcribed(self, seg: Segment | None, info: dict[str, Any]) -> None:
        self._pending -= 1
        if self._pending <= 0:
            self._pending = 0
            self._idle.set()
        if info.get("dropped"):
            self.dropped += 1
            self.log.warning("utterance_dropped", reason=info.get("reason"))
            self.on_dropped(str(info.get("reason")))
            return
        if seg is None:
            if info.get("rejected"):
                self.log.debug("utterance_rejected", reason=info.get("rejected"))
            return
        # Fluent speech is one 15-25 s utterance: one line per sentence (Whisper's word
        # times) makes each line start where its sentence does.
        for line in self.transcript_lines(seg):
            self._add_line(line)

    def transcript_lines(self, seg: Segment) -> list[Segment]:
        """The lines one recognised utterance becomes: sentence-sized. An app that must
        see the utterance whole (an IVR answer) returns ``[seg]``."""
        return seg.lines()

    def _add_line(self, seg: Segment) -> None:
        """One line of what the caller said: kept, stored, logged, handed to the app."""
        self.segments.append(seg)
        TRANSCRIPT_SEGMENTS.inc()
        if self.store is not None:
            self.store.add_segment(self.uuid, seg.start, seg.end, seg.text, seg.confidence,
                                   seg.latency_ms)
        self.log.info("transcript", start=round(seg.start, 2), end=round(seg.end, 2),
                      text=seg.text, latency_ms=round(seg.latency_ms))
        if self.live is not None:
            self.live.add_line(seg.start, seg.end, seg.text)
        try:
            self.on_transcript(seg)
        except Exception:
            self.log.exception("on_transcript_failed")

    def on_transcript(self, seg: Segment) -> None:
        """A final segment of what the caller said."""

    def on_dropped(self, reason: str) -> None:
        """An utterance of the caller's was dropped unheard (``reason`` as the metric's)."""

    @property
    def transcribing(self) -> bool:
        """Speech is in progress or utterances are waiting for text."""
        return self.vad.in_speech or self._pending > 0

    async def on_end(self, reason: str) -> None:
        self._push_batch()
        last = self.vad.flush(self.call.tick)
        if last is not None:
            self._submit(last)
        try:
            async with asyncio.timeout(FINAL_WAIT_S):
                await self._idle.wait()
        except TimeoutError:
            self.log.warning("final_transcripts_timed_out", pending=self._pending)
        await super().on_end(reason)
        self.log.info("transcript_complete", segments=len(self.segments), dropped=self.dropped)
