"""The transcriber part: the caller's speech, live, as sentence-sized lines.

The caller's frames go through the VAD on the loop (a few µs a frame; settled digital
silence in bulk); each finished utterance goes to the shared STT engine's bounded queue
(never blocking), and its text comes back on the loop as lines: stored, shown live and
handed to the app. Silence is measured on the clock's timeline, so a caller who simply stops
sending frames still ends an utterance (half a second later than one who sends silent
frames: frames a stalled loop has not read yet must not count as a pause). Audio is placed
on that timeline as the recorder places it, so a line's time is its position in the
recording. The VAD-to-utterance half is :class:`helpers.speech.loop.SpeechLoop`, the same
loop the post-call transcript runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from helpers.recorder import HOLD_SLOTS
from helpers.speech.loop import SpeechLoop
from helpers.speech.stt_result import SttDone, SttDropped
from helpers.speech.vad import Utterance, VadSegmenter
from sessions.parts import Part
from sessions.parts.metrics import TRANSCRIPT_SEGMENTS

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.config import SttConfig
    from audiosocket.live import LiveCall
    from audiosocket.media import MediaBlock
    from audiosocket.root.app import Need
    from helpers.speech.stt import Segment, SttEngine
    from helpers.speech.stt_result import SttOutcome
    from helpers.store.db import CallStore

__all__ = ["FINAL_WAIT_S", "SILENCE_CHECK_TICKS", "Transcriber", "TranscriptListener"]

#: Check for silence (no frames) every this many ticks.
SILENCE_CHECK_TICKS = 5
#: At hang-up, wait at most this long for the last utterances to be transcribed.
FINAL_WAIT_S = 30.0


class TranscriptListener(Protocol):
    """What the app is told (the transcribe app's defaults; the IVR overrides them)."""

    def on_speech_start(self, at: float) -> None: ...

    def on_transcript(self, seg: Segment) -> None: ...

    def on_dropped(self, reason: str) -> None: ...

    def transcript_lines(self, seg: Segment) -> list[Segment]: ...

    def stt_deadline_s(self) -> float: ...


class Transcriber(Part):
    """Live transcription of the caller; the lines are kept in ``segments``."""

    wake_on_sound = True  # speech is detected (and barge-in happens) frame by frame
    needs: ClassVar[tuple[Need, ...]] = ("store", "stt")

    def __init__(
        self,
        call: Call,
        cfg: SttConfig,
        *,
        stt: SttEngine | None,
        store: CallStore | None,
        live: LiveCall | None,
        listener: TranscriptListener,
        log: Any,
    ) -> None:
        self.call = call
        self.stt = stt
        self.store = store
        self.live = live
        self.listener = listener
        self.log = log
        self.loop = asyncio.get_running_loop()
        self.vad = VadSegmenter(
            call.rate, aggressiveness=cfg.vad_aggressiveness, pre_roll_ms=cfg.pre_roll_ms,
            end_silence_ms=cfg.end_silence_ms, min_speech_ms=cfg.min_speech_ms,
            max_utterance_s=cfg.max_utterance_s, max_utterance_bytes=cfg.max_utterance_bytes,
            on_speech_start=listener.on_speech_start,
            engine=cfg.vad_engine, silero_threshold=cfg.silero_threshold,
        )
        self.speech = SpeechLoop(self.vad)
        self.segments: list[Segment] = []
        self.dropped = 0
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- audio in ------------------------------------------------------------------------

    def hear(self, pcm: bytes, tick: int) -> None:
        # What arrives in one tick goes to the VAD together, so a burst after a stall is
        # placed as the recorder places it (right-aligned), and lines match the recording.
        self._submit_all(self.speech.feed(pcm, tick))

    def sent(self, slot: int, pcm: bytes | None) -> None:
        self._submit_all(self.speech.end_tick())
        # Missing audio becomes silence only HOLD_SLOTS behind the clock: a stalled loop
        # reads half a second of frames late, and they must fill the gap, not follow it.
        if slot % SILENCE_CHECK_TICKS == 0 and slot > HOLD_SLOTS:
            self._submit_all(self.speech.silence_until(slot - HOLD_SLOTS))

    def ready(self) -> bool:
        # Only a settled silence rides in blocks (a noisy line, which would wake the C path
        # at every frame, stays frame by frame instead of bouncing).
        return self.speech.settled

    def take(self, block: MediaBlock) -> None:
        shape = block.shape
        if not self._take_at_once(block.heard, block.heard_ticks, block.sent_ticks,
                                  (shape.lead_lo, shape.lead_hi), shape.silent):
            # A gap or a burst somewhere: its steady runs at once, the rest frame by frame.
            self.take_runs(
                block,
                lambda run: self._take_at_once(run.heard, run.heard_ticks, run.slots, run.lead))

    def _take_at_once(
        self,
        heard: bytes,
        ticks: np.ndarray,
        slots: np.ndarray,
        lead: tuple[int, int] | None = None,
        silent: bool = False,
    ) -> bool:
        utts, taken = self.speech.run_block(heard, ticks, slots,
                                            silence_every=SILENCE_CHECK_TICKS,
                                            silence_behind=HOLD_SLOTS, lead=lead,
                                            silent=silent)
        self._submit_all(utts)
        return taken

    @property
    def in_speech(self) -> bool:
        return self.speech.in_speech

    @property
    def transcribing(self) -> bool:
        """Speech is in progress or utterances are waiting for text."""
        return self.speech.in_speech or self._pending > 0

    # -- STT -----------------------------------------------------------------------------

    def _submit_all(self, utts: list[Utterance]) -> None:
        for utt in utts:
            self.submit(utt)

    def submit(self, utt: Utterance) -> None:
        """One utterance to the shared engine (non-blocking; its text comes back later)."""
        if self.stt is None:
            return
        self._pending += 1
        self._idle.clear()
        self.stt.submit(self.call.id, utt, self._from_worker,
                        speech_end_monotonic=time.monotonic(),
                        deadline_s=self.listener.stt_deadline_s())

    def _from_worker(self, seg: Segment | None, outcome: SttOutcome) -> None:
        # Called on an STT worker thread (or inline when dropping): hop back to the loop.
        try:
            self.loop.call_soon_threadsafe(self._transcribed, seg, outcome)
        except RuntimeError:
            pass  # the loop is closed: the server is gone

    def _transcribed(self, seg: Segment | None, outcome: SttOutcome) -> None:
        self._pending -= 1
        if self._pending <= 0:
            self._pending = 0
            self._idle.set()
        if isinstance(outcome, SttDropped):
            self.dropped += 1
            self.log.warning("utterance_dropped", reason=outcome.reason)
            self.listener.on_dropped(outcome.reason)
            return
        if seg is None:
            if isinstance(outcome, SttDone) and outcome.result.rejected:
                self.log.debug("utterance_rejected", reason=outcome.result.rejected)
            return
        # Fluent speech is one 15-25 s utterance: one line per sentence (Whisper's word
        # times) makes each line start where its sentence does.
        for line in self.listener.transcript_lines(seg):
            self._add_line(line)

    def _add_line(self, seg: Segment) -> None:
        """One line of what the caller said: kept, stored, logged, handed to the app."""
        self.segments.append(seg)
        TRANSCRIPT_SEGMENTS.inc()
        if self.store is not None:
            self.store.add_segment(self.call.id, seg.start, seg.end, seg.text, seg.confidence,
                                   seg.latency_ms)
        self.log.info("transcript", start=round(seg.start, 2), end=round(seg.end, 2),
                      text=seg.text, latency_ms=round(seg.latency_ms))
        if self.live is not None:
            self.live.add_line(seg.start, seg.end, seg.text)
        try:
            self.listener.on_transcript(seg)
        except Exception:
            self.log.exception("on_transcript_failed")

    async def end(self, reason: str) -> None:
        self._submit_all(self.speech.flush(self.call.tick))
        try:
            async with asyncio.timeout(FINAL_WAIT_S):
                await self._idle.wait()
        except TimeoutError:
            self.log.warning("final_transcripts_timed_out", pending=self._pending)
        self.log.info("transcript_complete", segments=len(self.segments), dropped=self.dropped)
