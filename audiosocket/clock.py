"""One 20 ms clock for all calls; it drains the per-call playouts (``playout.py``).

Asterisk does not pace what we send: five seconds written at once arrive downstream at once
and are mostly lost. So outbound audio leaves only on this clock's ticks: frame ``k`` of the
clock is due at ``t0 + k * 20 ms`` (absolute deadlines, so scheduling error never
accumulates), and each tick writes exactly one frame per call: audio when some is queued,
silence otherwise (``AudioSocket()`` hangs up after 2 s without a frame).

The clock also gives each call its timeline: ``Playout.ticks`` counts the ticks since the call
was registered, and inbound audio is placed on that timeline by the call, so gaps from a
quiet caller become silence and both directions of a recording stay aligned.

Calls in the steady state can be *attached* as native lines: then ``audiosocket._wire`` (C)
reads and writes them in one call per tick instead of uvloop callbacks and this module's
loop (see ``_wire.c`` and ``Connection._attach_native``). Anything out of the ordinary comes
back as an event and the line returns to the Python path here.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from typing import Protocol

import structlog

from audiosocket import metrics, native
from audiosocket.native import LINE
from audiosocket.playout import (
    Playback,
    Playout,
    TickListener,
    Transport,
)
from audiosocket.protocol import FRAME_MS

#: The C media path was built and can be used.
NATIVE_AVAILABLE = native.AVAILABLE

#: Ticks of the 20 ms clock in a second: the once-a-second work is spread over them.
TICKS_PER_SECOND = 1000 // FRAME_MS

__all__ = [
    "NATIVE_AVAILABLE",
    "TICKS_PER_SECOND",
    "Clock",
    "NativeOwner",
    "Playback",
    "Playout",
    "TickListener",
    "Transport",
]

class NativeOwner(Protocol):
    """What owns a native line (the server's connection): it takes back what the C path
    does not handle."""

    _native_line: tuple[object, ...] | None

    def _detach_native(self) -> None: ...

    def _native_read_event(self, event: str, payload: object) -> None: ...

    def _drain_tape(self) -> None: ...


class Clock:
    """The shared absolute-deadline tick. Create one per process; ``register`` each call's
    :class:`Playout` when its UUID arrives."""

    def __init__(
        self,
        interval: float = FRAME_MS / 1000,
        *,
        resync_after: float = 0.2,
        block_ticks: int = 2 * TICKS_PER_SECOND,
        quiet_block_ticks: int | None = None,
        tape_read_ticks: int = 2,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if quiet_block_ticks is None:
            quiet_block_ticks = block_ticks
        if block_ticks < 1 or quiet_block_ticks < 1:
            raise ValueError("block_ticks and quiet_block_ticks must be >= 1")
        if tape_read_ticks not in (1, 2):
            raise ValueError("tape_read_ticks must be 1 or 2")
        self.interval = interval
        #: Ticks between two blocks of one taped line (``media_block_s``), spread evenly.
        self.block_ticks = block_ticks
        #: The same for a quiet line (``media_block_quiet_s``): one the C path wakes at the
        #: caller's first sound, so its tape holds only the caller's digital silence.
        self.quiet_block_ticks = quiet_block_ticks
        #: A taped line's socket is read on every this many ticks (``media_read_ms``): its
        #: audio goes to a tape taken in blocks, so two frames a read halve the recv() calls.
        self.tape_read_ticks = tape_read_ticks
        self.resync_after = resync_after
        self._loop = loop
        self._playouts: dict[int, Playout] = {}
        self._active: list[Playout] = []  # rebuilt on (un)register, not copied every tick
        self._native: dict[int, tuple[object, ...]] = {}  # id(playout) -> its native line
        self._lines: list[tuple[object, ...]] = []  # rebuilt with _active
        self._in_events = False
        self.native_events = 0
        self._flush_order: list[Playout] = []
        # Taped lines by the tick (modulo block_ticks) they get their block on; a line
        # detached meanwhile is dropped from its bucket when the bucket comes round.
        self._blocks: list[list[tuple[object, ...]]] = [[] for _ in range(block_ticks)]
        self._quiet_blocks: list[list[tuple[object, ...]]] = [
            [] for _ in range(quiet_block_ticks)]
        self._handle: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        self._k = 0
        self.ticks = 0
        self.resyncs = 0
        #: Ticks skipped by resyncs (the loop was stalled past ``resync_after``).
        self.skipped_ticks = 0
        self.max_lateness = 0.0
        #: Loop time of the last tick and how late it ran: what ``/healthz`` reads (``lag``).
        self.last_tick = 0.0
        self.last_lateness = 0.0

    def lag(self, now: float | None = None) -> float:
        """How far behind its 20 ms grid the clock is, in seconds: the last tick's lateness,
        or how overdue the next tick is if that is more (a loop too busy to run timers).
        Infinite when the clock is not running."""
        if self._handle is None or self._loop is None:
            return float("inf")
        now = self._loop.time() if now is None else now
        overdue = now - (self._t0 + self._k * self.interval)  # _k: the next tick, scheduled
        return max(self.last_lateness, overdue, 0.0)

    @property
    def running(self) -> bool:
        return self._handle is not None

    def __len__(self) -> int:
        return len(self._playouts)

    def register(self, playout: Playout) -> None:
        """Start sending on this call from the next tick on."""
        self._playouts[id(playout)] = playout
        self._rebuild()

    def unregister(self, playout: Playout) -> None:
        """Stop sending on this call."""
        if self._playouts.pop(id(playout), None) is not None:
            line = self._native.pop(id(playout), None)
            self._rebuild()
            self._count(playout)
            if line is not None:
                owner: NativeOwner = line[LINE.OWNER]  # type: ignore[assignment]
                owner._detach_native()

    @property
    def native_lines(self) -> int:
        """Calls the C path currently reads and writes."""
        return len(self._lines)

    def attach(self, line: tuple[object, ...], *, quiet: bool = False) -> bool:
        """Hand a registered call in the steady state to the C path (``_wire.pump``).
        ``quiet``: the line wakes at the caller's first sound (its tape then holds only
        digital silence from the caller), so its blocks come every ``quiet_block_ticks``."""
        playout: Playout = line[LINE.PLAYOUT]  # type: ignore[assignment]
        key = id(playout)
        if (
            not NATIVE_AVAILABLE or self._in_events or key not in self._playouts
            or key in self._native
        ):
            return False
        self._native[key] = line
        self._rebuild()
        if line[LINE.TAPE] is not None:
            # The emptiest bucket: a thousand lines attached in one tick (back from a
            # stall) are spread over the ticks, not drained in one. Any bucket comes round
            # within block_ticks, so a line's first block is no later than its next ones.
            min(self._quiet_blocks if quiet else self._blocks, key=len).append(line)
        return True

    def detach(self, line: tuple[object, ...]) -> None:
        """Take a call back from the C path (its next frames go through the Python loop)."""
        key = id(line[LINE.PLAYOUT])
        if self._native.get(key) is line:
            del self._native[key]
            self._rebuild()

    def _rebuild(self) -> None:
        native = self._native
        if native:
            self._active = [p for k, p in self._playouts.items() if k not in native]
        else:
            self._active = list(self._playouts.values())
        self._lines = list(native.values())

    def start(self) -> None:
        """Begin ticking on the running loop."""
        if self._handle is not None:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._k = 0
        self._schedule()

    def stop(self) -> None:
        """Stop ticking; registered calls get no more frames."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._flush_metrics()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._k += 1
        self._handle = self._loop.call_at(self._t0 + self._k * self.interval, self._on_tick)

    def _on_tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        deadline = self._t0 + self._k * self.interval
        lateness = now - deadline
        advance = 1
        if lateness > self.resync_after:
            # Bursting the missed ticks would dump them on Asterisk at once, which it does
            # not pace; skip them instead, keeping the grid of deadlines.
            skipped = int(lateness / self.interval)
            self._k += skipped
            advance += skipped
            self.skipped_ticks += skipped
            self.resyncs += 1
            metrics.CLOCK_RESYNCS.inc()
        lateness = max(lateness, 0.0)
        self.last_tick = now
        self.last_lateness = lateness
        if lateness > self.max_lateness:
            self.max_lateness = lateness
        metrics.TICK_LATENESS.observe(lateness)
        started = time.perf_counter()
        # Taken before the pump: a line it hands back has had this tick's frame already.
        active = self._active
        if self._lines:
            self._pump(advance)
        for playout in active:
            try:
                if playout.plain and advance == 1:
                    # Playout.tick's common case inlined: a Python call per call per tick
                    # is a measurable share of a core at a thousand calls. In this state
                    # sent_total == ticks (no lead), so one frame keeps them equal.
                    frames = playout._frames
                    if frames:
                        if len(frames) > playout._cap:
                            playout.tick()  # the live target or the bound: the general path
                            continue
                        playout.transport.write(frames.popleft())
                        playout._sent_seq += 1
                        playout.audio_frames_sent += 1
                        if playout._gap:
                            playout._end_gap()
                    else:
                        playout.transport.write(playout._silence)
                        playout._gap += 1
                    playout.ticks += 1
                    playout.sent_total += 1
                else:
                    playout.tick(advance)
            except Exception as exc:
                # One broken transport must not stop the tick for every other call.
                self._failed(playout, exc)
        self.ticks += 1
        self._flush_slice()
        metrics.TICK_DURATION.observe(time.perf_counter() - started)
        self._schedule()

    def _pump(self, advance: int) -> None:
        """Run the C path over the native lines, then hand back what it did not handle."""
        try:
            events = native.pump(self._lines, advance)
        except Exception as exc:
            # A bug there must not stop the clock: every line returns to the Python path.
            structlog.get_logger("audiosocket.clock").exception(
                "native_pump_failed", error=str(exc) or type(exc).__name__
            )
            metrics.NATIVE_EVENTS.labels(event="pump_failed").inc()
            for line in list(self._native.values()):
                line[LINE.OWNER]._detach_native()  # type: ignore[attr-defined]
            return
        if not events:
            return
        self._in_events = True
        try:
            for line, code, payload in events:
                self._native_event(line, code, payload, advance)
        finally:
            self._in_events = False

    def _native_event(
        self, line: tuple[object, ...], code: int, payload: object, advance: int
    ) -> None:
        self.native_events += 1
        name = native.EVENT_NAMES.get(code, str(code))
        metrics.native_event(name).inc()
        owner: NativeOwner = line[LINE.OWNER]  # type: ignore[assignment]
        playout: Playout = line[LINE.PLAYOUT]  # type: ignore[assignment]
        if name == "mark":
            # A playback's frame went out: resolve it here; the line stays on the C path.
            playout.sync_counters()
            playout._resolve_marks()
            return
        if owner._native_line is line:
            owner._detach_native()
        if name == "slow_tick":
            if id(playout) in self._playouts:
                try:
                    playout.tick(advance)
                except Exception as exc:
                    self._failed(playout, exc)
        elif name == "short_write":
            try:
                playout.transport.write(payload)  # type: ignore[arg-type]
            except Exception as exc:
                self._failed(playout, exc)
        elif name == "send_error":
            errno_ = int(payload)  # type: ignore[call-overload]
            if errno_ not in (errno.EPIPE, errno.ECONNRESET):
                self._failed(playout, OSError(errno_, os.strerror(errno_)))
            # The peer hung up: reading resumed, so the transport meets the reset itself
            # and the call ends as on the Python path (remote_reset), without a warning.
        else:
            owner._native_read_event(name, payload)

    def _failed(self, playout: Playout, exc: Exception) -> None:
        structlog.get_logger("audiosocket.clock").warning(
            "playout_write_failed", error=str(exc) or type(exc).__name__
        )
        self.unregister(playout)

    def _count(self, playout: Playout) -> None:
        playout.sync_counters()
        n = playout.sent_total - playout.metric_sent
        if n:
            playout.metric_sent = playout.sent_total
            metrics.frames_out(playout.kind).inc(n)

    def _flush_slice(self) -> None:
        """Frames-out counts for 1/50 of the calls per tick, so each once a second: in one
        piece, 1000 calls made one tick a second ~2 ms longer, late for every call. Each taped
        line hands its app a block once every ``block_ticks``, its bucket's turn."""
        slot = self.ticks % TICKS_PER_SECOND
        if slot == 0:
            self._flush_order = list(self._playouts.values())
            metrics.NATIVE_LINES.set(len(self._lines))
        order = self._flush_order
        step = -(-len(order) // TICKS_PER_SECOND)
        for playout in order[slot * step : (slot + 1) * step]:
            if id(playout) in self._playouts:
                self._count(playout)
        # A taped line's audio goes to its app as one block every block_ticks (one Python
        # call where the Python path makes two a frame). Its cost is mostly per block, not
        # per second of audio: at 1000 silent ivr calls a block every 2 s instead of every
        # second saved ~4-5 % of a core (docs/BENCHMARKS.md).
        # A quiet line's block is only the caller's silence and what we sent: a longer
        # one risks no word of the caller's in a crash (media_block_quiet_s).
        self._drain_bucket(self._blocks[self.ticks % self.block_ticks])
        self._drain_bucket(self._quiet_blocks[self.ticks % self.quiet_block_ticks])

    def _drain_bucket(self, bucket: list[tuple[object, ...]]) -> None:
        """Hand each line of ``bucket`` still attached its block (and forget the others)."""
        if bucket:
            native_lines = self._native
            bucket[:] = [line for line in bucket
                         if native_lines.get(id(line[LINE.PLAYOUT])) is line]  # attached
            for line in bucket:
                owner: NativeOwner = line[LINE.OWNER]  # type: ignore[assignment]
                owner._drain_tape()

    def _flush_metrics(self) -> None:
        """Every call's frames-out counts at once (when the clock stops; while it runs,
        ``_flush_slice`` does this a fiftieth per tick)."""
        for playout in self._playouts.values():
            self._count(playout)
        metrics.NATIVE_LINES.set(len(self._lines))
