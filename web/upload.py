"""``POST /api/uploads``: recordings from the browser into the post-call pipeline.

The page validates a file before sending it, but the server trusts none of that: it checks
the declared size against ``web.max_upload_mb`` (413 before reading a byte), counts the
bytes it actually receives (413 again, the partial file deleted), checks the content type
(415), and :func:`helpers.postcall.importer.import_file` decodes it with FFmpeg and refuses files
that are undecodable, too short, too long or silent, or that take too long to decode (422
with the reason; the decode streams and stops at the length limit, so a small file that
expands to hours costs neither memory nor time). Accepted files
become a call of app ``upload`` and go through the same jobs as a live call.

The body is either ``multipart/form-data`` with a ``file`` part, or the raw file with an
``audio/*`` (or ``application/octet-stream``) Content-Type and an optional ``X-Filename``.
Both are streamed to disk in chunks, never held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid as uuid_mod
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

import structlog
from aiohttp import BodyPartReader, hdrs, web
from prometheus_client import Counter

from helpers.postcall.importer import AUDIO_SUFFIXES, ValidationError, import_file
from helpers.postcall.importer import MAX_SECONDS as _IMPORT_MAX_SECONDS

__all__ = ["ACCEPTED_TYPES", "MAX_CONCURRENT_IMPORTS", "UploadLimits", "setup_uploads"]

log = structlog.get_logger(__name__)

UPLOADS = Counter("audiosocket_uploads_total", "Portal uploads, by outcome", ["outcome"])

#: Content types we take. Browsers label the same file differently (audio/wav, audio/x-wav,
#: audio/vnd.wave), and leave it empty for unknown extensions, hence octet-stream too: the
#: FFmpeg decode is the real check.
ACCEPTED_TYPES: Final = frozenset({
    "audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/mpeg", "audio/mp3",
    "audio/mp4", "audio/x-m4a", "audio/m4a", "audio/aac", "audio/ogg", "audio/opus",
    "audio/flac", "audio/x-flac", "audio/webm", "video/webm", "application/octet-stream",
})
MIN_SECONDS: Final = 0.5
MAX_SECONDS: Final = _IMPORT_MAX_SECONDS  # the importer enforces it while decoding
#: FFmpeg decodes are CPU-heavy: a few at a time, the rest wait (bounded by the HTTP side).
MAX_CONCURRENT_IMPORTS: Final = 2
CHUNK: Final = 256 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
#: The browser Whisper (``audiosocket models build-web``), served under /static/models/. The
#: page asks us whether it is there rather than probing for it (a 404 in the console).
WEB_WHISPER_CONFIG = Path(__file__).resolve().parent / "static" / "models" / \
    "whisper-tiny.en" / "config.json"

class UploadLimits:
    """Everything the upload handler needs, fixed at start-up."""

    def __init__(self, store: Any, jobs: Any, data_dir: Path, max_bytes: int) -> None:
        self.store = store
        self.jobs = jobs
        self.data_dir = data_dir
        self.max_bytes = max_bytes
        self.semaphore = asyncio.Semaphore(MAX_CONCURRENT_IMPORTS)

    def describe(self) -> dict[str, Any]:
        """What ``GET /api/uploads`` tells the page (so both sides apply the same limits)."""
        return {
            "max_bytes": self.max_bytes,
            "min_seconds": MIN_SECONDS,
            "max_seconds": MAX_SECONDS,
            "accepted_types": sorted(ACCEPTED_TYPES),
            "accepted_suffixes": sorted(AUDIO_SUFFIXES),
            "enabled": self.jobs is not None,
            # Looked at per request: a model built while the server runs counts at once.
            "browser_asr": WEB_WHISPER_CONFIG.is_file(),
        }


LIMITS_KEY: Final[web.AppKey[UploadLimits]] = web.AppKey("upload_limits", UploadLimits)


def _error(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    UPLOADS.labels(outcome=code).inc()
    return web.json_response({"error": code, "detail": detail, **extra}, status=status)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _clean_name(name: str | None) -> str:
    """A display name for the call's meta; never used as a path."""
    base = os.path.basename((name or "").replace("\\", "/"))
    return _SAFE_NAME.sub("_", base)[:200] or "upload"


class _TooLarge(Exception):
    pass


