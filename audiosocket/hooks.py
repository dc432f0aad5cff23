"""What the server knows of an app: the hooks it calls, as a Protocol.

The server never imports the apps (``sessions/``): the composition root hands it a factory
that makes one :class:`App` per call. ``sessions.base.Session`` implements this Protocol;
any object with these methods does. Optional extras the server looks up by name, because an
app offers them only when it has them: ``fast_audio(pcm, rate)`` and ``fast_frame(frame)``
(a cheaper sink for whole frames of the call's own kind) and ``wake_on_sound`` (a bool).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.media import MediaBlock

__all__ = ["App", "AppFactory"]


class App(Protocol):
    """One call's app. Every hook runs on the event loop and must not block."""

    async def on_start(self) -> None: ...

    def on_audio(self, pcm: bytes, rate: int) -> None: ...

    def on_dtmf(self, digit: str) -> None: ...

    def on_tick(self, tick: int, sent: bytes | None) -> None: ...

    async def on_end(self, reason: str) -> None: ...

    def media_ready(self) -> bool: ...

    def on_media(self, block: MediaBlock) -> None: ...


class AppFactory(Protocol):
    """Makes a call's app. The composition root's factory also says which hooks the app
    overrides (``hears_ticks``, ``hears_audio``); a bare callable is taken to hear both."""

    def __call__(self, call: Call) -> App: ...
