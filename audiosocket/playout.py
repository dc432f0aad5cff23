"""Per-call playout buffers: whole 20 ms frames waiting for the shared clock's tick.

Split from ``clock.py`` (the clock drives these; the server and apps fill them). A playout
holds wire frames, so a tick writes each with no per-frame work, and counts the call's
timeline (``ticks``) and what went out; while the C media path carries the call, those
counters live in the line's state and ``sync_counters`` folds them in.

A little over 600 lines, on purpose: the queue, its playback marks, the tick and the C
path's mirror of them (``_native_plan``, ``sync_counters``) read and write the same fields,
and split apart each would reach into the other's privates (as ``Clock`` once did).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Protocol

from audiosocket import metrics
from audiosocket.native import State, field, frame_clip
from audiosocket.protocol import (
    FRAME_MS,
    HEADER_SIZE,
    KIND_FOR_RATE,
    frame_bytes,
    header,
    silence_frame,
)

__all__ = [
    "ClipFrames",
    "Playback",
    "Playout",
    "TickListener",
    "Transport",
]

#: A run of at most this many silent ticks between two frames of a live stream is a gap
#: (an underrun: the listener hears a hole); a longer one is the caller pausing. Must match
#: GAP_TICKS in _wire.c.
GAP_TICKS = 5
_NO_GAP = 1 << 40  # no live frame went out last: the silence that follows is not a gap
_TICKS, _POPPED, _AUDIO_SENT, _MARK_AT, _STREAM_AT, _GAP, _UNDERRUNS, _LIVE_DROPPED = (
    field(name)
    for name in ("ticks", "popped", "audio_sent", "mark_at", "stream_at", "gap", "underruns",
                 "live_dropped")
)


class Transport(Protocol):
    """The part of an asyncio transport the clock writes to."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...


class ClipFrames:
    """Wire frames of the clips many calls play (cached prompts), made once and shared.

    A prompt is the prompt cache's own PCM object for every call that plays it; framed per
    call it was a new copy in each call's queue (~200 kB a call at 1000 calls), popped cold
    by every tick. Shared, the calls that play it send from the same frames. Keyed by the
    PCM object's identity, which is safe because an entry holds the object (its id cannot
    be reused while it is here); bounded by ``max_bytes`` of PCM and frames, least
    recently played first out. The server makes one and gives it to every playout.
    """

    def __init__(self, max_bytes: int = 32 * 2**20) -> None:
        self.max_bytes = max_bytes
        #: key -> (the PCM object, its frames, what the entry counts against max_bytes)
        self._entries: OrderedDict[
            tuple[int, bytes, int], tuple[bytes, tuple[bytes, ...], int]
        ] = OrderedDict()
        self._bytes = 0

    def frames(
        self, header: bytes, pcm: bytes, frame_size: int, zeros_after: int, silence: bytes
    ) -> tuple[bytes, ...]:
        """:func:`~audiosocket.native.frame_clip` of these arguments, shared."""
        key = (id(pcm), header, zeros_after)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is pcm:
            self._entries.move_to_end(key)
            return entry[1]
        framed = tuple(frame_clip(header, pcm, frame_size, zeros_after, silence))
        cost = 2 * len(pcm) + len(framed) * len(header)
        if cost > self.max_bytes:
            return framed
        self._entries[key] = (pcm, framed, cost)
        self._bytes += cost
        while self._bytes > self.max_bytes:
            self._bytes -= self._entries.popitem(last=False)[1][2]
        return framed

    def __len__(self) -> int:
        return len(self._entries)


class Playback:
    """Awaitable completion of one clip: True when its last frame went out on the wire,
    False when it was cleared (barge-in, ``clear()``) or the call ended first."""

    __slots__ = ("_future", "frames", "started")

    def __init__(
        self, future: asyncio.Future[bool], frames: int, started: asyncio.Future[float]
    ) -> None:
        self._future = future
        self.frames = frames
        #: Resolves with ``loop.time()`` of the tick that sent the clip's first frame.
        self.started = started

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._future.__await__()

    def done(self) -> bool:
        return self._future.done()

    @property
    def completed(self) -> bool:
        """True once every frame was sent (not cleared)."""
        return self._future.done() and not self._future.cancelled() and self._future.result()


