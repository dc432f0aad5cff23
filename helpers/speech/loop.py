"""The VAD -> STT loop of one audio stream: audio in by tick, utterances out, lines back.

A live call and a recording after the call go through the same steps: 20 ms audio is fed to
the VAD with the clock tick it belongs to, the VAD cuts utterances, each utterance is
recognised, and the text comes back as sentence-sized lines on the stream's timeline.
:class:`SpeechLoop` holds the first half (feeding, the per-tick batching, silence for
missing audio, the flush at the end) and :meth:`SpeechLoop.recognise` the second, blocking
(post-call work runs it in a thread; a live call submits the utterances to
:class:`helpers.speech.stt.SttEngine` instead, whose :meth:`~helpers.speech.stt.Segment.lines`
cut the same lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from helpers.recorder import tick_leads
from helpers.speech.lines import Line, make_lines
from helpers.speech.stt_result import SttResult
from helpers.speech.vad import JITTER_TICKS, ZERO_SETTLE, Utterance, VadSegmenter

__all__ = ["Recognizer", "SpeechLoop"]


class Recognizer(Protocol):
    """What recognises one utterance: :meth:`helpers.speech.stt.SttEngine.transcribe`."""

    def transcribe(
        self, pcm: bytes, rate: int, *, voiced: float | None = None, live: bool = False
    ) -> SttResult: ...


class SpeechLoop:
    """Feed audio by tick; take utterances as the VAD cuts them; recognise them into lines.

    Audio of one tick is pushed to the VAD together when the next tick starts (or at
    :meth:`end_tick`), so a burst after a stall is placed as the recorder places it
    (right-aligned) and lines match the recording. Not thread-safe: one loop per stream,
    driven from one thread.
    """

    def __init__(self, vad: VadSegmenter) -> None:
        self.vad = vad
        self._batch: list[bytes] = []
        self._batch_tick = 0

    @property
    def in_speech(self) -> bool:
        """Speech has started and not yet ended."""
        return self.vad.in_speech

    def feed(self, pcm: bytes, tick: int) -> list[Utterance]:
        """Audio that arrived during ``tick``; the utterances an earlier tick's audio ended."""
        out: list[Utterance] = []
        if tick != self._batch_tick:
            out = self.end_tick()
            self._batch_tick = tick
        self._batch.append(pcm)
        return out

    def end_tick(self) -> list[Utterance]:
        """Push the audio held for the current tick to the VAD now."""
        if not self._batch:
            return []
        pcm = self._batch[0] if len(self._batch) == 1 else b"".join(self._batch)
        self._batch.clear()
        return self.vad.push(pcm, self._batch_tick)

    def run_block(
        self,
        heard: bytes,
        heard_ticks: np.ndarray,
        slots: np.ndarray,
        *,
        silence_every: int,
        silence_behind: int,
        lead: tuple[int, int] | None = None,
        silent: bool = False,
    ) -> tuple[list[Utterance], bool]:
        """A stretch at once (the C path's tape): frames read at ``heard_ticks`` while
        ``slots`` went out, the caller checking for missing audio at every
        ``silence_every``-th slot ``silence_behind`` behind (as the live transcriber does).
        The same utterances as feeding it tick by tick whenever no frame jumps a gap and no
        silence check would fill one (jitter of a frame or two per tick included); returns
        whether it was taken, and otherwise pushes only what the current tick held.

        ``lead`` (the least and greatest ``heard_ticks[k] - k``) and ``silent`` (the heard
        audio is all zero) come from ``MediaBlock.shape`` when the caller has it: the checks
        are then O(1) in the usual case (a second of a call, a thousand calls a second)."""
        out = self.end_tick()
        vad = self.vad
        m = len(heard_ticks)
        start = vad.next_tick
        if m:
            if int(heard_ticks[0]) <= int(slots[0]):
                return out, False
            if lead is None:
                lead = tick_leads(heard_ticks)
            # Frame k is pushed as tick start + k, read at heard_ticks[k].
            if start - lead[1] < -JITTER_TICKS:
                return out, False
        if not self._silence_checks_pass(heard_ticks, slots, start, silence_every,
                                         silence_behind, lead):
            return out, False
        if m:
            try:
                out += vad.push_frames(heard, silent=silent)
            except ValueError:
                return out, False
            self._batch_tick = int(heard_ticks[-1])
        return out, True

    @staticmethod
    def _silence_checks_pass(
        heard_ticks: np.ndarray,
        slots: np.ndarray,
        start: int,
        every: int,
        behind: int,
        lead: tuple[int, int] | None,
    ) -> bool:
        """Whether no silence check the live transcriber makes at ``slots`` would fill a
        gap: at each checked slot ``c`` (a multiple of ``every`` past ``behind``) the audio
        read up to tick ``c`` has been pushed, and it must reach ``c - behind``."""
        if not len(slots):
            return True
        last_slot = int(slots[-1])
        last_checked = last_slot - last_slot % every
        if last_checked <= behind or last_checked < int(slots[0]):
            return True  # no slot of the block is checked
        if lead is not None:
            # Frame k was read at heard_ticks[k] <= k + lead_hi, so by tick c at least
            # min(len, c - lead_hi + 1) frames were pushed: enough when the lead is small and
            # the block reaches its last check (sufficient, not necessary: else the exact
            # test below decides).
            if lead[1] <= start + 1 + behind and start + len(heard_ticks) >= last_checked - behind:
                return True
        checked = slots[(slots % every == 0) & (slots > behind)]
        if not len(checked):
            return True
        pushed = np.searchsorted(heard_ticks, checked, "right")
        return not bool(np.any(start + pushed < checked - behind))

    @property
    def settled(self) -> bool:
        """No speech in progress, at most the current tick's frame held, and the VAD past
        its digital-silence fixed point: the audio may come in blocks."""
        vad = self.vad
        return not vad.in_speech and vad.zero_run >= ZERO_SETTLE and len(self._batch) <= 1

    def silence_until(self, tick: int) -> list[Utterance]:
        """Audio that never came, up to ``tick``, counts as silence (see the VAD)."""
        return self.vad.silence_until(tick)

    def flush(self, tick: int) -> list[Utterance]:
        """The end of the stream at ``tick``: what is held, and the speech in progress."""
        out = self.end_tick()
        last = self.vad.flush(tick)
        if last is not None:
            out.append(last)
        return out

    def feed_all(self, pcm: bytes) -> Iterator[Utterance]:
        """A whole recording, 20 ms a tick from tick 0, flushed at its end."""
        frame = self.vad.frame_bytes
        tick = 0
        for i in range(0, len(pcm) - frame + 1, frame):
            yield from self.feed(pcm[i : i + frame], tick)
            tick += 1
        yield from self.flush(tick)

    @staticmethod
    def recognise(stt: Recognizer, utt: Utterance) -> list[Line]:
        """One utterance as sentence-sized lines on the stream's timeline (Whisper's word
        times); one line for the whole utterance without words; ``[]`` when the guards
        rejected it. Blocking."""
        result = stt.transcribe(utt.pcm, utt.rate, voiced=utt.voiced_ms)
        if not result.text:
            return []
        lines = make_lines(result.words, utt.pcm_start, clamp=(utt.start, utt.end))
        return lines or [Line(utt.start, utt.end, result.text, result.confidence, ())]
