"""The session base class: one instance per call, subclassed by every app."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from audiosocket.clock import Playback
from audiosocket.protocol import FRAME_MS
from sessions.metrics import BARGE_INS, SAY_FIRST_FRAME

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.root.app import AppContext, Need

__all__ = ["Session"]


class Session:
    """Base class for apps. Override the hooks you need.

    Hooks and how they are called (all on the event loop; none may block):

    - ``async on_start()`` runs as the call's main task once the call's rate is known. When
      it returns the call goes on (until the peer hangs up) unless it called ``hangup()``.
      It is cancelled if the call ends first.
    - ``on_audio(pcm, rate)`` for each inbound audio frame (int16 LE mono; μ-law already
      decoded). Keep it cheap: it runs 50 times a second per call. An app may also set
      ``fast_audio``, a callable taking the same arguments, used instead for whole frames
      of the call's own kind (the server's fast path), or ``fast_frame``, a callable
      taking the whole wire frame, header included (see the echo app).
    - ``on_dtmf(digit)`` for each key (``0-9 * # A-D``).
    - ``on_tick(tick, sent)`` after each clock tick, with the PCM sent (None for silence);
      only called for apps that override it.
    - ``async on_end(reason)`` once, after the call ended; flush files here.

    An exception in a hook ends that call with reason ``app_error`` and is counted; other
    calls are not affected.
    """

    #: Name used in logs, metrics and the call store.
    name = "base"
    #: The shared engines this app uses (``store``, ``live``, ``stt``, ``tts``, ``jobs``):
    #: the composition root builds them before ``prepare`` and they are in ``ctx.services``
    #: (``ctx.services.stt``) for every call. Declared, not fetched, so apps never import
    #: the wiring.
    needs: ClassVar[tuple[Need, ...]] = ()

    def __init__(self, call: Call, ctx: AppContext) -> None:
        self.call = call
        self.ctx = ctx
        self.log: Any = structlog.get_logger("audiosocket.session").bind(
            call=call.id, app=self.name, peer=call.peer
        )
        #: What the server said: ``{start, end, text, interrupted}`` on the call's timeline.
        self.server_lines: list[dict[str, Any]] = []

    @classmethod
    async def prepare(cls, ctx: AppContext) -> None:
        """Load what is the app's own once per process (flows, prompts), before calls
        arrive; the engines in ``needs`` are already in ``ctx``.

        Runs at start-up; raise to refuse to start with a clear message.
        """

    # -- identity ------------------------------------------------------------------------

    @property
    def uuid(self) -> str:
        """The call's own id (store rows, files, URLs); ``call.uuid`` is the AudioSocket
        UUID, which differs when an earlier call arrived with the same one."""
        return self.call.id

    @property
    def rate(self) -> int:
        return self.call.rate

    # -- hooks ---------------------------------------------------------------------------

    async def on_start(self) -> None:
        """The call is up; the rate is known."""

    def on_audio(self, pcm: bytes, rate: int) -> None:
        """One inbound frame."""

    def on_dtmf(self, digit: str) -> None:
        """One key press (sent by Asterisk on key release)."""

    def on_tick(self, tick: int, sent: bytes | None) -> None:
        """After each outbound frame: ``tick`` is its index on the call's timeline."""

    async def on_end(self, reason: str) -> None:
        """The call is over; ``reason`` is its end reason."""

    # -- actions -------------------------------------------------------------------------

    def play(self, pcm: bytes) -> Playback:
        """Queue a clip at the call's rate; ``await`` the result to know it was sent."""
        return self.call.play(pcm)

    def clear(self) -> int:
        """Stop what is playing: the next tick sends silence."""
        return self.call.clear()

    def hangup(self) -> None:
        """End the call from our side (``00 00 00``, then close)."""
        self.call.hangup("app_hangup")

    # -- speaking ------------------------------------------------------------------------

    #: While a barge-in prompt plays: the call time after which caller speech interrupts it.
    barge_in_after: float | None = None

    async def say(self, text: str, *, barge_in: bool = False) -> bool:
        """Speak ``text`` on the call (Piper, sentence by sentence, paced by the clock).

        Completes when the last frame has been sent: True, or False when the prompt was
        cut short (barge-in, ``clear()``, hang-up). With ``barge_in`` caller speech after
        the protection window (``ivr.barge_in_protect_ms``) clears the prompt at once; apps
        that listen (``transcribe``, ``ivr``) detect that speech.
        """
        tts = self.ctx.services.tts
        if tts is None:
            raise RuntimeError('say() needs the TTS engine: declare "tts" in the app\'s needs')
        playout = self.call.playout
        loop = asyncio.get_running_loop()
        asked = loop.time()
        cached = tts.is_cached(text, self.rate)
        if barge_in:
            protect = self.ctx.config.ivr.barge_in_protect_ms / 1000
            self.barge_in_after = self.call.time + protect
        cleared_before = self._clears
        last: Playback | None = None
        heard: list[float] = []
        completed = False
        try:
            playout.begin_stream()
            try:
                async for pcm in tts.stream(text, self.rate):
                    if self.call.ended or self._clears != cleared_before:
                        return False
                    pb = self.play(pcm)
                    if last is None:
                        pb.started.add_done_callback(
                            lambda f: None if f.cancelled() else SAY_FIRST_FRAME.labels(
                                cached=str(cached).lower()).observe(f.result() - asked)
                        )
                        self._note_first_frame(pb, heard)
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
            self._server_line(text, heard, completed)

    async def play_file(self, path: str | Path, *, barge_in: bool = False) -> bool:
        """Play any audio file FFmpeg reads (decoded off the loop, at the call's rate)."""
        from helpers.audio import read_audio

        pcm = await asyncio.to_thread(read_audio, path, self.rate)
        if barge_in:
            self.barge_in_after = self.call.time + self.ctx.config.ivr.barge_in_protect_ms / 1000
        heard: list[float] = []
        completed = False
        try:
            pb = self.play(pcm)
            self._note_first_frame(pb, heard)
            completed = bool(await pb)
            return completed
        finally:
            if barge_in:
                self.barge_in_after = None
            # A file has no text of its own: the line names what was played.
            self._server_line(f"[{Path(path).name}]", heard, completed)

    # -- what the server said (the transcript's other side) --------------------------------

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

    def _server_line(self, text: str, heard: list[float], completed: bool) -> None:
        """Keep and store one thing the server said, if any of it reached the wire."""
        if not heard:
            return  # cut before its first frame: the caller heard nothing of it
        start = heard[0]
        end = max(start, self.call.time)
        line: dict[str, Any] = {"start": round(start, 3), "end": round(end, 3), "text": text,
                                "interrupted": not completed}
        self.server_lines.append(line)
        store = self.ctx.services.store
        if store is not None:
            store.add_segment(self.uuid, line["start"], line["end"], text, None, None,
                              speaker="server", interrupted=not completed)
        self.log.info("server_said", start=line["start"], end=line["end"], text=text,
                      interrupted=not completed)

    _clears = 0

    def interrupt(self, by: str) -> None:
        """Cut the current prompt short (barge-in): silence goes out at the next tick."""
        self._clears += 1
        self.barge_in_after = None
        if self.call.clear():
            BARGE_INS.labels(by=by).inc()
