"""The session base class: one instance per call, subclassed by every app."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from audiosocket.clock import Playback
from sessions.parts.speaker import Speaker

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.media import MediaBlock
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
    - ``on_media(block)``: instead of ``on_audio``/``on_tick``, a block of both directions
      (about a second) while the C media path carries the call. Only for apps whose
      ``media_ready()`` returns True (the default is False: frame by frame always); the
      server asks it on the Python path and attaches the call when it says yes. With
      ``wake_on_sound`` the C path hands the call back at the first frame that is not
      digital silence, so an app listening for speech hears it at once.

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
        #: What the server says on this call (``say``, ``play_file``, barge-in).
        self.speaker = Speaker(call, tts=ctx.services.tts, store=ctx.services.store, log=self.log)

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

    #: Taking blocks, hand the call back to frame-by-frame delivery at the first frame of
    #: sound (not digital silence): apps that detect speech set it.
    wake_on_sound: ClassVar[bool] = False

    def media_ready(self) -> bool:
        """Whether this call's audio may come in blocks (``on_media``) from now on."""
        return False

    def hear(self, pcm: bytes, tick: int) -> None:
        """One inbound frame that arrived at ``tick`` (``on_media`` replays through this)."""
        self.on_audio(pcm, self.rate)

    def on_media(self, block: MediaBlock) -> None:
        """A block of the call's audio from the C path: by default each frame in the order
        the Python path delivers them (``on_tick`` for what went out, ``hear`` for what
        came in); apps that can take the steady case at once override it."""
        for sent, tick, pcm in block.events():
            if sent:
                self.on_tick(tick, pcm)
            else:
                self.hear(pcm, tick)

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

    # -- speaking (the call's Speaker part) -----------------------------------------------

    @property
    def barge_in_after(self) -> float | None:
        """While a barge-in prompt plays: the call time after which caller speech cuts it."""
        return self.speaker.barge_in_after

    @property
    def server_lines(self) -> list[dict[str, Any]]:
        """What the server said: ``{start, end, text, interrupted}`` on the call's timeline."""
        return self.speaker.lines

    async def say(self, text: str, *, barge_in: bool = False) -> bool:
        """Speak ``text`` on the call (Piper, sentence by sentence, paced by the clock); see
        :meth:`sessions.parts.speaker.Speaker.say`."""
        return await self.speaker.say(text, barge_in=barge_in)

    async def play_file(self, path: str | Path, *, barge_in: bool = False) -> bool:
        """Play any audio file FFmpeg reads (decoded off the loop, at the call's rate)."""
        return await self.speaker.play_file(path, barge_in=barge_in)

    def interrupt(self, by: str) -> None:
        """Cut the current prompt short (barge-in): silence goes out at the next tick."""
        self.speaker.interrupt(by)
