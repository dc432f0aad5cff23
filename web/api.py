"""JSON API over the call store: list, get and delete calls, their files and voicemail
messages, and the OpenAPI.

Handlers only parse, call ``await store.aread(...)`` (the read runs in the store's reader
pool, never on the loop) and shape the answer. Every error they produce is JSON:
``{"error": "<code>", "detail": "..."}``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import uuid as uuid_mod
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import Counter

from helpers.storage import LocalStorage
from helpers.store.db import CallStore
from web.fastpath import FAST_INDEX
from web.files import content_type_for, serve_file, stored_path
from web.openapi import openapi_spec
from web.shapes import call_json, call_list_json

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "parse_time", "setup_api"]

log = structlog.get_logger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

#: A message's name is the flow variable it was recorded into (``\w+``).
_MESSAGE_NAME = re.compile(r"\w{1,64}", re.ASCII)
# Counted by status, as the fast path counts recording responses.
MESSAGES_SERVED = Counter("audiosocket_http_message_responses_total",
                          "Voicemail message responses, by status", ["status"])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadParam(ValueError):
    """A query parameter that does not parse; becomes a 400."""


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def _json_errors(handler: Handler) -> Handler:
    """Turn bad parameters into 400 and unexpected failures into a logged JSON 500."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _BadParam as exc:
            return _error(400, "bad_request", str(exc))
        except web.HTTPException:
            raise
        except Exception:
            log.exception("api_error", path=request.path)
            return _error(500, "internal_error", "unexpected server error")

    return wrapper


