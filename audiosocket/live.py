"""Calls in progress, for the portal's live view: who is on, where in the IVR, what they said,
and a listen-in tap.

One :class:`LiveHub` per process, made by the composition root (``services.install_live``)
and handed to the sessions (``ctx.services.live``) and to the web app. It is a call observer
(``call_started`` / ``call_ended``), and sessions report IVR nodes and transcript lines
through their :class:`LiveCall`.

Everything here runs on the event loop. Publishing must never slow a call, so:

* an event is appended, as one shared object, to each subscriber's own bounded queue:
  O(subscribers), no encoding, no I/O. A subscriber whose queue is full (a browser that
  stopped reading) is cut off at once and counted; its stream ends and the browser's
  ``EventSource`` reconnects to a fresh snapshot, so a slow reader loses nothing it cannot
  get back, and the call never waits for it.
* the listen-in tap costs one attribute test per frame while nobody listens. With listeners,
  each tick mixes the caller's frame with what we sent and appends it to each listener's
  bounded queue (oldest frames skipped when a listener lags).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np
from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from audiosocket.call import Call

__all__ = ["ListenError", "Listener", "LiveCall", "LiveEvent", "LiveHub", "Subscriber"]

#: Events a subscriber may have waiting; a browser 256 events behind is not reading.
QUEUE_EVENTS: Final = 256
#: Concurrent event-stream subscribers and listen-in listeners (each holds a connection).
MAX_SUBSCRIBERS: Final = 64
MAX_LISTENERS: Final = 8
#: Mixed frames a listener may lag behind (1 s at 20 ms); older ones are skipped.
LISTEN_QUEUE_FRAMES: Final = 50
#: Caller audio held for mixing: more than this (a burst after a network stall) is dropped
#: oldest first, so the listen-in delay stays bounded (DESIGN rule 7).
INBOUND_HOLD_FRAMES: Final = 10
#: Transcript lines a live call keeps for the snapshot (the store has them all).
LINES_KEPT: Final = 50
#: IVR path entries a snapshot shows (a looping flow would otherwise grow it).
PATH_KEPT: Final = 20
#: SSE comment interval: keeps proxies from closing an idle stream.
HEARTBEAT_S: Final = 15.0

SUBSCRIBERS = Gauge("audiosocket_live_subscribers", "Open live-view event streams")
LISTENERS = Gauge("audiosocket_live_listeners", "Open listen-in audio streams")
DROPPED = Counter("audiosocket_live_dropped_total",
                  "Live-view data not delivered to a slow reader: events (a subscriber cut "
                  "off with a full queue) or audio frames (a listener lagging > 1 s)",
                  ["what"])
REFUSED = Counter("audiosocket_live_refused_total",
                  "Live-view streams refused because the cap was reached", ["what"])
_DROPPED_EVENTS = DROPPED.labels(what="events")
_DROPPED_FRAMES = DROPPED.labels(what="audio_frames")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class LiveEvent(NamedTuple):
    """One published change: ``id`` increases by one per event in the process."""

    id: int
    kind: str  # call_started | node | line | call_ended
    data: dict[str, Any]


class ListenError(Exception):
    """Why a listen-in cannot start: ``status`` and ``code`` for the HTTP answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class _Waiter:
    """A bounded queue with a wake-up, read by one coroutine (an HTTP handler)."""

    __slots__ = ("_items", "_wake", "closed", "limit")

    def __init__(self, limit: int) -> None:
        self._items: deque[Any] = deque()
        self._wake = asyncio.Event()
        self.limit = limit
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """End the stream: the reader gets what is queued, then None."""
        self.closed = True
        self._wake.set()

    async def _take(self, timeout: float | None) -> list[Any] | None:
        """Everything queued (``[]`` after ``timeout`` with nothing), None once closed."""
        if not self._items and not self.closed:
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return []
        if not self._items:
            return None if self.closed else []
        items = list(self._items)
        self._items.clear()
        return items


class Subscriber(_Waiter):
    """One event stream's queue. ``overflowed``: it fell behind and was cut off."""

    __slots__ = ("overflowed",)

    def __init__(self, limit: int = QUEUE_EVENTS) -> None:
        super().__init__(limit)
        self.overflowed = False

    def put(self, event: LiveEvent) -> bool:
        """Queue ``event``; False (and closed) when the queue was full."""
        if len(self._items) >= self.limit:
            self.overflowed = True
            self.close()
            return False
        self._items.append(event)
        self._wake.set()
        return True

    async def next(self, timeout: float | None = None) -> list[LiveEvent] | None:
        """The events queued since the last call (``[]`` on timeout); None when the stream
        must end (cut off or shut down): a cut-off stream never delivers a partial tail."""
        if self.overflowed:
            return None
        return await self._take(timeout)


