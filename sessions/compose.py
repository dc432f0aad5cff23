"""An app made of parts (``sessions/parts``): the hooks route the call's stream to them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sessions.base import Session

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.media import MediaBlock
    from audiosocket.root.app import AppContext
    from sessions.parts import Part

__all__ = ["Composed"]


class Composed(Session):
    """A session whose behaviour is its parts, in order: each hears every inbound frame and
    every outbound one (or a block of both from the C media path); they end in reverse
    order, so a part ends before the parts it was built on (the transcript before the file
    its post-call jobs read)."""

    def __init__(self, call: Call, ctx: AppContext) -> None:
        super().__init__(call, ctx)
        self.parts: list[Part] = []

    @property
    def wake_on_sound(self) -> bool:  # type: ignore[override]
        return any(part.wake_on_sound for part in self.parts)

    def on_audio(self, pcm: bytes, rate: int) -> None:
        if rate == self.call.rate:
            self.hear(pcm, self.call.tick)

    def hear(self, pcm: bytes, tick: int) -> None:
        for part in self.parts:
            part.hear(pcm, tick)

    def on_tick(self, tick: int, sent: bytes | None) -> None:
        for part in self.parts:
            part.sent(tick, sent)

    def media_ready(self) -> bool:
        return all(part.ready() for part in self.parts)

    def on_media(self, block: MediaBlock) -> None:
        for part in self.parts:
            part.take(block)

    async def on_end(self, reason: str) -> None:
        for part in reversed(self.parts):
            await part.end(reason)