async def _stream_to(dest: Path, reader: Any, max_bytes: int) -> int:
    """Copy chunks from ``reader`` (StreamReader or BodyPartReader) to ``dest``, capped."""
    total = 0
    fh = await asyncio.to_thread(open, dest, "wb")
    try:
        while True:
            if isinstance(reader, BodyPartReader):
                chunk = await reader.read_chunk(CHUNK)
            else:
                chunk = await reader.read(CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise _TooLarge
            await asyncio.to_thread(fh.write, chunk)
    finally:
        await asyncio.to_thread(fh.close)
    return total


async def get_limits(request: web.Request) -> web.Response:
    """``GET /api/uploads``: the limits the page's validator applies."""
    return web.json_response(request.app[LIMITS_KEY].describe())


async def post_upload(request: web.Request) -> web.StreamResponse:
    """``POST /api/uploads``: store, re-validate and import one file."""
    limits: UploadLimits = request.app[LIMITS_KEY]
    if limits.jobs is None:
        return _error(503, "unavailable", "post-call jobs are not running; uploads are off")
    declared = request.content_length
    if declared is not None and declared > limits.max_bytes:
        return _error(413, "too_large", f"over the {limits.max_bytes} byte limit",
                      max_bytes=limits.max_bytes)
    ctype = _media_type(request.headers.get(hdrs.CONTENT_TYPE))
    tmp_dir = limits.data_dir / "uploads"
    await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
    # Our own random name: nothing from the client ever becomes part of a path.
    tmp = tmp_dir / f".{uuid_mod.uuid4().hex}.partial"
    try:
        if ctype == "multipart/form-data":
            multipart = await request.multipart()
            part: Any = None
            while True:
                part = await multipart.next()
                if part is None or (isinstance(part, BodyPartReader) and part.name == "file"):
                    break
            if part is None:
                return _error(400, "bad_request", "multipart body has no 'file' part")
            name = _clean_name(part.filename)
            ptype = _media_type(part.headers.get(hdrs.CONTENT_TYPE))
            if ptype and ptype not in ACCEPTED_TYPES:
                return _error(415, "unsupported_media_type", f"{ptype} is not audio")
            size = await _stream_to(tmp, part, limits.max_bytes)
        elif ctype in ACCEPTED_TYPES:
            # The page percent-encodes the name (header values are Latin-1 only).
            raw_name = request.headers.get("X-Filename") or request.query.get("name") or ""
            name = _clean_name(unquote(raw_name))
            size = await _stream_to(tmp, request.content, limits.max_bytes)
        else:
            return _error(415, "unsupported_media_type",
                          f"Content-Type {ctype or '(none)'} is not an audio type")
        if size == 0:
            return _error(422, "invalid_audio", "empty file", reason="undecodable")
        async with limits.semaphore:
            try:
                result = await asyncio.to_thread(
                    import_file, limits.store, limits.jobs, tmp, limits.data_dir,
                    app="upload", original_name=name,
                )
            except ValidationError as exc:
                log.info("upload_refused", reason=exc.reason, name=name)
                # The message names our temp file; say it with the client's name instead.
                detail = str(exc).replace(tmp.name, name)
                return _error(422, "invalid_audio", detail, reason=exc.reason)
        # Submitted jobs started their own writes; nothing to wait for here.
        limits.store.audit("upload", result.call_uuid, {"name": name, "bytes": size})
        UPLOADS.labels(outcome="skipped" if result.skipped else "accepted").inc()
        log.info("upload_accepted", call=result.call_uuid, name=name, bytes=size,
                 skipped=result.skipped)
        return web.json_response(
            {
                "uuid": result.call_uuid,
                "url": f"/calls/{result.call_uuid}",
                "api": f"/api/calls/{result.call_uuid}",
                "duration": round(result.duration, 3),
                "skipped": result.skipped,
            },
            status=200 if result.skipped else 201,
            headers={hdrs.LOCATION: f"/calls/{result.call_uuid}"},
        )
    except _TooLarge:
        return _error(413, "too_large", f"over the {limits.max_bytes} byte limit",
                      max_bytes=limits.max_bytes)
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(tmp.unlink, missing_ok=True)


def setup_uploads(
    app: web.Application, store: Any, jobs: Any, data_dir: Path, max_upload_mb: int
) -> None:
    """Register ``GET``/``POST /api/uploads``."""
    app[LIMITS_KEY] = UploadLimits(store, jobs, Path(data_dir), max_upload_mb * 1024 * 1024)
    app.router.add_get("/api/uploads", get_limits)
    app.router.add_post("/api/uploads", post_upload)
