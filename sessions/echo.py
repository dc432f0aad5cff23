"""The ``echo`` app: sends back what it hears, on the next tick."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sessions.base import Session

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.root.app import AppContext

__all__ = ["EchoSession"]


class EchoSession(Session):
    """Echo: each inbound frame is queued as-is and leaves on the next clock tick.

    A live stream: frames of any size come back bit for bit (``Playout.feed`` re-cuts them),
    and the latency is held at ``live_latency_ms`` after a stall."""

    name = "echo"

    def __init__(self, call: Call, ctx: AppContext) -> None:
        super().__init__(call, ctx)
        self._rate = call.rate
        # The server's one-frame fast path only carries frames of the call's own kind, and
        # an inbound frame of that kind is byte for byte the frame to send back: it goes to
        # the playout whole: the deque's own append, no Python frame and no copy per frame.
        self.fast_frame = call.playout.append_frame

    def on_audio(self, pcm: bytes, rate: int) -> None:
        if rate == self._rate:
            self.call.playout.feed(pcm)
