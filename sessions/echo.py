"""The ``echo`` app: sends back what it hears, on the next tick."""

from __future__ import annotations

from sessions.base import Session

__all__ = ["EchoSession"]


class EchoSession(Session):
    """Echo: each inbound frame is queued as-is and leaves on the next clock tick."""

    name = "echo"

    def on_audio(self, pcm: bytes, rate: int) -> None:
        if rate == self.call.rate:
            self.call.feed(pcm)
