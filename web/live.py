"""The live view's routes: calls in progress as JSON and as Server-Sent Events, listen-in
audio, and the page.

The hub (:class:`audiosocket.live.LiveHub`) is the one piece of the running server the web
side reads; it is handed over by the composition root, like the store.

* ``GET /api/live``: a snapshot (calls, their IVR node, transcript so far).
* ``GET /api/live/events``: SSE. Each connection starts with a ``snapshot`` event, then
  ``call_started``, ``node``, ``line`` and ``call_ended``; a comment line every
  ``heartbeat_s``. A reconnecting ``EventSource`` simply gets a fresh snapshot (its
  ``Last-Event-ID`` is not needed: the snapshot is the whole state).
* ``GET /api/calls/{uuid}/listen``: the call's audio, caller and server mixed, as a WAV
  stream with an open-ended header (16-bit mono at the call's rate), for an ``<audio>``
  element. Behind the portal's auth like every API route, and off unless
  ``[web] listen_in = true``; every listen is written to the audit trail.

Streams are long-lived but bounded: a cap on each kind (the hub's), a write that cannot
proceed for :data:`WRITE_TIMEOUT_S` ends the stream, and shutdown ends them all.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid as uuid_mod
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import hdrs, web

from web.auth import AUTH_KEY
from web.files import serve_file
from web.portal import STATIC_DIR

if TYPE_CHECKING:  # web imports nothing of the server at run time: the hub is handed over
    from audiosocket.live import LiveEvent, LiveHub

__all__ = ["LIVE_KEY", "setup_live", "wav_stream_header"]

log = structlog.get_logger("audiosocket.web.live")

LIVE_KEY: Final[web.AppKey[Any]] = web.AppKey("live_hub")
STORE_KEY: Final[web.AppKey[Any]] = web.AppKey("live_store")
LISTEN_IN_KEY: Final = web.AppKey("listen_in", bool)
#: A stream whose client has not taken a write for this long is ended (a stalled reader
#: must not hold a connection and its queue for ever).
WRITE_TIMEOUT_S: Final = 10.0
#: Tells a reconnecting EventSource to wait this long (ms) before trying again.
RETRY_MS: Final = 2000
_STREAM_HEADERS: Final = {hdrs.CACHE_CONTROL: "no-store", "X-Accel-Buffering": "no"}


def wav_stream_header(rate: int) -> bytes:
    """A 44-byte WAV header for 16-bit mono PCM of unknown length: both sizes 0xFFFFFFFF,
    which decoders read as "until the stream ends"."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def _sse(kind: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _encode(events: list[LiveEvent]) -> bytes:
    return b"".join(_sse(e.kind, e.data, e.id) for e in events)


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


def _snapshot(request: web.Request, hub: LiveHub) -> dict[str, Any]:
    """The calls in progress, and whether this portal lets its users listen in."""
    return {**hub.snapshot(), "listen_in": request.app[LISTEN_IN_KEY]}


def _hub(request: web.Request) -> LiveHub | None:
    hub: LiveHub | None = request.app.get(LIVE_KEY)
    return hub


def _unavailable() -> web.Response:
    return _error(503, "unavailable", "no AudioSocket server in this process: nothing is live")


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await resp.write(data)


async def live_snapshot(request: web.Request) -> web.Response:
    """``GET /api/live``: the calls in progress now."""
    hub = _hub(request)
    if hub is None:
        return _unavailable()
    return web.json_response(_snapshot(request, hub), headers={hdrs.CACHE_CONTROL: "no-store"})


async def live_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/live/events``: the snapshot, then every change, as Server-Sent Events."""
    hub = _hub(request)
    if hub is None:
        return _unavailable()
    sub = hub.subscribe()
    if sub is None:
        return _error(503, "busy", f"{hub.max_subscribers} live views are open",
                      {hdrs.RETRY_AFTER: "5"})
    # Taken before the first await: every later event is in ``sub``'s queue.
    first = _snapshot(request, hub)
    resp = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "text/event-stream; charset=utf-8",
                                       **_STREAM_HEADERS})
    why = "closed"
    try:
        await resp.prepare(request)
        await _write(resp, f"retry: {RETRY_MS}\n".encode()
                     + _sse("snapshot", first, first["last_event_id"]))
        while True:
            events = await sub.next(hub.heartbeat_s)
            if events is None:
                why = "cut_off" if sub.overflowed else "shutdown"
                break
            await _write(resp, _encode(events) if events else b": ping\n\n")
    except (TimeoutError, ConnectionError) as exc:
        why = type(exc).__name__
    finally:
        hub.unsubscribe(sub)
        log.debug("live_events_closed", why=why)
    return resp


async def listen(request: web.Request) -> web.StreamResponse:
    """``GET /api/calls/{uuid}/listen``: the call's mixed audio as it happens (WAV stream)."""
    hub = _hub(request)
    if hub is None:
        return _unavailable()
    if not request.app[LISTEN_IN_KEY]:
        return _error(403, "listen_in_off",
                      "listen-in is off on this server: set [web] listen_in = true")
    try:
        call_id = str(uuid_mod.UUID(request.match_info["uuid"]))
    except ValueError:
        return _error(404, "not_found", "no such call")
    try:
        entry, listener = hub.listen(call_id)
    except hub.ListenError as exc:
        return _error(exc.status, exc.code, exc.detail)
    _, how = request.app[AUTH_KEY].authorised(request)
    who = {"how": how, "remote": request.remote or "?",
           "user_agent": request.headers.get(hdrs.USER_AGENT, "")[:200]}
    store = request.app.get(STORE_KEY)
    if store is not None:
        store.audit("listen_in", call_id, who)
    slog = log.bind(call=call_id, **who)
    slog.info("listen_in_started")
    began = time.monotonic()
    resp = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "audio/wav", **_STREAM_HEADERS})
    try:
        await resp.prepare(request)
        await _write(resp, wav_stream_header(entry.rate))
        while True:
            chunk = await listener.next(hub.heartbeat_s)
            if chunk is None:
                break
            if chunk:
                await _write(resp, chunk)
        await resp.write_eof()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        hub.unlisten(entry, listener)
        slog.info("listen_in_ended", seconds=round(time.monotonic() - began, 1),
                  skipped_frames=listener.skipped)
    return resp


def setup_live(app: web.Application, hub: LiveHub | None, store: Any, *,
               listen_in: bool) -> None:
    """Register the live routes and the page; ``hub`` None answers 503 (no server here)."""
    if hub is not None:
        app[LIVE_KEY] = hub

        async def end_streams(_: web.Application) -> None:
            hub.close()

        # Before aiohttp waits for handlers at shutdown: open streams end at once.
        app.on_shutdown.append(end_streams)
    app[LISTEN_IN_KEY] = listen_in
    if store is not None:
        app[STORE_KEY] = store

    async def page(request: web.Request) -> web.StreamResponse:
        return await serve_file(request, STATIC_DIR / "live.html", "text/html; charset=utf-8")

    app.router.add_get("/live", page)
    app.router.add_get("/api/live", live_snapshot)
    # No HEAD on the streams: aiohttp drops a HEAD response's body, so the handler would
    # hold a subscriber or a listener writing into nothing.
    app.router.add_get("/api/live/events", live_events, allow_head=False)
    app.router.add_get("/api/calls/{uuid}/listen", listen, allow_head=False)