class Listener(_Waiter):
    """One listen-in stream's queue of mixed frames (oldest skipped when it lags)."""

    __slots__ = ("skipped",)

    def __init__(self, limit: int = LISTEN_QUEUE_FRAMES) -> None:
        super().__init__(limit)
        self.skipped = 0

    def put(self, frame: bytes) -> None:
        """Queue a frame, skipping the oldest when the reader lags."""
        if len(self._items) >= self.limit:
            self._items.popleft()
            self.skipped += 1
            _DROPPED_FRAMES.inc()
        self._items.append(frame)
        self._wake.set()

    async def next(self, timeout: float | None = None) -> bytes | None:
        """The audio queued since the last call (``b""`` on timeout); None at the end."""
        items = await self._take(timeout)
        return None if items is None else b"".join(items)


class LiveCall:
    """One call in progress as the live view shows it; sessions report through it.

    ``tap`` says whether the app can hand the call's audio to listeners (the recording
    apps: while someone listens their audio comes frame by frame, off the C path's tape);
    the echo app's media stays on the C path, so it cannot be heard.
    """

    __slots__ = ("_hub", "_inbound", "_wake", "announced", "app", "caller", "closed",
                 "frame_bytes", "id", "lines", "listeners", "node", "path", "rate",
                 "started_at", "steps", "tap")

    def __init__(self, hub: LiveHub, call: Call) -> None:
        self._hub = hub
        self._wake = call.wake_media
        self.id = call.id
        self.app = call.app
        # AudioSocket carries no caller ID: the peer is what identifies the line; an app
        # may put a caller number in ``call.meta["caller"]``.
        self.caller = str(call.meta.get("caller") or call.peer)
        self.started_at = call.started_at
        self.rate = call.rate
        self.frame_bytes = call.frame_bytes
        self.node: str | None = None
        self.path: list[str] = []
        self.steps = 0  # nodes entered so far (a node re-entered is a change too)
        self.lines: deque[dict[str, Any]] = deque(maxlen=LINES_KEPT)
        self.listeners: list[Listener] = []
        self.tap = False
        self.announced = False
        self.closed = False
        self._inbound = bytearray()

    def summary(self) -> dict[str, Any]:
        """What the snapshot and ``call_started`` say about this call."""
        return {"uuid": self.id, "app": self.app, "caller": self.caller,
                "started_at": _iso(self.started_at), "started": self.started_at,
                "rate": self.rate, "node": self.node, "path": self.path[-PATH_KEPT:],
                "lines": list(self.lines), "listenable": self.tap}

    # -- what sessions report --------------------------------------------------------------

    def set_path(self, path: list[str]) -> None:
        """The IVR path so far; publishes ``node`` when its last entry changed."""
        if self.closed or not path or len(path) == self.steps:
            return
        self.steps = len(path)
        self.node = path[-1]
        self.path = path[-PATH_KEPT:]
        if self.announced:
            self._hub.publish("node", {"uuid": self.id, "node": self.node, "path": self.path})

    def add_line(self, start: float, end: float, text: str) -> None:
        """A transcript line of the caller's, as recognised."""
        if self.closed:
            return
        line = {"start": round(start, 2), "end": round(end, 2), "text": text}
        self.lines.append(line)
        if self.announced:
            self._hub.publish("line", {"uuid": self.id, **line})

    # -- the listen-in tap (only called while ``listeners`` is non-empty) ------------------

    def heard(self, pcm: bytes) -> None:
        """A caller frame, held until the next tick mixes it."""
        buf = self._inbound
        buf += pcm
        excess = len(buf) - INBOUND_HOLD_FRAMES * self.frame_bytes
        if excess > 0:
            del buf[:excess]

    def sent(self, pcm: bytes | None) -> None:
        """After a tick: mix one frame of the caller's with what went out (None: silence)
        and hand it to each listener."""
        size = len(pcm) if pcm else self.frame_bytes
        buf = self._inbound
        if buf:
            caller = bytes(buf[:size])
            del buf[:size]
            mix = np.zeros(size // 2, dtype=np.int32)
            mix[: len(caller) // 2] = np.frombuffer(caller, "<i2", len(caller) // 2)
            if pcm:
                mix += np.frombuffer(pcm, "<i2")
            frame = np.clip(mix, -32768, 32767).astype("<i2").tobytes()
        else:
            frame = pcm or bytes(size)
        for listener in self.listeners:
            listener.put(frame)

    def close(self) -> None:
        """The call ended: later reports are ignored and listen-in streams end."""
        self.closed = True
        for listener in self.listeners:
            listener.close()
        self._inbound.clear()


class LiveHub:
    """Calls in progress and the streams that follow them (see the module docstring)."""

    #: What :meth:`listen` raises (here so the web side needs no import of this module).
    ListenError = ListenError

    def __init__(self, *, queue_events: int = QUEUE_EVENTS,
                 max_subscribers: int = MAX_SUBSCRIBERS, max_listeners: int = MAX_LISTENERS,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.calls: dict[str, LiveCall] = {}
        self.queue_events = queue_events
        self.max_subscribers = max_subscribers
        self.max_listeners = max_listeners
        self.heartbeat_s = heartbeat_s
        self.last_id = 0
        self._fanout: set[Subscriber] = set()  # subscribers still fed
        self._open: set[Subscriber] = set()  # subscribers whose stream is still open
        self._listeners: set[Listener] = set()

    # -- call observer ---------------------------------------------------------------------

    def attach(self, call: Call) -> LiveCall:
        """The call's entry, made now if needed; a session calls this to report and tap."""
        entry = self.calls.get(call.id)
        if entry is None:
            entry = self.calls[call.id] = LiveCall(self, call)
        return entry

    def call_started(self, call: Call) -> None:
        """Observer hook: the call is up (the app, if any, is made)."""
        entry = self.attach(call)
        entry.rate, entry.frame_bytes = call.rate, call.frame_bytes
        entry.announced = True
        # Nobody watching (the usual case under load): no summary to build.
        self.publish("call_started", entry.summary() if self._fanout else {})

    def call_ended(self, call: Call) -> None:
        """Observer hook: the call is over; its listen-in streams end."""
        entry = self.calls.pop(call.id, None)
        if entry is None:
            return
        entry.close()
        if entry.announced:
            self.publish("call_ended", {
                "uuid": call.id, "end_reason": call.end_reason,
                "duration": round((call.ended_at or time.time()) - call.started_at, 2)})

    # -- events ------------------------------------------------------------------------------

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Fan ``data`` out to every subscriber (O(subscribers), no I/O)."""
        self.last_id += 1
        if not self._fanout:
            return
        event = LiveEvent(self.last_id, kind, data)
        cut = [sub for sub in self._fanout if not sub.put(event)]
        for sub in cut:
            self._fanout.discard(sub)
            # Everything it had queued and this event are lost to it (the reconnect's
            # snapshot has the state again).
            _DROPPED_EVENTS.inc(len(sub) + 1)

    def snapshot(self) -> dict[str, Any]:
        """Every call in progress, and the id of the last event it includes."""
        calls = [e.summary() for e in self.calls.values() if e.announced]
        calls.sort(key=lambda c: c["started"])
        return {"last_event_id": self.last_id, "now": time.time(), "calls": calls}

    def subscribe(self) -> Subscriber | None:
        """A new event queue (take the snapshot right after, before awaiting anything, and
        nothing is missed), or None when ``max_subscribers`` are open."""
        if len(self._open) >= self.max_subscribers:
            REFUSED.labels(what="subscriber").inc()
            return None
        sub = Subscriber(self.queue_events)
        self._open.add(sub)
        self._fanout.add(sub)
        SUBSCRIBERS.inc()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """The stream is closed (idempotent)."""
        self._fanout.discard(sub)
        if sub in self._open:
            self._open.remove(sub)
            SUBSCRIBERS.dec()

    @property
    def subscribers(self) -> int:
        """Event streams open now."""
        return len(self._open)

    # -- listen-in ---------------------------------------------------------------------------

    def listen(self, call_id: str) -> tuple[LiveCall, Listener]:
        """Start tapping a call; raises :class:`ListenError` (404, 409, 503) when it cannot."""
        entry = self.calls.get(call_id)
        if entry is None or entry.closed or not entry.announced:
            raise ListenError(404, "not_live", "no call in progress has this id")
        if not entry.tap:
            raise ListenError(
                409, "no_tap",
                f"this call's audio never passes through Python (app {entry.app!r} runs on "
                "the C media path), so it cannot be listened to; record, transcribe and ivr "
                "calls can")
        if len(self._listeners) >= self.max_listeners:
            REFUSED.labels(what="listener").inc()
            raise ListenError(503, "busy", f"{self.max_listeners} listen-in streams are open")
        listener = Listener()
        if not entry.listeners:
            entry._inbound.clear()  # what a previous listener left is stale now
        entry.listeners.append(listener)
        self._listeners.add(listener)
        LISTENERS.inc()
        # A call whose audio rides the C path in blocks comes back to frame-by-frame
        # delivery while someone listens (its app's media_ready says no meanwhile).
        entry._wake()
        return entry, listener

    def unlisten(self, entry: LiveCall, listener: Listener) -> None:
        """The listen-in stream is closed (idempotent)."""
        if listener in entry.listeners:
            entry.listeners.remove(listener)
        if listener in self._listeners:
            self._listeners.remove(listener)
            LISTENERS.dec()

    @property
    def listening(self) -> int:
        """Listen-in streams open now."""
        return len(self._listeners)

    def close(self) -> None:
        """Shutdown: end every event and audio stream."""
        for sub in list(self._open):
            sub.close()
        self._fanout.clear()
        for listener in list(self._listeners):
            listener.close()
