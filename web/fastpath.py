"""A fast path for recording range requests, in front of aiohttp on the same port.

Why: players fetch recordings as many small ranges, and under load aiohttp's per-request
machinery (request and response objects, middlewares, the router, a thread hop to open the
file) dominates: one core served ~3,600 random 64 KiB ranges a second against nginx's
~26,000 (docs/BENCHMARKS.md). A bare asyncio protocol that parses the request line, checks
the token and calls ``os.sendfile`` on a file it already holds open reached 78 % of nginx
in the same run. This module is that protocol, with the portal's semantics kept exact:

* It only answers the common case: ``GET /api/calls/{uuid}/recording.{wav,m4a,mp3}``
  over HTTP/1.1, no body, no conditional header (``If-*``), no or one ``Range`` that is a
  single range or is ignored (RFC 9110: invalid → 200 with everything), the recording
  known and non-empty, and the request authorised by the portal's own
  :class:`~web.auth.AuthPolicy`. Status, headers and bytes are those of
  :func:`web.files.serve_file` plus the portal's security headers (a test compares both
  paths header by header).
* Anything else (another route, HEAD, multipart ranges, 416s, conditionals, 401s, 404s,
  malformed heads, heads near aiohttp's size limits, :mod:`web.limits`) is handed to
  aiohttp untouched: at a request boundary, the
  connection's protocol becomes aiohttp's own handler and stays so. No request is ever
  parsed twice or answered by both.
* Files are resolved through the store once and kept open for ``ttl_s`` (2 s), so a
  replaced or deleted recording is seen within that time (DELETE through the API drops
  the entry at once). Store lookups and ``open`` run in threads, never on the loop;
  the request waits, the connection's later requests queue behind it in order.
* Bytes go from the page cache to the socket with ``os.sendfile``; when the socket is full
  the connection stops reading and waits for writability (on a ``dup`` of the socket, as
  uvloop owns the original), which is the backpressure: a slow reader costs one file
  position, never memory.

A request head must be whole ``head_timeout_s`` after the connection opened or the
previous response ended, as on aiohttp's side (bytes trickling in do not extend it); the
site's :class:`~web.limits.HttpGuard` sweeps and caps the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat as stat_mod
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.web_runner import BaseRunner, TCPSite
from prometheus_client import Counter

from helpers.storage import LocalStorage
from web.auth import AUTH_KEY, COOKIE_NAME, AuthPolicy
from web.files import CACHE_CONTROL, content_type_for, stored_path
from web.limits import MAX_FIELD_SIZE, MAX_HEADERS, TIMEOUTS, GuardedSite, HttpGuard, http_limits
from web.portal import SECURITY_HEADERS
from web.ranges import RangeKind, format_http_date, make_etag, parse_range

__all__ = ["FAST_INDEX", "FastSite", "FrontProtocol", "RecordingIndex"]

log = structlog.get_logger("audiosocket.web")

FAST = Counter("audiosocket_http_fast_responses_total",
               "Recording requests answered by the range fast path", ["status"])
# Label children looked up once: .labels() per request costs more than the rest of a header.
_FAST_200, _FAST_206 = FAST.labels(status="200"), FAST.labels(status="206")
HANDOFFS = Counter("audiosocket_http_fast_handoffs_total",
                   "Connections handed from the fast path to aiohttp", ["why"])

_REQUEST_LINE: Final = re.compile(
    rb"GET /api/calls/([0-9a-fA-F-]{36})/recording\.(wav|m4a|mp3) HTTP/1\.1")
# Headers whose presence means semantics the fast path does not implement: aiohttp decides.
_NOT_FAST: Final = frozenset({
    b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"if-match",
    b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range",
})
MAX_HEAD: Final = 16 * 1024


@dataclass(eq=False)
class _File:
    """One open recording: what every response for it shares."""

    fd: int
    size: int
    fixed: bytes  # the headers that depend only on the file, CRLF-terminated
    expires: float
    users: int = 0
    dead: bool = False


@dataclass
class _Lookup:
    waiters: list[asyncio.Future[_File | None]] = field(default_factory=list)


class RecordingIndex:
    """(call uuid, format) → an open recording, looked up in the store off the loop."""

    def __init__(self, store: Any, *, ttl_s: float = 2.0, max_entries: int = 512,
                 files: LocalStorage | None = None) -> None:
        self.store = store
        #: The files root relative paths resolve against (web.files.stored_path).
        self.files = files if files is not None else getattr(store, "files", None)
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._files: OrderedDict[tuple[str, str], _File] = OrderedDict()
        self._lookups: dict[tuple[str, str], _Lookup] = {}

    def get(self, key: tuple[str, str], now: float) -> _File | None:
        """A fresh entry, or None (then :meth:`load`)."""
        entry = self._files.get(key)
        if entry is None or entry.expires < now:
            return None
        return entry

    async def load(self, key: tuple[str, str]) -> _File | None:
        """Resolve ``key`` (store, then open + fstat, both in threads); None if unknown."""
        pending = self._lookups.get(key)
        if pending is not None:  # one lookup per key however many requests wait on it
            fut: asyncio.Future[_File | None] = asyncio.get_running_loop().create_future()
            pending.waiters.append(fut)
            return await fut
        lookup = self._lookups[key] = _Lookup()
        entry: _File | None = None
        try:
            files = await self.store.aread(self.store.recordings_for, key[0])
            row = files.get(key[1])
            path = None if row is None else stored_path(self.files, row.path)
            if path is not None:
                entry = await asyncio.to_thread(_open, path, self.ttl_s)
            if entry is not None:
                self._put(key, entry)
            return entry
        finally:
            del self._lookups[key]
            for waiter in lookup.waiters:
                if not waiter.done():
                    waiter.set_result(entry)

    def _put(self, key: tuple[str, str], entry: _File) -> None:
        old = self._files.pop(key, None)
        if old is not None:
            self._retire(old)
        self._files[key] = entry
        while len(self._files) > self.max_entries:
            _, oldest = self._files.popitem(last=False)
            self._retire(oldest)

    def invalidate(self, call_uuid: str) -> None:
        """Forget every format of a call (it was deleted)."""
        for fmt in ("wav", "m4a", "mp3"):
            entry = self._files.pop((call_uuid.lower(), fmt), None)
            if entry is not None:
                self._retire(entry)

    def release(self, entry: _File) -> None:
        """A response using ``entry`` is done with it."""
        entry.users -= 1
        if entry.dead and entry.users == 0:
            os.close(entry.fd)

    def _retire(self, entry: _File) -> None:
        entry.dead = True
        if entry.users == 0:
            os.close(entry.fd)

    def close(self) -> None:
        """Close every file not in use (the ones in use close when their response ends)."""
        while self._files:
            self._retire(self._files.popitem()[1])


FAST_INDEX: Final[web.AppKey[RecordingIndex]] = web.AppKey("fast_index", RecordingIndex)


def _open(path: Path, ttl_s: float) -> _File | None:
    """Open and describe a recording (blocking: run in a thread). None: not servable here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # missing or unreadable: aiohttp's path says which (404/403)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode) or st.st_size == 0:
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    fixed = (
        f"Accept-Ranges: bytes\r\nETag: {make_etag(st)}\r\n"
        f"Last-Modified: {format_http_date(int(st.st_mtime))}\r\n"
        f"Cache-Control: {CACHE_CONTROL}\r\nContent-Type: {content_type_for(path)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in SECURITY_HEADERS.items())
    ).encode("latin-1")
    return _File(fd, st.st_size, fixed, time.monotonic() + ttl_s)


