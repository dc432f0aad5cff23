"""The asyncio TCP server: one :class:`Connection` per AudioSocket call.

Built on ``asyncio.Protocol`` rather than streams: a thousand calls at 50 frames a second
each is 50,000 reads a second, and the callback style saves a task switch per read.

Life of a connection: wait for the UUID (a connection that closes or times out before it is
a logged non-call); register the call on the shared clock at once (Asterisk hangs up after
2 s without a frame); learn the call's rate from the first audio frame (or assume 8 kHz
after a short probe) and spot the μ-law trap; start the app; route frames; end the call with
exactly one reason. Those decisions are the sans-I/O machine's (``call_state.py``): the
connection feeds it frames, timer expiries and requests, and executes the actions it returns
(timers, metrics, logs, the session). A call in the steady state is handed to the clock's C
media path and back (``_attach_native``; docs/discussion/media-path.md).

This module is the listener, the once-a-second limits sweep and shutdown; each connection
is a :class:`~audiosocket.connection.Connection` (the adapter, the fast path and the C
glue). The server knows an app only as the :class:`~audiosocket.hooks.AppFactory` the
composition root gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as _uuid
from typing import TYPE_CHECKING, Protocol

import structlog

from audiosocket import metrics
from audiosocket.call import Call, CallIds
from audiosocket.clock import NATIVE_AVAILABLE, TICKS_PER_SECOND, Clock
from audiosocket.connection import LINGER_S, Connection
from audiosocket.hooks import AppFactory
from audiosocket.peerlog import PeerLogLimit
from audiosocket.playout import ClipFrames

if TYPE_CHECKING:
    from audiosocket.config import Config

__all__ = ["HEALTH_MAX_LAG_S", "AudioSocketServer", "CallObserver", "Connection"]

log = structlog.get_logger("audiosocket.server")

SessionFactory = AppFactory

#: ``/healthz`` fails when the 20 ms clock runs more than this behind: a load balancer
#: (asterisk/haproxy.cfg) then stops sending calls here and cuts the ones it holds, which
#: are hearing silence or garbage anyway.
HEALTH_MAX_LAG_S = 1.0

class CallObserver(Protocol):
    """Something that follows calls without being an app (the call store, for one).

    Both methods run on the event loop and must not block.
    """

    def call_started(self, call: Call) -> None: ...

    def call_ended(self, call: Call) -> None: ...

def _never(call_id: str) -> bool:
    return False


class AudioSocketServer:
    """Accepts AudioSocket connections and runs one session per call on a shared clock."""

    def __init__(
        self,
        config: Config,
        session_factory: SessionFactory,
        *,
        app_name: str = "app",
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.session_factory = session_factory
        self.app_name = app_name
        self.loop = asyncio.get_event_loop()
        def ticks(seconds: float) -> int:
            return max(1, round(seconds * TICKS_PER_SECOND))

        self.clock = clock or Clock(
            loop=self.loop, block_ticks=ticks(config.media_block_s),
            quiet_block_ticks=ticks(config.media_block_quiet_s),
            tape_read_ticks=ticks(config.media_read_ms / 1000),
        )
        #: Frames of the prompts every call plays, made once (see ClipFrames).
        self.clip_frames = ClipFrames()
        self.calls: dict[str, Connection] = {}
        self.connections: set[Connection] = set()
        #: Set while no connection is open (shutdown waits on it for lingering closes).
        self.no_connections = asyncio.Event()
        self.no_connections.set()
        self.finishing: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.observers: list[CallObserver] = []
        #: Ids of this process's calls; the call store's observer knows the older ones.
        self.call_ids = CallIds()
        self.peer_log = PeerLogLimit()
        #: ``starting`` → ``serving`` → ``draining`` (SIGTERM: listener closed, calls
        #: finishing) → ``stopped``; what :meth:`health` reports.
        self.state = "starting"

    def id_taken(self, call_id: str) -> bool:
        """Whether an earlier call had this id: in this process, or as an observer with an
        ``id_taken`` method (the call store's) knows."""
        if call_id in self.calls or call_id in self.call_ids:
            return True
        return any(
            getattr(observer, "id_taken", _never)(call_id) for observer in self.observers
        )

    def uuid_live(self, call_uuid: _uuid.UUID) -> bool:
        """Whether a call that has not ended arrived with this AudioSocket UUID."""
        return any(
            conn.call is not None and not conn.call.ended and conn.call.uuid == call_uuid
            for conn in self.calls.values()
        )

    def notify(self, event: str, call: Call) -> None:
        """Tell observers; one failing observer never breaks a call."""
        for observer in self.observers:
            try:
                getattr(observer, event)(call)
            except Exception as exc:
                log.exception("observer_failed", observer=type(observer).__name__,
                              event=event, error=str(exc))

    def health(self) -> tuple[bool, dict[str, object]]:
        """``/healthz`` from the call loop's point of view: (healthy, JSON body).

        Runs on the loop, so a frozen loop answers nothing (a load balancer's check times
        out); a loop that answers but whose clock lags over :data:`HEALTH_MAX_LAG_S` fails
        with ``reason: clock_lag``. While draining after SIGTERM it stays healthy until the
        calls end: a failing check would make HAProxy cut the calls still finishing here.
        """
        calls = len(self.calls)
        if self.state in ("starting", "stopped"):
            return False, {"status": self.state, "reason": f"server_{self.state}",
                           "calls": calls}
        lag = self.clock.lag()
        if lag > HEALTH_MAX_LAG_S:
            return False, {"status": "lagging", "reason": "clock_lag",
                           "lag_s": round(lag, 3) if lag != float("inf") else None,
                           "calls": calls}
        status = "ok" if self.state == "serving" else self.state
        return True, {"status": status, "calls": calls, "lag_ms": round(lag * 1000, 1)}

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def connection_opened(self, conn: Connection) -> None:
        """A connection was accepted (its ``connection_made``)."""
        self.connections.add(conn)
        self.no_connections.clear()

    def connection_closed(self, conn: Connection) -> None:
        """A connection is gone (its ``connection_lost``)."""
        self.connections.discard(conn)
        if not self.connections:
            self.no_connections.set()

    async def start(self) -> None:
        """Bind, start the clock and the once-a-second housekeeping."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: Connection(self), self.config.host, self.config.port,
            reuse_address=True, backlog=4096,
        )
        self.clock.start()
        self._sweeper = self.loop.create_task(self._sweep_forever())
        self.state = "serving"
        log.info(
            "listening", host=self.config.host, port=self.port, app=self.app_name,
            media_path="native" if NATIVE_AVAILABLE and self.config.native_media else "python",
        )

    async def _sweep_forever(self) -> None:
        # Each call is swept once a second, but in 50 slices, one every 20 ms: a whole pass
        # over 1000 calls takes ~10 ms here, and in one piece it made every call's next
        # frame that late once a second (the p99 outbound gap at 1000 calls).
        slices = 50
        while True:
            conns = list(self.calls.values())
            step = -(-len(conns) // slices) if conns else 0
            for i in range(slices):
                await asyncio.sleep(1.0 / slices)
                if step:
                    self.sweep(conns[i * step : (i + 1) * step])

    def sweep(self, conns: list[Connection] | None = None) -> None:
        """Enforce duration, inactivity and write-stall limits; flush frame metrics (for
        ``conns``, or every call)."""
        now = self.loop.time()
        mono = time.monotonic()
        cfg = self.config
        for conn in list(self.calls.values()) if conns is None else conns:
            call = conn.call
            if call is None or call.ended:
                continue
            conn.flush_metrics()
            if mono - call.started_monotonic > cfg.max_duration_s:
                conn.end("max_duration")
                continue
            transport = conn.transport
            backlog = transport.get_write_buffer_size() if transport is not None else 0
            if transport is not None and backlog > cfg.write_buffer_max_bytes:
                metrics.WRITE_STALLS.inc()
                conn.end("write_stalled", send_hangup=False)
                if not transport.is_closing():
                    transport.abort()
                continue
            # Inactivity: the peer sent nothing AND we have sent nothing but silence for the
            # whole window. A quiet caller listening to a prompt is alive. Inbound activity
            # is read from the frame counters here, once a second, not timed per frame.
            seen = call.frames_in + call.dtmf_in
            if seen != conn._seen_in:
                conn._seen_in = seen
                conn.last_in = now
            sent = call.playout.audio_frames_sent
            if sent != conn._seen_out:
                conn._seen_out = sent
                conn.last_out = now
            if (
                now - conn.last_in > cfg.inactivity_timeout_s
                and now - conn.last_out > cfg.inactivity_timeout_s
                and call.playout.idle
            ):
                conn.end("inactivity")

    async def shutdown(self, grace: float | None = None, finish_s: float = 5.0) -> None:
        """Stop accepting, let calls finish for ``grace`` seconds, then hang up the rest and
        give their end-of-call work (recording close, job submit) ``finish_s`` more.

        The listener closes first, so a new connection is refused at once (HAProxy retries
        it on another server, ``Dial(AudioSocket/...)`` gets CHANUNAVAIL and the dialplan
        tries the next); :meth:`health` stays healthy while the calls finish.
        """
        grace = self.config.shutdown_grace_s if grace is None else grace
        self.state = "draining"
        if self._server is not None:
            self._server.close()
        log.info("shutting_down", active=len(self.calls), grace=grace)
        for conn in list(self.connections):
            if conn.call is None:
                conn.end("shutdown")  # not a call yet: a hang-up frame and close
        waits = [
            self.loop.create_task(conn.call.closed.wait())
            for conn in self.calls.values()
            if conn.call is not None
        ]
        if waits:
            _, still = await asyncio.wait(waits, timeout=grace)
            for task in still:
                task.cancel()
        for conn in list(self.calls.values()):
            conn.end("shutdown")
        if self.finishing:
            await asyncio.wait(list(self.finishing), timeout=finish_s)
        # The last hang-ups are lingering closes (connection.py): give the peers their
        # usual time to close, so the frames still queued reach them, then cut the rest.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_S):
                await self.no_connections.wait()
        for conn in list(self.connections):
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.clock.stop()
        self.state = "stopped"
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
        log.info("stopped")
