"""The session base class: one instance per call, subclassed by every app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from audiosocket.clock import Playback

if TYPE_CHECKING:
    from audiosocket.app import AppContext
    from audiosocket.call import Call

__all__ = ["Session"]


class Session:
    """Base class for apps. Override the hooks you need.

    Hooks and how they are called (all on the event loop; none may block):

    - ``async on_start()`` runs as the call's main task once the call's rate is known. When
      it returns the call goes on (until the peer hangs up) unless it called ``hangup()``.
      It is cancelled if the call ends first.
    - ``on_audio(pcm, rate)`` for each inbound audio frame (int16 LE mono; μ-law already
      decoded). Keep it cheap: it runs 50 times a second per call.
    - ``on_dtmf(digit)`` for each key (``0-9 * # A-D``).
    - ``on_tick(tick, sent)`` after each clock tick, with the PCM sent (None for silence);
      only called for apps that override it.
    - ``async on_end(reason)`` once, after the call ended; flush files here.

    An exception in a hook ends that call with reason ``app_error`` and is counted; other
    calls are not affected.
    """

    #: Name used in logs, metrics and the call store.
    name = "base"

    def __init__(self, call: Call, ctx: AppContext) -> None:
        self.call = call
        self.ctx = ctx
        self.log: Any = structlog.get_logger("audiosocket.session").bind(
            call=call.id, app=self.name, peer=call.peer
        )

    @classmethod
    async def prepare(cls, ctx: AppContext) -> None:
        """Load what the app needs once per process (models, flows), before calls arrive.

        Runs at start-up; raise to refuse to start with a clear message.
        """

    # -- identity ------------------------------------------------------------------------

    @property
    def uuid(self) -> str:
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