_date_cache: list[Any] = [0, b""]


def _date_header() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = f"Date: {format_http_date(now)}\r\n".encode("latin-1")
    return bytes(_date_cache[1])


class FrontProtocol(asyncio.Protocol):
    """Per connection: answer fast-path requests, hand the rest (and the connection) over."""

    def __init__(self, aiohttp_factory: Callable[[], asyncio.Protocol], index: RecordingIndex,
                 policy: AuthPolicy, live: set[FrontProtocol],
                 guard: HttpGuard | None = None) -> None:
        self._factory = aiohttp_factory
        self._guard = guard
        self._index = index
        self._policy = policy
        self._live = live
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._fd = -1
        self._wsock: socket.socket | None = None  # dup of the socket, to wait for writability
        self._busy = False  # a lookup or a send is in progress: later requests wait
        self._paused = False
        self._gone = False
        self._eof = False
        self._send: tuple[_File, bytes, int, int] | None = None
        self._task: asyncio.Future[None] | None = None  # a running lookup (kept referenced)
        # When the wait for the current request head began (open, or the last response's
        # end): the head timeout counts from here, so trickled bytes do not extend it.
        self.last_active = time.monotonic()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        if self._guard is not None and not self._guard.admit(transport):
            self._gone = True  # refused (503, closed): never in the live set
            return
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        self._live.add(self)

    def data_received(self, data: bytes) -> None:
        if self._gone:
            return
        self._buf += data
        if not self._busy:
            self._process()

    def eof_received(self) -> bool | None:
        # The client sends nothing more; finish what is being sent, then close.
        self._eof = True
        return True if self._busy else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self._live.discard(self)
        self._finish_send()
        if self._wsock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_writer(self._wsock.fileno())
            self._wsock.close()
            self._wsock = None

    # -- requests ------------------------------------------------------------------------

    def _process(self) -> None:
        while not self._busy and not self._gone:
            buf = self._buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD or (buf and not buf.startswith(b"GET "[: len(buf)])):
                    self._handoff("not_fast")  # aiohttp applies its own limits and errors
                return
            if end > MAX_HEAD:
                self._handoff("limits")  # aiohttp applies its own limits and errors
                return
            req = self._parse(bytes(buf[:end]))
            if req is None:
                return  # handed off
            key, range_value = req
            entry = self._index.get(key, time.monotonic())
            if entry is None:
                self._busy = True
                self._pause()
                self._task = asyncio.ensure_future(self._lookup(key))
                return
            if not self._respond(entry, range_value, end + 4):
                return

    def _parse(self, head: bytes) -> tuple[tuple[str, str], str | None] | None:
        lines = head.split(b"\r\n")
        m = _REQUEST_LINE.fullmatch(lines[0])
        if m is None:
            self._handoff("not_fast")
            return None
        range_value: str | None = None
        auth = cookie = b""
        if len(lines) - 1 > MAX_HEADERS:
            self._handoff("limits")  # aiohttp's 400 for too many headers
            return None
        for line in lines[1:]:
            if len(line) > MAX_FIELD_SIZE:  # name + value may be over aiohttp's limit
                self._handoff("limits")
                return None
            name, sep, value = line.partition(b":")
            # No obs-fold, no whitespace before the colon, no bare LF: aiohttp judges those.
            if not sep or not name or name != name.strip() or b"\n" in line or b"\r" in line:
                self._handoff("not_fast")
                return None
            lname = name.lower()
            value = value.strip(b" \t")
            if lname in _NOT_FAST:
                self._handoff("conditional_or_body")
                return None
            if lname == b"range":
                if range_value is not None:
                    self._handoff("several_ranges")
                    return None
                range_value = value.decode("latin-1")
            elif lname == b"connection" and value.lower() != b"keep-alive":
                self._handoff("connection")
                return None
            elif lname == b"authorization":
                auth = value
            elif lname == b"cookie":
                cookie = value
        if self._policy.required and not self._authorised(auth, cookie):
            self._handoff("auth")  # aiohttp answers 401 with the usual body
            return None
        return (m.group(1).decode().lower(), m.group(2).decode()), range_value

    def _authorised(self, auth: bytes, cookie: bytes) -> bool:
        session = None
        for part in cookie.decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE_NAME:
                session = value.strip('"')
        return bool(self._policy.credentials(auth.decode("latin-1"), session))

    async def _lookup(self, key: tuple[str, str]) -> None:
        try:
            entry = await self._index.load(key)
        except Exception as exc:  # the store failed: aiohttp's path will say so
            log.warning("fast_path_lookup_failed", error=repr(exc))
            entry = None
        self._busy = False
        if self._gone:
            return
        if entry is None:
            self._handoff("unknown_recording")
            return
        self._resume()
        self._process()

    def _respond(self, entry: _File, range_value: str | None, consumed: int) -> bool:
        """Send one response; False when the connection was handed off instead."""
        size = entry.size
        start, end, status = 0, size - 1, b"200 OK"
        if range_value is not None:
            result = parse_range(range_value, size)
            if result.kind is RangeKind.SATISFIABLE:
                if len(result.ranges) != 1:
                    self._handoff("multipart")
                    return False
                (start, end), status = result.ranges[0], b"206 Partial Content"
            elif result.kind is RangeKind.UNSATISFIABLE:
                self._handoff("unsatisfiable")
                return False
        del self._buf[:consumed]
        length = end - start + 1
        head = [b"HTTP/1.1 ", status, b"\r\n", entry.fixed, _date_header()]
        if range_value is not None and status[2] == 54:  # 206
            head.append(b"Content-Range: bytes %d-%d/%d\r\n" % (start, end, size))
        head.append(b"Content-Length: %d\r\n\r\n" % length)
        (_FAST_206 if status[2] == 54 else _FAST_200).inc()
        entry.users += 1
        self._send = (entry, b"".join(head), start, length)
        self._pump()
        return True

    # -- sending -------------------------------------------------------------------------

    def _pump(self) -> None:
        """Push the current response until done or the socket is full."""
        assert self._send is not None
        entry, head, offset, left = self._send
        try:
            while head:
                head = head[os.write(self._fd, head):]
            while left:
                sent = os.sendfile(self._fd, entry.fd, offset, left)
                if sent == 0:  # the file shrank under us: the length we promised is a lie
                    log.warning("fast_path_file_shrank", size=entry.size)
                    self._abort()
                    return
                offset += sent
                left -= sent
        except BlockingIOError:
            self._send = (entry, head, offset, left)
            self._wait_writable()
            return
        except OSError:  # reset, broken pipe: the client went away (players do on seek)
            self._abort()
            return
        self._finish_send()
        self.last_active = time.monotonic()  # the next head's wait starts now
        if self._busy:
            self._busy = False
            self._resume()
            self._process()
        if self._eof and not self._busy and self._transport is not None:
            self._transport.close()

    def _wait_writable(self) -> None:
        loop = asyncio.get_running_loop()
        if self._wsock is None:
            self._wsock = socket.socket(fileno=os.dup(self._fd))
        self._busy = True
        self._pause()
        loop.add_writer(self._wsock.fileno(), self._writable)

    def _writable(self) -> None:
        if self._wsock is not None:
            asyncio.get_running_loop().remove_writer(self._wsock.fileno())
        if self._send is not None and not self._gone:
            self._pump()

    def _finish_send(self) -> None:
        if self._send is not None:
            entry = self._send[0]
            self._send = None
            self._index.release(entry)

    def _abort(self) -> None:
        self._finish_send()
        if self._transport is not None:
            self._transport.abort()

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    # -- handing over ----------------------------------------------------------------------

    def _handoff(self, why: str) -> None:
        """From now on aiohttp owns the connection, starting with what we have not used."""
        transport = self._transport
        if transport is None or self._gone:
            return
        HANDOFFS.labels(why=why).inc()
        self._gone = True  # for this object; the connection lives on
        self._live.discard(self)
        if self._wsock is not None:
            self._wsock.close()
            self._wsock = None
        handler = self._factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        self._resume()
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            handler.data_received(data)

    def close_if_idle(self, now: float, idle_s: float) -> None:
        """Close the connection when no whole head came ``idle_s`` after the wait began
        (a slow head, or an idle keep-alive connection)."""
        if not self._busy and not self._gone and now - self.last_active > idle_s:
            TIMEOUTS.labels(phase="head" if self._buf else "idle").inc()
            self.close()

    def close(self) -> None:
        """Close the connection (shutdown, idle)."""
        if self._transport is not None:
            self._transport.close()


