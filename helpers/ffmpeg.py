"""Locating and running the FFmpeg binary: the system's, else the one in imageio-ffmpeg's wheel."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

__all__ = ["FFmpegError", "decode_to_pcm", "ffmpeg_binary"]


class FFmpegError(RuntimeError):
    """FFmpeg exited non-zero; ``stderr`` holds its own explanation."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


@functools.cache
def ffmpeg_binary() -> str:
    """Path of the FFmpeg to run. ``AUDIOSOCKET_FFMPEG`` wins, then PATH, then the wheel's."""
    env = os.environ.get("AUDIOSOCKET_FFMPEG")
    if env:
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def decode_to_pcm(path: str | Path, rate: int, timeout: float = 120.0) -> bytes:
    """Decode any file FFmpeg reads to mono int16 LE at ``rate``. Blocking: call off the loop."""
    cmd = [
        ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error",
        "-i", str(path), "-vn", "-ac", "1", "-ar", str(rate), "-f", "s16le", "-",
    ]
    from helpers import spawn

    try:
        done = spawn.run(cmd, timeout_s=timeout, capture_stdout=True, tail=2000)
    except spawn.SpawnTimeout as exc:
        raise FFmpegError(
            f"ffmpeg took longer than {timeout:g} s to decode {path}",
            exc.stderr_tail.decode("utf-8", "replace"),
        ) from None
    if done.returncode != 0:
        raise FFmpegError(
            f"ffmpeg could not decode {path}", done.stderr_tail.decode("utf-8", "replace")
        )
    return done.stdout
