"""The speaker: what the server says on a call (Piper, paced by the clock), with barge-in,
and the record of it (the transcript's other side)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiosocket.clock import Playback
from audiosocket.protocol import FRAME_MS
from helpers.audio import read_audio
from sessions.parts.metrics import BARGE_INS, SAY_FIRST_FRAME

if TYPE_CHECKING:
    from audiosocket.call import Call
    from helpers.speech.tts import TtsEngine
    from helpers.store.db import CallStore

__all__ = ["DEFAULT_PROTECT_S", "Speaker"]

#: Caller speech in the first moment of a barge-in prompt does not cut it (an echo of the
#: prompt's own start, a cough): the IVR sets its own (``ivr.barge_in_protect_ms``).
DEFAULT_PROTECT_S = 0.2


class Speaker:
    """Speaks on one call: ``say`` (TTS, sentence by sentence), ``play_file``, ``interrupt``.

    Feeds the outbound stream through the call's playout; every line that reached the wire
    is kept in ``lines`` and stored as the server's side of the transcript.
    """

    def __init__(
        self, call: Call, *, tts: TtsEngine | None, store: CallStore | None, log: Any,
        protect_s: float = DEFAULT_PROTECT_S,
    ) -> None:
        self.call = call
        self.tts = tts
        self.store = store
        self.log = log
        self.protect_s = protect_s
        #: While a barge-in prompt plays: the call time after which caller speech cuts it.
        self.barge_in_after: float | None = None
        #: What the server said: ``{start, end, text, interrupted}`` on the call's timeline.
        self.lines: list[dict[str, Any]] = []
        self._clears = 0

    @property
    def rate(self) -> int:
        return self.call.rate

    async def say(self, text: str, *, barge_in: bool = False) -> bool:
        """Speak ``text`` (Piper, sentence by sentence, paced by the clock).

        Completes when the last frame has been sent: True, or False when the prompt was
        cut short (barge-in, ``clear()``, hang-up). With ``barge_in`` caller speech after
        the protection window (``protect_s``) clears the prompt at once; apps that listen
        (``transcribe``, ``ivr``) detect that speech.
        """
        tts = self.tts
        if tts is None:
            raise RuntimeError('say() needs the TTS engine: declare "tts" in the app\'s needs')
        playout = self.call.playout
        loop = asyncio.get_running_loop()
        asked = loop.time()
        cached = tts.is_cached(text, self.rate)
        if barge_in:
            self.barge_in_after = self.call.time + self.protect_s
        cleared_before = self._clears
        last: Playback | None = None
        heard: list[float] = []
        completed = False

        def first(pb: Playback) -> None:  # the prompt's first clip: its start is timed
            pb.started.add_done_callback(
                lambda f: None if f.cancelled() else SAY_FIRST_FRAME.labels(
                    cached=str(cached).lower()).observe(f.result() - asked)
            )
            self._note_first_frame(pb, heard)

        try:
            hot = tts.hot_parts(text, self.rate)
            if hot is not None:
                if self.call.ended:
                    return False
                # Every sentence ready (a fixed prompt): one clip, so one start and one
                # completion for the prompt instead of a clip and two marks per sentence.
                last = self.call.play_parts(hot, shared=True)
                first(last)
            else:
                playout.begin_stream()
                try:
                    async for pcm, pause in tts.stream_parts(text, self.rate):
                        if self.call.ended or self._clears != cleared_before:
                            return False
                        # The prompt cache's own object: its frames are shared by every call.
                        pb = self.call.play(pcm, silence_after=pause, shared=True)
                        if last is None:
                            first(pb)
                        last = pb
                finally:
                    playout.end_stream()
            if last is None:
                completed = True
                return True
            try:
                completed = bool(await last)
                return completed
            finally:
                if barge_in:
                    self.barge_in_after = None
        finally:
            # Also on cancellation (the call ended mid-prompt): the line is still what the
            # caller heard, up to now.
            self._line(text, heard, completed)

    async def play_file(self, path: str | Path, *, barge_in: bool = False) -> bool:
        """Play any audio file FFmpeg reads (decoded off the loop, at the call's rate)."""
        pcm = await asyncio.to_thread(read_audio, path, self.rate)
        if barge_in:
            self.barge_in_after = self.call.time + self.protect_s
        heard: list[float] = []
        completed = False
        try:
            pb = self.call.play(pcm)
            self._note_first_frame(pb, heard)
            completed = bool(await pb)
            return completed
        finally:
            if barge_in:
                self.barge_in_after = None
            # A file has no text of its own: the line names what was played.
            self._line(f"[{Path(path).name}]", heard, completed)

    def interrupt(self, by: str) -> None:
        """Cut the current prompt short (barge-in): silence goes out at the next tick."""
        self._clears += 1
        self.barge_in_after = None
        if self.call.clear():
            BARGE_INS.labels(by=by).inc()

    def speech_started(self, at: float) -> None:
        """The caller started speaking: a barge-in prompt past its protection is cut."""
        after = self.barge_in_after
        if after is not None and self.call.time >= after:
            self.interrupt("speech")

    def _note_first_frame(self, pb: Playback, heard: list[float]) -> None:
        """Put the call time of ``pb``'s first frame on the wire into ``heard``.

        ``started`` resolves on the tick that sent that frame, which has already advanced
        the timeline by the frame's 20 ms; a clip cleared before it went out leaves
        ``heard`` empty.
        """
        def mark(f: asyncio.Future[float]) -> None:
            if not f.cancelled() and not heard:
                heard.append(max(0.0, self.call.time - FRAME_MS / 1000))

        pb.started.add_done_callback(mark)

    def _line(self, text: str, heard: list[float], completed: bool) -> None:
        """Keep and store one thing the server said, if any of it reached the wire."""
        if not heard:
            return  # cut before its first frame: the caller heard nothing of it
        start = round(heard[0], 3)
        end = round(max(heard[0], self.call.time), 3)
        self.lines.append({"start": start, "end": end, "text": text,
                           "interrupted": not completed})
        if self.store is not None:
            self.store.add_segment(self.call.id, start, end, text, None, None,
                                   speaker="server", interrupted=not completed)
        self.log.info("server_said", start=start, end=end, text=text,
                      interrupted=not completed)