class FastSite(TCPSite):
    """aiohttp's TCP site with :class:`FrontProtocol` in front of the app's handler."""

    def __init__(self, runner: BaseRunner, host: str, port: int, *, index: RecordingIndex,
                 policy: AuthPolicy, guard: HttpGuard, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._index = index
        self._policy = policy
        self._guard = guard
        self._live: set[FrontProtocol] = guard.front

    async def start(self) -> None:
        # TCPSite.start with the factory wrapped; the runner's bookkeeping is the base's.
        await super(TCPSite, self).start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        aiohttp_factory: Callable[[], asyncio.Protocol] = server
        self._guard.server = server
        guard = self._guard
        self._server = await loop.create_server(
            lambda: FrontProtocol(aiohttp_factory, self._index, self._policy, self._live, guard),
            self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        self._guard.start()  # its sweep closes slow heads here and in aiohttp's bodies

    async def stop(self) -> None:
        self._guard.stop()
        await super().stop()
        for proto in list(self._live):
            proto.close()
        self._index.close()


def fast_site(app: web.Application, runner: BaseRunner, host: str, port: int,
              *, guard: HttpGuard | None = None, **kwargs: Any) -> TCPSite:
    """The site for ``app``: with the fast path when the app serves recordings; either way
    behind ``guard`` (default: the limits of a default config)."""
    guard = guard or HttpGuard(http_limits())
    index = app.get(FAST_INDEX)
    policy = app.get(AUTH_KEY)
    if index is None or policy is None:
        return GuardedSite(runner, host, port, guard=guard, **kwargs)
    # Files the index keeps open count against the HTTP side's descriptors.
    index.max_entries = min(index.max_entries, max(1, guard.limits.index_files))
    return FastSite(runner, host, port, index=index, policy=policy, guard=guard, **kwargs)
