"""The ``echo`` app: sends back what it hears, on the next tick."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sessions.base import Session

if TYPE_CHECKING:
    from audiosocket.app import AppContext
    from audiosocket.call import Call

__all__ = ["EchoSession"]


class EchoSession(Session):
    """Echo: each inbound frame is queued as-is and leaves on the next clock tick."""

    name = "echo"

    def __init__(self, call: Call, ctx: AppContext) -> None:
        super().__init__(call, ctx)
        # Cached: this runs 50 times a second per call.
        self._rate = call.rate
        self._feed = call.playout.feed

    def on_audio(self, pcm: bytes, rate: int) -> None:
        if rate == self._rate:
            self._feed(pcm)
