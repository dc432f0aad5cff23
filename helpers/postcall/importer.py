"""Bringing existing recordings into the post-call pipeline (batch import and uploads).

A file becomes a call of app ``import``: decoded with FFmpeg to a mono WAV at its own rate
(16 kHz when it is above that: enough for speech, and what Whisper wants; streamed to disk
and stopped at the length limit, never held in memory), given a stable
UUID derived from its content so a second import of the same file is recognised and skipped
(resumable), and queued for the same jobs as a live call.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
import uuid as _uuid
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from prometheus_client import Counter

from helpers import spawn
from helpers.ffmpeg import FFmpegError, FFmpegTimeout, ffmpeg_binary, iter_pcm

__all__ = [
    "AUDIO_SUFFIXES", "DECODE_TIMEOUT_S", "MAX_SECONDS", "CheckedAudio", "ImportResult",
    "ValidationError", "import_file", "validate_audio",
]

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac", ".webm"}
#: Longest audio taken (3 hours): the decode stops once past it, never decodes a file whole.
MAX_SECONDS: Final = 3 * 3600.0
#: Probe and decode of one file together; past it the file is refused (reason ``timeout``).
#: A 3-hour MP3 decodes in well under a minute even on a loaded 2-core machine.
DECODE_TIMEOUT_S: Final = 180.0
REFUSED = Counter(
    "audiosocket_import_refused_total",
    "Files refused by validation (uploads and batch imports), by reason",
    ["reason"],
)
_NAMESPACE = _uuid.UUID("6f1d3c4e-9a57-4c7e-8f0b-2b1d6c8e5a11")


class ValidationError(ValueError):
    """Audio that is refused, with a reason a person can act on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImportResult:
    """One imported file."""

    call_uuid: str
    wav: Path
    duration: float
    skipped: bool  # already imported


