"""Locating and running the FFmpeg binary: the system's, else the one in imageio-ffmpeg's wheel."""

from __future__ import annotations

import functools
import math
import os
import shutil
from collections.abc import Generator
from pathlib import Path

__all__ = ["FFmpegError", "FFmpegTimeout", "decode_to_pcm", "ffmpeg_binary", "iter_pcm"]


class FFmpegError(RuntimeError):
    """FFmpeg exited non-zero; ``stderr`` holds its own explanation."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class FFmpegTimeout(FFmpegError):
    """FFmpeg ran past its time limit; it has been killed and reaped."""


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


def iter_pcm(
    path: str | Path, rate: int, *, max_seconds: float | None = None, timeout: float = 120.0,
    chunk: int = 65536,
) -> Generator[bytes, None, None]:
    """Decode any file FFmpeg reads to mono int16 LE at ``rate``, yielded in chunks as
    FFmpeg writes them, so a long file never sits in memory. Blocking: call off the loop.

    With ``max_seconds`` the decode stops just past the limit: FFmpeg is told to stop at
    ``max_seconds + 1`` (``-t``) and, whatever it does, at most one sample more than
    ``max_seconds`` is yielded before it is killed. A caller that counts the bytes thus sees
    "over the limit" without the rest of a decompression bomb ever being decoded. Raises
    :class:`FFmpegTimeout` past ``timeout`` (the whole decode), :class:`FFmpegError` when
    FFmpeg fails. Closing the generator early kills and reaps FFmpeg.
    """
    from helpers import spawn  # local: spawn imports prometheus_client

    # One decoder thread: audio frames are small, and handing each to another thread cost
    # more than decoding it (measured: a 3-hour decode took about half as long).
    cmd = [
        ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1",
        "-i", str(path), "-vn", "-ac", "1", "-ar", str(rate),
    ]
    cap: int | None = None
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds + 1.0:.3f}"]  # FFmpeg's own stop, a second past ours
        cap = (math.floor(max_seconds * rate) + 1) * 2  # bytes: one sample over the limit
    cmd += ["-f", "s16le", "-"]
    sent = 0
    try:
        with spawn.stream(cmd, timeout_s=timeout, tail=2000) as child:
            for data in child.chunks(chunk):
                if cap is not None and sent + len(data) >= cap:
                    yield data[: cap - sent]
                    return  # over the limit: the with block kills FFmpeg, nothing more read
                sent += len(data)
                yield data
            code = child.wait()
            if code != 0:
                raise FFmpegError(
                    f"ffmpeg could not decode {path}",
                    child.stderr_tail.decode("utf-8", "replace"),
                )
    except spawn.SpawnTimeout as exc:
        raise FFmpegTimeout(
            f"ffmpeg took longer than {timeout:g} s to decode {path}",
            exc.stderr_tail.decode("utf-8", "replace"),
        ) from None


def decode_to_pcm(path: str | Path, rate: int, timeout: float = 120.0) -> bytes:
    """Decode any file FFmpeg reads to mono int16 LE at ``rate``, whole, in memory.

    For short files only (prompts, tests); anything a user hands us goes through
    :func:`iter_pcm` with a length limit. Blocking: call off the loop.
    """
    return b"".join(iter_pcm(path, rate, timeout=timeout))
