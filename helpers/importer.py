"""Bringing existing recordings into the post-call pipeline (batch import and uploads).

A file becomes a call of app ``import``: decoded with FFmpeg to a mono WAV at its own rate
(16 kHz when it is above that: enough for speech, and what Whisper wants), given a stable
UUID derived from its content so a second import of the same file is recognised and skipped
(resumable), and queued for the same jobs as a live call.
"""

from __future__ import annotations

import hashlib
import time
import uuid as _uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.audio import dbfs, write_wav
from helpers.ffmpeg import decode_to_pcm, ffmpeg_binary

__all__ = ["AUDIO_SUFFIXES", "ImportResult", "ValidationError", "import_file", "validate_audio"]

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac", ".webm"}
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


def probe_rate(path: Path) -> int | None:
    """The file's sample rate from FFmpeg's stream line, or None."""
    import re

    from helpers import spawn

    try:
        done = spawn.run(
            [ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", str(path)], timeout_s=60
        )
    except spawn.SpawnTimeout:
        return None
    match = re.search(r"Audio:.*?(\d+) Hz", done.stderr_tail.decode("utf-8", "replace"))
    return int(match.group(1)) if match else None


def validate_audio(
    path: Path, *, min_seconds: float = 0.5, max_seconds: float = 3 * 3600.0,
    silence_dbfs: float = -55.0,
) -> tuple[bytes, int]:
    """Decode and check a file: it decodes, its length is within limits, it is not silent.

    Returns ``(pcm, rate)`` (mono int16). Raises :class:`ValidationError`. Blocking.
    """
    from helpers.ffmpeg import FFmpegError

    rate = probe_rate(path)
    if rate is None:
        raise ValidationError("undecodable", f"{path.name}: no audio stream FFmpeg can read")
    rate = min(rate, 16000)
    try:
        pcm = decode_to_pcm(path, rate)
    except FFmpegError as exc:
        raise ValidationError("undecodable", f"{path.name}: {exc}: {exc.stderr[-300:]}") from exc
    seconds = len(pcm) / 2 / rate
    if seconds < min_seconds:
        raise ValidationError("too_short", f"{path.name}: {seconds:.2f} s is under {min_seconds} s")
    if seconds > max_seconds:
        raise ValidationError("too_long", f"{path.name}: {seconds:.0f} s is over {max_seconds} s")
    level = dbfs(pcm)
    if level < silence_dbfs:
        raise ValidationError("silent", f"{path.name}: silent ({level:.0f} dBFS)")
    return pcm, rate


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
        return ImportResult(call_uuid, wav, float(existing.get("duration") or 0.0), True)
    pcm, rate = validate_audio(path)
    wav.parent.mkdir(parents=True, exist_ok=True)
    tmp = wav.with_suffix(".partial.wav")
    write_wav(tmp, pcm, rate)
    tmp.replace(wav)
    duration = len(pcm) / 2 / rate
    now = time.time()
    store.call_started(call_uuid, app, rate, None, now,
                       meta={"source": original_name or path.name})
    store.call_ended(call_uuid, now + duration, "imported", 0, 0)
    jobs.submit(call_uuid, wav)
    store.flush()  # the call and its jobs are durable before anyone is told it was imported
    return ImportResult(call_uuid, wav, duration, False)
