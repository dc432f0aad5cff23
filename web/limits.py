"""Limits of the HTTP port, and the open-file budget that keeps calls alive when it is flooded.

Calls and the portal share one process and so one open-file limit. Without limits on the
HTTP side, idle or slow connections (a slowloris, or a flood that sends ``G`` and stops)
hold a descriptor each until the limit is reached; after that every new AudioSocket call
is accepted and dropped at once. So:

* **Timeouts** (both serving paths): a request head must be whole ``head_timeout_s`` after
  the connection opened or the previous response ended (this is also the keep-alive idle
  time); a body must arrive within ``body_timeout_s`` plus one second per
  ``body_min_rate`` bytes (a slow upload on a real link passes, one byte a second does not).
* **A connection cap**, ``max_connections``: a connection beyond it gets a ``503`` and is
  closed at once, without reading it; so does one that landed on a descriptor inside the
  calls' reserve (``fd_ceiling``). Each is counted; a flood is logged and counted once.
* **The open-file budget**: at start-up the soft ``RLIMIT_NOFILE`` is raised to the hard
  limit (:func:`raise_nofile_limit`), and the HTTP side gets only what calls leave::

      calls_fds  = BASE_FDS + FDS_PER_CALL × max_calls
      http_fds   = max(soft − calls_fds, soft // 4)
      index      = min(512, http_fds // 4)            recordings the fast path keeps open
      max_connections = clamp((http_fds − index) // FDS_PER_HTTP, 16, 4096)
      fd_ceiling = soft − min(128, soft // 8)         no HTTP connection on a descriptor above

  ``BASE_FDS`` (256) covers what the process holds whatever the load: listening sockets,
  the event loop, the store's SQLite files, logs, model files, FFmpeg pipes. A call holds
  its socket and, while the writer thread flushes it, its recording (``FDS_PER_CALL`` 2);
  an HTTP connection its socket and a file or a ``dup`` of the socket while it sends
  (``FDS_PER_HTTP`` 2). When the limit cannot hold ``max_calls`` the HTTP side still gets a
  quarter of it, and a warning says how many calls fit.

The request-head limits are aiohttp's own (its parser's defaults in 3.14, given to it
explicitly), and the fast path hands any head that comes near them to aiohttp, so the same
request gets the same status on both paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_runner import BaseRunner, TCPSite
from prometheus_client import Counter

__all__ = [
    "MAX_FIELD_SIZE", "MAX_HEADERS", "MAX_LINE_SIZE", "FdBudget", "GuardedSite", "HttpGuard",
    "HttpLimits", "fd_budget", "http_limits", "raise_nofile_limit",
]

log = structlog.get_logger("audiosocket.web")

# aiohttp 3.14's request parser (aiohttp/_http_parser.pyx): the request target at most
# max_line_size bytes, a header's name + value at most max_field_size, at most max_headers.
MAX_LINE_SIZE: Final = 8190
MAX_FIELD_SIZE: Final = 8190
MAX_HEADERS: Final = 128

BASE_FDS: Final = 256
FDS_PER_CALL: Final = 2
FDS_PER_HTTP: Final = 2
FD_HEADROOM: Final = 128
MIN_CONNECTIONS: Final = 16
MAX_CONNECTIONS: Final = 4096
FAST_INDEX_FILES: Final = 512
#: A flood is over after this long without a refused connection (then it is logged again).
FLOOD_QUIET_S: Final = 10.0

HEAD_TIMEOUT_S: Final = 10.0
BODY_TIMEOUT_S: Final = 60.0
BODY_MIN_RATE: Final = 1024

REFUSED = Counter("audiosocket_http_connections_refused_total",
                  "HTTP connections closed at accept (over max_connections, or on a "
                  "descriptor kept for calls)", ["reason"])
FLOODS = Counter("audiosocket_http_floods_total",
                 "Episodes of refused HTTP connections (one per flood, however many)")
TIMEOUTS = Counter("audiosocket_http_timeouts_total",
                   "HTTP connections closed for a slow request head (or idle keep-alive, "
                   "fast path) or a slow body", ["phase"])

# Written to a refused connection before closing it: a client (or a health checker) gets an
# answer instead of a bare reset; nothing of the request is read.
_REFUSAL: Final = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                   b"Retry-After: 1\r\nContent-Length: 0\r\n\r\n")


def _soft_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


@dataclass(frozen=True)
class FdBudget:
    """How the open-file limit is shared (see the module docstring for the formula)."""

    soft: int
    max_connections: int
    index_files: int
    fd_ceiling: int
    calls_fit: int


def fd_budget(soft: int, max_calls: int, max_connections: int = 0) -> FdBudget:
    """The HTTP side's share of ``soft`` descriptors; ``max_connections`` > 0 overrides."""
    http_fds = max(soft - BASE_FDS - FDS_PER_CALL * max_calls, soft // 4)
    index = min(FAST_INDEX_FILES, http_fds // 4)
    derived = min(max((http_fds - index) // FDS_PER_HTTP, MIN_CONNECTIONS), MAX_CONNECTIONS)
    cap = max_connections if max_connections > 0 else derived
    used = min(http_fds, cap * FDS_PER_HTTP + index)
    return FdBudget(soft, cap, index, soft - min(FD_HEADROOM, soft // 8),
                    max(0, (soft - BASE_FDS - used) // FDS_PER_CALL))


def raise_nofile_limit(max_calls: int = 0) -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one and log both; returns (soft, hard).

    Called once at start-up of ``audiosocket serve``. The default soft limit (often 1024)
    is far below what a thousand calls and a busy portal need, and the hard limit is what
    the administrator allows; a process may raise its soft limit up to it unprivileged.
    """
    was, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = (1 << 20) if hard == resource.RLIM_INFINITY else hard
    soft = was
    if was != resource.RLIM_INFINITY and target > was:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("nofile_limit_not_raised", soft=was, hard=hard, error=str(exc))
    log.info("nofile_limit", soft=soft, hard=hard, was=was)
    if max_calls:
        budget = fd_budget(_soft_limit(), max_calls)
        if budget.calls_fit < max_calls:
            log.warning("nofile_limit_short", soft=budget.soft, max_calls=max_calls,
                        calls_fit=budget.calls_fit)
    return _soft_limit(), hard


@dataclass(frozen=True)
class HttpLimits:
    """What the HTTP port enforces (from ``[web]`` and the open-file budget)."""

    max_connections: int
    fd_ceiling: int
    index_files: int
    head_timeout_s: float = HEAD_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    body_min_rate: int = BODY_MIN_RATE

    def handler_options(self) -> dict[str, Any]:
        """aiohttp's request handler options: its keep-alive close is our head timeout
        (it closes a connection still waiting for a whole head that long after the
        connection opened or the last response ended), and the head limits."""
        return {"keepalive_timeout": self.head_timeout_s, "max_line_size": MAX_LINE_SIZE,
                "max_field_size": MAX_FIELD_SIZE, "max_headers": MAX_HEADERS}


def http_limits(config: Any = None, soft: int | None = None) -> HttpLimits:
    """The limits for ``config`` (a :class:`audiosocket.config.Config`; None: defaults)."""
    web_cfg = getattr(config, "web", None)
    head = float(getattr(web_cfg, "head_timeout_s", HEAD_TIMEOUT_S))
    body = float(getattr(web_cfg, "body_timeout_s", BODY_TIMEOUT_S))
    rate = int(getattr(web_cfg, "body_min_rate", BODY_MIN_RATE))
    for key, value in (("head_timeout_s", head), ("body_timeout_s", body),
                       ("body_min_rate", rate)):
        if value <= 0:
            raise ValueError(f"web.{key}: must be more than 0")
    budget = fd_budget(_soft_limit() if soft is None else soft,
                       int(getattr(config, "max_calls", 2000)),
                       int(getattr(web_cfg, "max_connections", 0)))
    return HttpLimits(budget.max_connections, budget.fd_ceiling, budget.index_files,
                      head, body, rate)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpGuard:
    """One per HTTP site: admits connections, enforces the timeouts, tells floods apart."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.server: Any = None  # aiohttp's Server once the runner is set up
        #: Connections the fast path still owns (objects with ``close_if_idle``).
        self.front: set[Any] = set()
        # id(request) -> (request, when its handler started); requests are not hashable
        self._bodies: dict[int, tuple[web.BaseRequest, float]] = {}
        self._flood_start = 0.0
        self._flood_last = 0.0
        self._flood_refused = 0
        self._sweeper: asyncio.Task[None] | None = None

    def open_connections(self) -> int:
        """HTTP connections now open: the fast path's and aiohttp's."""
        n = len(self.front)
        if self.server is not None:
            n += len(self.server.connections)
        return n

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Whether a just-accepted connection may stay; if not, answer 503 and close it."""
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        # Descriptors are allocated lowest first, so a socket at or above the ceiling means
        # every descriptor below it is in use: the rest are for calls and the store.
        if fd >= self.limits.fd_ceiling:
            reason = "fd_reserve"
        elif self.open_connections() >= self.limits.max_connections:
            reason = "max_connections"
        else:
            return True
        self._refused(reason, fd)
        with contextlib.suppress(Exception):
            transport.write(_REFUSAL)  # type: ignore[attr-defined]
        transport.close()
        return False

    def _refused(self, reason: str, fd: int) -> None:
        REFUSED.labels(reason=reason).inc()
        now = time.monotonic()
        if not self._flood_refused:  # logged once per flood, not per connection
            FLOODS.inc()
            self._flood_start = now
            log.warning("http_flood", reason=reason, open=self.open_connections(),
                        max_connections=self.limits.max_connections, fd=fd,
                        fd_ceiling=self.limits.fd_ceiling)
        self._flood_refused += 1
        self._flood_last = now

    def body_middleware(self) -> Middleware:
        """A middleware that puts a request's body under the sweep's deadline."""

        @web.middleware
        async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.body_exists or request.content.is_eof():
                return await handler(request)
            self._bodies[id(request)] = (request, time.monotonic())
            try:
                return await handler(request)
            finally:
                self._bodies.pop(id(request), None)

        return body_deadline

    def start(self) -> None:
        """Start the sweep (closes slow heads and bodies, ends floods)."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        lim = self.limits
        every = max(0.05, min(1.0, lim.head_timeout_s / 4, lim.body_timeout_s / 4))
        while True:
            await asyncio.sleep(every)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """One pass: fast-path heads, bodies, the end of a flood."""
        lim = self.limits
        for proto in list(self.front):
            proto.close_if_idle(now, lim.head_timeout_s)
        for key, (request, since) in list(self._bodies.items()):
            content = request.content
            if content.is_eof():
                del self._bodies[key]
                continue
            if now - since > lim.body_timeout_s + content.total_bytes / lim.body_min_rate:
                del self._bodies[key]
                TIMEOUTS.labels(phase="body").inc()
                # Cancelling the connection's task is aiohttp's own quiet way to drop a
                # request (what it does when a client goes away): the handler's cleanup
                # runs, the connection is closed, and no traceback is logged.
                request.task.cancel()
        if self._flood_refused and now - self._flood_last > FLOOD_QUIET_S:
            log.info("http_flood_over", refused=self._flood_refused,
                     seconds=round(self._flood_last - self._flood_start, 1))
            self._flood_refused = 0


class _Gate(asyncio.Protocol):
    """In front of aiohttp's handler for one connection: admit it, then step aside."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], guard: HttpGuard) -> None:
        self._factory = factory
        self._guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(transport):
            return
        handler = self._factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)


class GuardedSite(TCPSite):
    """aiohttp's TCP site with the connection cap (the site when there is no fast path)."""

    def __init__(self, runner: BaseRunner, host: str, port: int, *, guard: HttpGuard,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._guard = guard

    async def start(self) -> None:
        # TCPSite.start with the factory wrapped; the runner's bookkeeping is the base's.
        await super(TCPSite, self).start()
        server = self._runner.server
        assert server is not None
        self._guard.server = server
        factory: Callable[[], asyncio.Protocol] = server
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Gate(factory, self._guard), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        self._guard.start()

    async def stop(self) -> None:
        self._guard.stop()
        await super().stop()
