"""The message tap: a voicemail message being left, kept as it is heard."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from audiosocket.protocol import FRAME_MS
from sessions.parts import Part

if TYPE_CHECKING:
    from audiosocket.media import MediaBlock

__all__ = ["MessageTap"]


class MessageTap(Part):
    """While recording (``start`` .. ``stop``) keeps the caller's audio, up to a cap, and
    when the caller last spoke (``last_voice``, call time); frame by frame meanwhile (a
    message is its own recording, and its end is found by listening)."""

    def __init__(self, in_speech: Callable[[], bool]) -> None:
        self._in_speech = in_speech
        self._pcm: bytearray | None = None
        self._cap = 0
        #: Call time of the last frame heard while the caller was speaking.
        self.last_voice = 0.0

    @property
    def recording(self) -> bool:
        return self._pcm is not None

    def start(self, cap_bytes: int) -> None:
        """Keep what the caller says from now on, at most ``cap_bytes``."""
        self._pcm = bytearray()
        self._cap = cap_bytes

    def stop(self) -> bytes:
        """The message so far; recording stops."""
        pcm, self._pcm = bytes(self._pcm or b""), None
        return pcm

    def hear(self, pcm: bytes, tick: int) -> None:
        message = self._pcm
        if message is not None and len(message) < self._cap:
            message += pcm
        if self._in_speech():
            self.last_voice = tick * FRAME_MS / 1000

    def ready(self) -> bool:
        return self._pcm is None

    def take(self, block: MediaBlock) -> None:
        if self._pcm is not None:  # taped before the message began: it gets its share
            super().take(block)
        elif block.heard_frames and self._in_speech():
            self.last_voice = block.span.last_heard * FRAME_MS / 1000