def parse_time(value: str) -> float:
    """Unix seconds or ISO 8601 (``Z`` or offset; naive means UTC) to unix seconds."""
    try:
        ts = float(value)
    except ValueError:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _BadParam(f"not a time (ISO 8601 or unix seconds): {value!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    if not math.isfinite(ts):
        raise _BadParam(f"not a time: {value!r}")
    return ts


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadParam(f"{name} must be an integer") from None
    if value < lo:
        raise _BadParam(f"{name} must be >= {lo}")
    return min(value, hi)  # an over-large limit is clamped, not refused


def _bool_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise _BadParam(f"{name} must be true or false")


def _str_param(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    return raw if raw else None


def _uuid_param(request: web.Request, name: str) -> str | None:
    """A UUID query parameter in canonical form (as stored), or None when absent."""
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return str(uuid_mod.UUID(raw))
    except ValueError:
        raise _BadParam(f"{name} must be a UUID") from None


def _call_uuid(request: web.Request) -> str | None:
    """The canonical form of the path's UUID, or None when it is not a UUID at all.

    Parsing with uuid.UUID (not a regex or a path join) is what makes ids like
    ``../../etc/passwd`` impossible to pass on to the store or the file system.
    """
    try:
        return str(uuid_mod.UUID(request.match_info["uuid"]))
    except ValueError:
        return None


class _CallsApi:
    """The handlers, bound to one store."""

    def __init__(self, store: CallStore, data_dir: Path | None = None,
                 files: LocalStorage | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        #: Where recordings and voicemail live (the shared directory; data_dir by default).
        self.files = files if files is not None else (
            LocalStorage(data_dir) if data_dir is not None else getattr(store, "files", None))

    def _roots(self) -> list[Path]:
        """The directories files may be read from or deleted in: the files root, and the
        data dir (voicemail saved before a shared directory was configured)."""
        roots = [self.files.root] if self.files is not None else []
        if self.data_dir is not None and self.data_dir not in roots:
            roots.append(self.data_dir)
        return roots

    async def list_calls(self, request: web.Request) -> web.StreamResponse:
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 2**62)
        since = request.query.get("since")
        until = request.query.get("until")
        page = await self.store.aread(
            self.store.list_calls,
            limit,
            offset,
            app=_str_param(request, "app"),
            end_reason=_str_param(request, "end_reason"),
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            has_summary=_bool_param(request, "has_summary"),
            ivr_result=_str_param(request, "ivr_result"),
            q=_str_param(request, "q"),
            uuid=_uuid_param(request, "uuid"),
        )
        return web.json_response({**call_list_json(page), "limit": limit, "offset": offset})

    async def get_call(self, request: web.Request) -> web.StreamResponse:
        call_id = _call_uuid(request)
        call = None if call_id is None else await self.store.aread(self.store.get_call, call_id)
        if call is None:
            return _error(404, "not_found", "no such call")
        return web.json_response(call_json(call))

    async def delete_call(self, request: web.Request) -> web.StreamResponse:
        """Delete a finished call: its files (confined to the data dir), rows, and an audit entry.

        A live call is refused (409): its recorder is still writing the WAV.
        """
        call_id = _call_uuid(request)
        row = None if call_id is None else await self.store.aread(self.store.get_call_row,
                                                                   call_id)
        if call_id is None or row is None:
            return _error(404, "not_found", "no such call")
        if row.ended_at is None:
            return _error(409, "conflict", "the call is live; delete it after it ends")
        files = await self.store.aread(self.store.recordings_for, call_id)
        paths = [str(stored_path(self.files, f.path) or f.path) for f in files.values()]
        if self.files is not None:
            # Voicemail is stored relative to the files root; it goes with its call.
            messages = await self.store.aread(self.store.messages_for, call_id)
            paths += [str(stored_path(self.files, m.path) or m.path) for m in messages]
        removed, refused = await asyncio.to_thread(_remove_files, paths, self._roots())
        index = request.app.get(FAST_INDEX)
        if index is not None:
            index.invalidate(call_id)  # the range fast path must not serve it from its cache
        existed = await asyncio.wrap_future(self.store.delete_call(call_id))
        self.store.audit(
            "delete_call", call_id,
            {"files": removed, "refused": refused, "peer": request.remote or ""},
        )
        log.info("call_deleted", call=call_id, files=len(removed), refused=len(refused))
        if not existed:  # deleted concurrently by another request
            return _error(404, "not_found", "no such call")
        return web.json_response({"uuid": call_id, "deleted": True, "files": len(removed)})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        """The OpenAPI 3.1 description of every route."""
        return web.json_response(openapi_spec())

    async def recording(self, request: web.Request) -> web.StreamResponse:
        """A call's recording or archive with full Range / conditional support."""
        return await self._serve(request, request.match_info.get("fmt", ""))

    async def peaks(self, request: web.Request) -> web.StreamResponse:
        """The precomputed waveform peaks of a call (JSON)."""
        return await self._serve(request, "peaks")

    async def message(self, request: web.Request) -> web.StreamResponse:
        """A voicemail message left through an IVR ``record`` node, with Range / 206.

        The path comes from the store and is resolved (symlinks too) and confined to
        ``<data_dir>/messages``, as DELETE confines what it unlinks.
        """
        call_id = _call_uuid(request)
        name = request.match_info.get("name", "")
        roots = self._roots()
        if call_id is None or not _MESSAGE_NAME.fullmatch(name) or not roots:
            MESSAGES_SERVED.labels(status="404").inc()
            return _error(404, "not_found", "no such message")
        rows = await self.store.aread(self.store.messages_for, call_id)
        row = next((m for m in rows if m.name == name), None)
        path = None if row is None else await asyncio.to_thread(_message_file, roots, row.path)
        if path is None:
            MESSAGES_SERVED.labels(status="404").inc()
            return _error(404, "not_found", "no such message")
        resp = await serve_file(request, path, "audio/wav")
        MESSAGES_SERVED.labels(status=str(resp.status)).inc()
        return resp

    async def _serve(self, request: web.Request, fmt: str) -> web.StreamResponse:
        call_id = _call_uuid(request)
        if call_id is None or fmt not in ("wav", "m4a", "mp3", "peaks"):
            return _error(404, "not_found", "no such recording")
        files = await self.store.aread(self.store.recordings_for, call_id)
        entry = files.get(fmt)
        if entry is None:
            return _error(404, "not_found", f"no {fmt} for this call (yet)")
        path = stored_path(self.files, entry.path)
        if path is None:
            return _error(404, "not_found", f"no {fmt} for this call (yet)")
        ctype = "application/json" if fmt == "peaks" else content_type_for(path)
        return await serve_file(request, path, ctype)


def _confined(data_dir: Path, relative: str, folder: str) -> Path | None:
    """``data_dir / relative`` when it resolves inside ``data_dir / folder``, else None."""
    root = (data_dir / folder).resolve()
    try:
        path = (data_dir / relative).resolve()
    except (OSError, ValueError):
        return None
    return path if path.is_relative_to(root) and path != root else None


def _message_file(roots: list[Path], relative: str) -> Path | None:
    """The first existing ``<root>/relative`` confined to ``<root>/messages``, else the
    confined path under the first root (which then answers 404), else None."""
    found = [p for p in (_confined(root, relative, "messages") for root in roots) if p]
    return next((p for p in found if p.is_file()), found[0] if found else None)


def _remove_files(paths: list[str], roots: list[Path]) -> tuple[list[str], list[str]]:
    """Unlink ``paths`` that resolve inside one of ``roots``; returns (removed, refused).

    The paths come from our own store, but a row could have been edited or restored from
    elsewhere: resolving (symlinks included) and confining to the files root and the data
    dir means a DELETE can never remove anything outside them. Without a root nothing is
    removed.
    """
    removed: list[str] = []
    refused: list[str] = []
    resolved = [root.resolve() for root in roots]
    for raw in paths:
        path = Path(raw).resolve()
        if not any(path.is_relative_to(root) and path != root for root in resolved):
            refused.append(raw)
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("delete_file_failed", path=raw, error=str(exc))
            refused.append(raw)
            continue
        removed.append(raw)
    return removed, refused


def setup_api(app: web.Application, store: CallStore, data_dir: Path | None = None,
              files: LocalStorage | None = None) -> None:
    """Register the JSON API routes on ``app``, reading from ``store``.

    ``files`` is where recordings and voicemail live (``config.shared_path``; default
    ``data_dir``): stored relative paths resolve against it. It and ``data_dir`` confine
    what ``DELETE /api/calls/{uuid}`` may unlink; without either the rows are deleted and
    the files left in place (and listed as refused in the audit).
    """
    api = _CallsApi(store, data_dir, files)
    app.router.add_get("/api/openapi.json", api.openapi)
    app.router.add_get("/api/calls", _json_errors(api.list_calls))
    app.router.add_get("/api/calls/{uuid}", _json_errors(api.get_call))
    app.router.add_delete("/api/calls/{uuid}", _json_errors(api.delete_call))
    # GET also answers HEAD (aiohttp adds it), which serve_file handles per RFC 9110.
    app.router.add_get("/api/calls/{uuid}/recording.{fmt}", api.recording)
    app.router.add_get("/api/calls/{uuid}/peaks.json", api.peaks)
    app.router.add_get("/api/calls/{uuid}/messages/{name}.wav", api.message)