def probe_audio(path: Path, timeout_s: float = 60.0) -> tuple[int | None, float | None]:
    """The file's sample rate and the duration its header declares, from FFmpeg's banner.

    Either is None when FFmpeg does not say; the duration is None too when FFmpeg only
    estimated it from the bitrate (not a declaration, and often wrong). Raises
    :class:`ValidationError` (``timeout``) when FFmpeg cannot even read the header within
    ``timeout_s``: that is not "no audio stream", and the person should be told so.
    """
    try:
        done = spawn.run(
            [ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", str(path)], timeout_s=timeout_s
        )
    except spawn.SpawnTimeout:
        raise ValidationError(
            "timeout", f"{path.name}: FFmpeg could not read it within {timeout_s:g} s"
        ) from None
    text = done.stderr_tail.decode("utf-8", "replace")
    match = re.search(r"Audio:.*?(\d+) Hz", text)
    rate = int(match.group(1)) if match else None
    declared = None
    found = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    if found and "Estimating duration from bitrate" not in text:
        h, m, sec = found.groups()
        declared = int(h) * 3600 + int(m) * 60 + float(sec)
    return rate, declared


def probe_rate(path: Path, timeout_s: float = 60.0) -> int | None:
    """The file's sample rate from FFmpeg's stream line, or None."""
    return probe_audio(path, timeout_s)[0]


@dataclass(frozen=True)
class CheckedAudio:
    """What :func:`validate_audio` found in a file it accepted."""

    rate: int
    seconds: float
    level_dbfs: float


def validate_audio(
    path: Path, dest: Path | None = None, *, min_seconds: float = 0.5,
    max_seconds: float = MAX_SECONDS, silence_dbfs: float = -55.0,
    timeout_s: float = DECODE_TIMEOUT_S,
) -> CheckedAudio:
    """Decode and check a file: it decodes, its length is within limits, it is not silent.

    The decode streams: length and level are counted chunk by chunk and the PCM (mono
    int16) goes to ``dest`` as a WAV when given, never into memory, and FFmpeg is stopped as
    soon as the audio passes ``max_seconds`` (a 5 MB file can hold hours). ``timeout_s``
    bounds the probe and the decode together. On refusal ``dest`` is removed. Raises
    :class:`ValidationError`. Blocking.
    """
    deadline = time.monotonic() + timeout_s
    rate, declared = probe_audio(path, timeout_s)
    if rate is None:
        raise ValidationError("undecodable", f"{path.name}: no audio stream FFmpeg can read")
    if declared is not None and declared > max_seconds:
        # Its own header says too long: refused without decoding a sample. A header that
        # understates (or says nothing) is caught by the decode, which stops at the limit.
        raise ValidationError(
            "too_long", f"{path.name}: {declared:.0f} s is over {max_seconds:.0f} s")
    rate = min(rate, 16000)
    left = max(0.001, deadline - time.monotonic())
    accepted = False
    writer: wave.Wave_write | None = None
    try:
        if dest is not None:
            writer = wave.open(str(dest), "wb")
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(rate)
        try:
            samples, sumsq = _count(path, rate, writer, max_seconds, left)
        except FFmpegTimeout as exc:
            raise ValidationError(
                "timeout", f"{path.name}: decoding took longer than {timeout_s:g} s") from exc
        except FFmpegError as exc:
            raise ValidationError(
                "undecodable", f"{path.name}: {exc}: {exc.stderr[-300:]}") from exc
        seconds = samples / rate
        if seconds < min_seconds:
            raise ValidationError(
                "too_short", f"{path.name}: {seconds:.2f} s is under {min_seconds} s")
        if seconds > max_seconds:
            raise ValidationError(
                "too_long", f"{path.name}: over {max_seconds:.0f} s (decoding stopped there)")
        level = 20 * math.log10(math.sqrt(sumsq / samples) / 32768.0) if sumsq else -math.inf
        if level < silence_dbfs:
            raise ValidationError("silent", f"{path.name}: silent ({level:.0f} dBFS)")
        accepted = True
    finally:
        if writer is not None:
            writer.close()  # patches the WAV header's lengths
        if dest is not None and not accepted:
            dest.unlink(missing_ok=True)
    return CheckedAudio(rate, seconds, level)


def _count(
    path: Path, rate: int, writer: wave.Wave_write | None, max_seconds: float, timeout: float
) -> tuple[int, int]:
    """Stream the decode: ``(samples, sum of squares)``, the PCM written on as it comes.

    Stops one sample past ``max_seconds`` (FFmpeg is killed there), so memory is one pipe
    chunk and the time is that of decoding ``max_seconds`` at most, whatever the file holds.
    """
    samples = 0
    sumsq = 0  # exact (Python int): the level does not depend on how chunks fall
    carry = b""  # a pipe read may end inside a sample
    with contextlib.closing(iter_pcm(path, rate, max_seconds=max_seconds,
                                     timeout=timeout)) as chunks:
        for chunk in chunks:
            if carry:
                chunk = carry + chunk
            whole = len(chunk) & ~1
            carry = chunk[whole:]
            data = np.frombuffer(chunk, dtype="<i2", count=whole // 2).astype(np.int64)
            samples += data.size
            sumsq += int(np.dot(data, data))
            if writer is not None:
                writer.writeframesraw(chunk[:whole])
    return samples, sumsq


def file_uuid(path: Path) -> str:
    """A stable call UUID for a file's content (so re-imports are recognised)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return str(_uuid.uuid5(_NAMESPACE, digest.hexdigest()))


def import_file(
    store: Any, jobs: Any, path: str | Path, data_dir: str | Path, *, app: str = "import",
    original_name: str | None = None,
) -> ImportResult:
    """Validate, convert and queue one file. Blocking: run it in a thread."""
    path = Path(path)
    call_uuid = file_uuid(path)
    wav = Path(data_dir) / "recordings" / f"{call_uuid}.wav"
    existing = store.get_call_row(call_uuid)
    if existing is not None and wav.exists():
        return ImportResult(call_uuid, wav, float(existing.duration or 0.0), True)
    wav.parent.mkdir(parents=True, exist_ok=True)
    # Decoded straight to disk under a name of its own (two imports of one file at once
    # must not write into the same partial file, and no ``*.wav`` scan of the folder may
    # take it for a recording); renamed once it passed every check.
    tmp = wav.with_name(f".{call_uuid}.{_uuid.uuid4().hex[:8]}.wav.partial")
    try:
        checked = validate_audio(path, tmp)
    except ValidationError as exc:
        REFUSED.labels(reason=exc.reason).inc()
        raise
    tmp.replace(wav)
    rate, duration = checked.rate, checked.seconds
    now = time.time()
    store.call_started(call_uuid, app, rate, None, now,
                       meta={"source": original_name or path.name})
    store.call_ended(call_uuid, now + duration, "imported", 0, 0)
    jobs.submit(call_uuid, wav)
    store.flush()  # the call and its jobs are durable before anyone is told it was imported
    return ImportResult(call_uuid, wav, duration, False)