TickListener = Callable[[int, bytes | None], None]


class Playout:
    """A call's outbound buffer: whole 20 ms frames of PCM waiting for their tick.

    Bounded: at most ``max_frames`` queued (``max_seconds`` of audio, and at most
    ``max_bytes`` of it: at 192 kHz seconds alone would allow 230 MB); past that the oldest
    frames are dropped and counted (a runaway producer must not grow memory without limit).

    A live stream (audio queued with ``feed``/``append_frame``: echo, relays) has a target
    latency, ``live_frames``: like a jitter buffer, whatever is queued above it at a tick is
    the oldest audio and is dropped (``live_dropped``), so a stall costs a moment of audio
    instead of its length in delay for the rest of the call. Clips (``play``) never are.
    """

    __slots__ = (
        "_cap",
        "_frames",
        "_gap",
        "_header",
        "_lead",
        "_listener",
        "_loop",
        "_marks",
        "_native_state",
        "_sent_seq",
        "_short",
        "_silence",
        "_start_marks",
        "_stream_from",
        "_streams",
        "_wired",
        "append_frame",
        "audio_frames_sent",
        "frame_size",
        "kind",
        "live_dropped",
        "live_frames",
        "max_frames",
        "metric_sent",
        "plain",
        "rate",
        "sent_total",
        "shared",
        "ticks",
        "transport",
        "underruns",
    )

    def __init__(
        self,
        transport: Transport,
        rate: int,
        *,
        lead_ms: int = 0,
        max_seconds: float = 600.0,
        max_bytes: int = 16 * 2**20,
        live_ms: int = 0,
        loop: asyncio.AbstractEventLoop | None = None,
        shared: ClipFrames | None = None,
    ) -> None:
        self.transport = transport
        #: Frames of clips played with ``shared=True`` (prompts), made once per process.
        self.shared = shared
        self.rate = rate
        self.kind = KIND_FOR_RATE[rate]
        self.frame_size = frame_bytes(rate)
        self._header = header(self.kind, self.frame_size)
        self._silence = silence_frame(self.kind, self.frame_size)  # shared by every call
        self._lead = max(0, min(lead_ms, 120)) // FRAME_MS
        self.max_frames = max(
            1, min(int(max_seconds * 1000 / FRAME_MS), max_bytes // self.frame_size)
        )
        self._frames: deque[bytes] = deque()
        # Entries of the queue that are not whole frames (a short inbound frame fed as it
        # is, or the tail of the last re-cut); while there are any, tick() re-cuts the
        # stream into whole frames, so the call is not plain.
        self._short = 0
        self._gap = _NO_GAP
        self.live_dropped = 0
        self.live_frames = 0
        self._cap = self.max_frames
        #: While the C media path carries this call: its line's counters (see sync_counters).
        self._native_state: State | None = None
        self.set_live_target(live_ms)
        self._marks: deque[tuple[int, asyncio.Future[bool]]] = deque()
        self._start_marks: deque[tuple[int, asyncio.Future[float]]] = deque()
        # Frames ever taken off the queue (sent, cleared or dropped); frames ever queued is
        # this plus the queue's length, so producers need not count.
        self._sent_seq = 0
        self._streams = 0
        self._stream_from = 0  # seq of the open stream's first frame
        self._loop = loop
        self.ticks = 0  # the call's timeline, in 20 ms ticks since it was registered
        self.sent_total = 0
        self.audio_frames_sent = 0
        self.metric_sent = 0  # sent_total already added to the frames-out metric
        self.underruns = 0
        self._listener: TickListener | None = None
        #: Nothing but frames and silence to send (no listener, stream, lead or pending
        #: playback): the clock then sends this call's frame inline, without ``tick()``.
        self.plain = not self._lead
        self._wired = self.plain
        #: Queue one whole wire frame of this playout's kind and size, as it will be sent:
        #: the deque's own ``append``, so a relay (echo) costs no Python frame per inbound
        #: frame. The ``max_frames`` bound is enforced on the next tick instead.
        self.append_frame: Callable[[bytes], None] = self._frames.append

    # -- configuration -------------------------------------------------------------------

    @property
    def on_tick(self) -> TickListener | None:
        """Called after each tick with (tick index, PCM sent or None for silence)."""
        return self._listener

    @on_tick.setter
    def on_tick(self, listener: TickListener | None) -> None:
        self._listener = listener
        self._replan()

    def set_live_target(self, ms: int) -> None:
        """The live stream's target latency (0: none, only ``max_frames`` bounds it)."""
        self.live_frames = max(1, ms // FRAME_MS) if ms > 0 else 0
        self._cap = min(self.max_frames, self.live_frames or self.max_frames)
        if self._native_state is not None:
            self._native_plan(self._native_state)

    @property
    def wired(self) -> bool:
        """What the C path needs to send this call's frames itself: ``plain``, except that a
        playing clip (its completion marks) is allowed: the C path reports the frame a mark
        waits for (EV_MARK) and this side resolves it. Mirrored into the line's state
        (``wired``), which _wire.c reads each tick instead of this object."""
        return self._wired

    @wired.setter
    def wired(self, value: bool) -> None:
        self._wired = value
        if self._native_state is not None:
            self._native_state["wired"] = int(value)

    def native_state(self, fd: int, frame_len: int, whole: bool, *, wake: bool = False,
                     read_ticks: int = 1) -> State:
        """A new native line's state for this playout (``struct line_state``, _wire.c).
        ``read_ticks``: a taped line's socket is read on every this many ticks."""
        self.sync_counters()
        state = State(fd=fd, frame_len=frame_len, whole=int(whole), gap=self._gap,
                      now=self.ticks, mark_at=-1, wake=int(wake), read_ticks=read_ticks)
        self._native_plan(state)
        return state

    def _replan(self) -> None:
        wired = self._listener is None and not self._lead and not self._short
        self._wired = wired
        self.plain = wired and not self._marks and not self._start_marks and not self._streams
        if self._native_state is not None:
            self._native_plan(self._native_state)

    def _native_plan(self, state: State) -> None:
        """Tell the C path what this playout waits for: the next playback mark (relative to
        the frames it has taken since the last fold) and whether a clip is playing (then
        the queue's bound is ``max_frames``, not the live target, and a frame sent ends no
        live gap), as ``tick()`` does for itself."""
        clip = bool(self._marks or self._start_marks or self._streams)
        state["wired"] = int(self._wired)
        state["clip"] = int(clip)
        state["max_frames"] = self.max_frames if clip else self._cap
        # The C path trims a live queue itself only where tick() would trim it to the same
        # length (the live target, not the bound).
        state["live"] = int(0 < self.live_frames <= self.max_frames)
        seqs = [q[0][0] for q in (self._marks, self._start_marks) if q]
        state["mark_at"] = min(seqs) - self._sent_seq if seqs else -1
        state["stream"] = int(bool(self._streams))
        state["stream_at"] = self._stream_from - self._sent_seq

    def sync_counters(self) -> None:
        """Fold in what the C media path counted since the last fold (ticks, frames sent).
        Everything here that reads the counters calls it; so do the clock's once-a-second
        flush and the server's readers."""
        state = self._native_state
        if state is None:
            return
        # The fields by index in the int64 view, not by name: this runs for every call a
        # few times a second (the clock's flush, marks, blocks, call.time).
        q = state.q
        ticks = q[_TICKS]
        popped = q[_POPPED]
        if ticks or popped:
            q[_TICKS] = q[_POPPED] = 0
            self.ticks += ticks
            self.sent_total += ticks
            self._sent_seq += popped
            self.audio_frames_sent += q[_AUDIO_SENT]
            q[_AUDIO_SENT] = 0
            if q[_MARK_AT] >= 0:
                q[_MARK_AT] -= popped  # it counts from the folded _sent_seq
            q[_STREAM_AT] -= popped
        self._gap = q[_GAP]
        under = q[_UNDERRUNS]
        if under:
            q[_UNDERRUNS] = 0
            self.underruns += under
            metrics.UNDERRUNS.inc(under)
        dropped = q[_LIVE_DROPPED]
        if dropped:  # trimmed off the live queue (in popped too, as _trim_live counts them)
            q[_LIVE_DROPPED] = 0
            self.live_dropped += dropped
            metrics.LIVE_DROPPED.inc(dropped)

    # -- producers -----------------------------------------------------------------------

    @property
    def _queued_seq(self) -> int:
        """Frames ever queued."""
        return self._sent_seq + len(self._frames)

    @property
    def queued_frames(self) -> int:
        """Frames waiting to be sent."""
        return len(self._frames)

    @property
    def idle(self) -> bool:
        """Nothing queued and no stream open: only silence is going out."""
        return not self._frames and not self._streams

    def _loop_or_running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def feed(self, pcm: bytes) -> None:
        """Queue PCM of a live stream (echo, relays), any length: it goes out bit for bit in
        order. A piece shorter than a frame (Asterisk sends such at file boundaries) is
        queued as it is; the tick re-cuts the stream into whole frames and sends what does
        not fill one as a short frame when it is all there is. Never padded. Subject to the
        live target (``live_frames``)."""
        if len(pcm) == self.frame_size:
            # The usual case, exactly one frame: _push inlined (this runs per call per tick).
            frames = self._frames
            frames.append(self._header + pcm)
            if len(frames) > self.max_frames:
                self._drop_oldest()
                self._resolve_marks()
            return
        n = self.frame_size
        end = len(pcm) - len(pcm) % n
        for i in range(0, end, n):
            self._push(pcm[i : i + n])
        if end != len(pcm):
            rest = pcm[end:]
            self._frames.append(header(self.kind, len(rest)) + rest)
            self._short += 1
            self._replan()

    def play(self, pcm: bytes, *, silence_after: int = 0, shared: bool = False) -> Playback:
        """Queue one clip; the result completes when its last frame has been sent.

        ``silence_after``: bytes of silence that belong to the clip after ``pcm`` (a
        prompt's pause between sentences), queued without building them. The clip's tail
        is padded with silence to a whole frame (Asterisk handles short frames, but a fixed
        size keeps the peer's jitter buffer simple). ``shared``: ``pcm`` is an object other
        calls play too (a cached prompt): its frames come from :class:`ClipFrames`.
        """
        return self.play_parts(((pcm, silence_after),), shared=shared)

    def play_parts(self, parts: Sequence[tuple[bytes, int]], *, shared: bool = False) -> Playback:
        """:meth:`play` of several ``(pcm, silence_after)`` parts as one clip: one
        completion and one start for all of them (a prompt whose sentences are all
        cached plays as one, not as a clip and two playback marks per sentence)."""
        if self._short and not self._marks:
            self._restitch()  # the live audio before the clip in as few frames as it fills
        loop = self._loop_or_running()
        started: asyncio.Future[float] = loop.create_future()
        self.sync_counters()
        first_seq = self._queued_seq + 1
        # One C call frames each part (a Python loop per frame cost ~0.2 µs each, a
        # prompt hundreds of frames per call); frames of pure silence are the shared one.
        framed: list[Sequence[bytes]] = []
        for pcm, silence_after in parts:
            if shared and self.shared is not None:
                framed.append(self.shared.frames(
                    self._header, pcm, self.frame_size, silence_after, self._silence))
            else:
                framed.append(frame_clip(self._header, pcm, self.frame_size, silence_after,
                                         self._silence))
        n_frames = 0
        for frames in framed:  # queued once all are framed: a failure queues none
            self._frames.extend(frames)
            n_frames += len(frames)
        if len(self._frames) > self.max_frames:
            self._drop_oldest()
            self._resolve_marks()
        fut: asyncio.Future[bool] = loop.create_future()
        if self._queued_seq <= self._sent_seq:
            fut.set_result(True)
            started.set_result(loop.time())
        else:
            self._marks.append((self._queued_seq, fut))
            self._start_marks.append((first_seq, started))
            self._replan()
        return Playback(fut, n_frames, started)

    def _push(self, pcm: bytes) -> None:
        # The queue holds wire frames, so the tick writes each with no per-frame work.
        self._frames.append(self._header + pcm)
        if len(self._frames) > self.max_frames:
            self._drop_oldest()
            self._resolve_marks()

    def _drop_oldest(self) -> None:
        """Past ``max_frames`` (a runaway producer): the oldest frames go, and are counted
        as taken off the queue and as dropped. The caller resolves the marks they pass."""
        frames = self._frames
        over = len(frames) - self.max_frames
        for _ in range(over):
            frames.popleft()
        self._sent_seq += over
        metrics.PLAYOUT_DROPPED.inc(over)

    def begin_stream(self) -> None:
        """Mark that more audio of a clip is coming (TTS sentence by sentence), so an empty
        buffer at a tick counts as an underrun rather than the end of speech. Only once the
        stream's first frame has gone out: the wait before it is latency, not a gap."""
        self.sync_counters()
        self._streams += 1
        self._stream_from = self._queued_seq + 1
        self._replan()

    def end_stream(self) -> None:
        """Close what ``begin_stream`` opened."""
        self._streams = max(0, self._streams - 1)
        self._replan()

    def clear(self) -> int:
        """Drop everything queued; the next tick sends silence. Returns frames dropped.

        Pending playbacks complete with False.
        """
        dropped = len(self._frames)
        self._sent_seq += dropped
        self._frames.clear()
        self._short = 0
        while self._marks:
            _, fut = self._marks.popleft()
            if not fut.done():
                fut.set_result(False)
        while self._start_marks:
            _, started = self._start_marks.popleft()
            if not started.done():
                started.cancel()
        self._replan()
        return dropped

    def close(self) -> None:
        """The call is over: pending playbacks complete with False."""
        self.clear()
        self.on_tick = None

    def _resolve_marks(self) -> None:
        starts = self._start_marks
        if starts:
            now = self._loop.time() if self._loop is not None else 0.0
            while starts and starts[0][0] <= self._sent_seq:
                _, started = starts.popleft()
                if not started.done():
                    started.set_result(now)
        marks = self._marks
        while marks and marks[0][0] <= self._sent_seq:
            _, fut = marks.popleft()
            if not fut.done():
                fut.set_result(True)
        if not marks and not starts:
            self._replan()
        elif self._native_state is not None:
            self._native_plan(self._native_state)  # the next mark the C path reports

    # -- the tick ------------------------------------------------------------------------

    def tick(self, advance: int = 1) -> None:
        """Write this tick's frame (more only with a lead).

        ``advance`` > 1 after a clock resync: the timeline jumps with wall time, and the
        frames those ticks would have carried are not sent late (that would be a burst).
        The clock sends a plain call's frame itself (see ``plain``); here the idle case
        (nothing queued) takes the shortest path.
        """
        self.sync_counters()
        ticks = self.ticks + advance
        self.ticks = ticks
        sent = self.sent_total
        if advance > 1 and sent < ticks - 1:
            sent = ticks - 1
        frames = self._frames
        listener = self._listener
        # Nothing but fed audio queued (no clip, no stream): the live stream's rules apply.
        live = not self._marks and not self._streams
        if live and frames:
            if self._short:
                self._restitch()
            if self.live_frames and len(frames) > self.live_frames:
                self._trim_live()
        if not frames and listener is None and not self._streams:
            if sent < ticks:
                self.transport.write(self._silence)
                self._gap += 1
                sent += 1
            self.sent_total = sent
            if self._marks or self._start_marks:
                self._resolve_marks()
            return
        if len(frames) > self.max_frames:
            self._trim()
        write = self.transport.write
        due = ticks + self._lead
        whole = len(self._silence)
        n = 0
        while frames and sent < due:
            frame = frames.popleft()
            if len(frame) != whole:
                # Less than a frame of live audio is all there is: it goes out as it is, a
                # short frame on its tick as Asterisk sent it, rather than wait a tick behind
                # a silent frame or be padded (a hole in the audio either way). Asterisk
                # takes any length (samples = length / 2).
                self._short -= 1
                if not self._short:
                    self._replan()
            write(frame)
            if listener is not None:
                listener(sent, self._pcm_of(frame))
            if not live:
                self._gap = _NO_GAP
            elif self._gap:
                self._end_gap()
            sent += 1
            n += 1
        if n:
            self._sent_seq += n
            self.audio_frames_sent += n
        if self._marks or self._start_marks:
            self._resolve_marks()
        if sent < ticks:
            if self._streams and self._sent_seq >= self._stream_from:
                self.underruns += 1
                metrics.UNDERRUNS.inc()
            write(self._silence)
            self._gap += 1
            if listener is not None:
                listener(sent, None)
            sent += 1
        self.sent_total = sent

    def _end_gap(self) -> None:
        """A live frame goes out after ``_gap`` silent ticks: a short run was a hole in
        the stream (an underrun), a long one the caller pausing."""
        gap = self._gap
        if gap <= GAP_TICKS:
            self.underruns += gap
            metrics.UNDERRUNS.inc(gap)
        self._gap = 0

    def _restitch(self) -> None:
        """Re-cut the queued live stream into whole frames; what does not fill one stays
        queued as a short tail. Frames-ever-queued (``_queued_seq``) is kept, so marks and
        the "fed since" check still count right."""
        frames = self._frames
        count = len(frames)
        size = len(self._silence) - HEADER_SIZE
        data = b"".join([f[HEADER_SIZE:] for f in frames])
        frames.clear()
        end = len(data) - len(data) % size
        whole = self._header
        frames.extend([whole + data[i : i + size] for i in range(0, end, size)])
        self._short = 0
        if end != len(data):
            frames.append(header(self.kind, len(data) - end) + data[end:])
            self._short = 1
        self._sent_seq += count - len(frames)
        if not self._short:
            self._replan()

    def _trim_live(self) -> None:
        """Back to the live target: drop the oldest audio above it, and count it."""
        frames = self._frames
        whole = len(self._silence)
        k = len(frames) - self.live_frames
        for _ in range(k):
            if len(frames.popleft()) != whole:
                self._short -= 1
        self._sent_seq += k
        self.live_dropped += k
        metrics.LIVE_DROPPED.inc(k)
        if not self._short:
            self._replan()

    def _trim(self) -> None:
        """Enforce ``max_frames`` for frames queued with ``append_frame``."""
        frames = self._frames
        if len(frames) > self.max_frames:
            self._drop_oldest()
        if self._short:
            whole = len(self._silence)
            self._short = sum(1 for f in frames if len(f) != whole)
        self._resolve_marks()
        self._replan()

    def _pcm_of(self, frame: bytes) -> bytes:
        """The linear PCM a wire frame carries (for tick listeners, e.g. the recorder)."""
        return frame[HEADER_SIZE:]

    @property
    def silence_frames_sent(self) -> int:
        """Silence frames sent so far."""
        self.sync_counters()
        return self.sent_total - self.audio_frames_sent
