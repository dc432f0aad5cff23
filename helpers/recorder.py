"""Time-aligned stereo WAV recording of a call, written incrementally and crash-safe.

Left channel: the caller (inbound). Right channel: what we sent (outbound). Both are placed
on the call's timeline by the shared clock, in 20 ms slots: outbound frame ``k`` went out on
tick ``k``; an inbound frame goes to the next free inbound slot, but never behind the clock
by more than a little jitter, so when a quiet caller sends nothing the gap becomes silence
and the two channels stay aligned.

Disk writes happen on one shared writer thread, never on the event loop. Data is appended
about once a second and the RIFF sizes in the header are rewritten after each append, so a
killed process loses at most what is not yet appended: the last ``flush_every`` +
``HOLD_SLOTS`` (1.5 s), and on the C media path also the block not yet handed over
(``media_block_s``); :func:`repair_wav` fixes a header left stale
(``audiosocket serve`` runs it over the data directory at start-up).

Where an append is silent both ways, in whole 32 KiB stretches of the file, they are left
as holes instead of written zeros: the file reads the same, and a call spent mostly waiting
takes that much less disk and page cache (:func:`_write_sparse`).
"""

from __future__ import annotations

import os
import queue
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVarTuple

import numpy as np
import structlog
from prometheus_client import Counter

__all__ = [
    "CallRecorder", "Interleave", "InterleaveParts", "RecorderWriter", "TapedBlock",
    "interleave_legs",
    "repair_all", "repair_wav", "tick_leads", "wav_seconds",
]

log = structlog.get_logger("audiosocket.recorder")

_HEADER_SIZE = 44
#: The header's RIFF size (at 4) and data size (at 40): all an append changes in it.
_SIZE = struct.Struct("<I")
#: An inbound frame arriving more than this many slots behind the clock is a gap, not jitter.
JITTER_SLOTS = 3
#: Slots the record app keeps unwritten behind the clock, so a burst that ends a gap (a
#: network hiccup) can be placed where it was sent: 0.5 s. A crash loses at most
#: flush_every + this (1.5 s).
HOLD_SLOTS = 25
#: Audio kept in memory while the disk refuses writes (full, gone read-only), per call.
RETRY_MAX_BYTES = 8000 * 4 * 300  # 5 minutes of 8 kHz stereo
#: Inbound audio kept ahead of the clock (a peer sending faster than real time), in slots:
#: past it frames are dropped and counted, else a flood held the whole call in memory
#: until hang-up (600 s of 192 kHz is 230 MB). 2 s: 768 kB at 192 kHz.
AHEAD_SLOTS = 100
#: Recorded audio handed to the writer thread and not yet written (a disk slower than the
#: calls), per call: past it new chunks are dropped and counted. 8 MiB: 11 s at 192 kHz.
QUEUED_MAX_BYTES = 8 * 2**20

WRITE_ERRORS = Counter(
    "audiosocket_recording_write_errors_total",
    "Recording writes that failed (full disk...); the audio is kept and retried",
)
RECORDING_BYTES_LOST = Counter(
    "audiosocket_recording_bytes_lost_total",
    "Recording bytes dropped because the disk refused them for longer than the retry buffer",
)
INBOUND_AHEAD_DROPPED = Counter(
    "audiosocket_recording_ahead_frames_dropped_total",
    "Inbound frames not recorded: the peer sent them more than 2 s ahead of the clock",
)


def tick_leads(ticks: np.ndarray) -> tuple[int, int]:
    """The least and greatest ``ticks[k] - k`` of a block's inbound ticks (``(0, 0)`` for
    none): frame ``k`` placed at ``pos + k`` leads the tick it was read at by
    ``pos + k - ticks[k]``, which lies between ``pos`` minus the greatest and ``pos`` minus
    the least. ``MediaBlock.shape`` has them from the C pass; this is for blocks without."""
    if not len(ticks):
        return 0, 0
    offsets = ticks - np.arange(len(ticks))
    return int(offsets.min()), int(offsets.max())


#: ``(left, right, nbytes) -> stereo``: the two legs' first ``nbytes`` interleaved as 16-bit
#: samples, zeros past a short leg (:func:`interleave_legs`).
Interleave = Callable[[bytearray, bytearray, int], bytes]
#: ``(left_a, left_b, right_a, right_b, nbytes) -> stereo``: :data:`Interleave` of
#: ``left_a + left_b`` and ``right_a + right_b`` without joining them
#: (``audiosocket.native.interleave_parts``).
InterleaveParts = Callable[[bytearray, bytes, bytearray, bytes, int], bytes]


class TapedBlock(Protocol):
    """What :meth:`CallRecorder.add_media` reads of a block (``audiosocket.media``'s
    ``MediaBlock``; ``helpers`` may not import the core)."""

    frame_bytes: int

    @property
    def span(self) -> tuple[int, int, int, int, int, int]:
        """``(sent_frames, first_slot, last_slot, heard_frames, first_heard,
        last_heard)``."""

    @property
    def shape(self) -> tuple[int, int, bool, bool]:
        """``(lead_lo, lead_hi, consecutive, silent)``."""

    @property
    def in_place(self) -> bool:
        """The audio is still on the tape, so :meth:`interleave` can read it there."""

    @property
    def heard(self) -> bytes: ...
    @property
    def heard_ticks(self) -> np.ndarray: ...
    @property
    def sent(self) -> bytes: ...
    @property
    def sent_ticks(self) -> np.ndarray: ...

    def interleave(self, held_in: bytearray, held_out: bytearray,
                   nbytes: int) -> tuple[bytes, bytearray, bytearray]:
        """The stereo of the first ``nbytes`` of ``held_in + heard`` and ``held_out +
        sent``, and what is left of each after them."""


def _rest(held: bytearray, more: bytes, n: int) -> bytearray:
    """What stays of ``held + more`` after its first ``n`` bytes, as the new held buffer
    (one copy of the tail, not of ``more`` whole)."""
    if n <= len(held):
        del held[:n]
        held += more
        return held
    return bytearray(memoryview(more)[n - len(held):])


def interleave_legs(left: bytes | bytearray, right: bytes | bytearray, nbytes: int) -> bytes:
    """Stereo 16-bit audio from the first ``nbytes`` (even) of two mono legs, zeros past a
    short one: numpy's zeros and two strided copies. The recording part passes the one-pass
    C version in when it is built (``audiosocket.native.interleave``, which ``helpers`` may
    not import); this is also the reference its tests compare."""
    if nbytes < 0 or nbytes % 2:
        raise ValueError("nbytes must be even, >= 0")
    stereo = np.zeros(nbytes, dtype="<i2")  # nbytes / 2 samples, two channels
    for channel, leg in enumerate((left, right)):
        samples = min(nbytes, len(leg)) // 2  # an odd last byte is no sample
        # The view of leg lives only for the copy: a bytearray with a view cannot resize.
        stereo[channel : 2 * samples : 2] = np.frombuffer(leg, dtype="<i2", count=samples)
    return stereo.tobytes()


def _header(rate: int, channels: int, data_bytes: int) -> bytes:
    block = channels * 2
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels, rate, rate * block,
        block, 16, b"data", data_bytes,
    )


_Args = TypeVarTuple("_Args")
#: A job of the writer thread: ``fn(*args)``. Not a closure: a thousand calls submit one
#: append a second each, and the tuple costs less to make and to run.
_Job = tuple[Callable[..., object], tuple[object, ...]]


class RecorderWriter:
    """One thread that performs every recorder's file I/O, in order, off the event loop.

    The composition root makes one per process and every call's recorder is given it; the
    thread starts with the first write, so a writer nobody uses costs no thread.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.errors = 0

    def _started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="recorder-writer",
                                                daemon=True)
                self._thread.start()

    def submit(self, fn: Callable[[*_Args], object], *args: *_Args) -> None:
        """Run ``fn(*args)`` on the writer thread."""
        if self._thread is None:
            self._started()
        self._queue.put((fn, args))

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything submitted so far has been written."""
        if self._thread is None:
            return True  # nothing was ever submitted
        done = threading.Event()
        self._queue.put((done.set, ()))
        return done.wait(timeout)

    def _run(self) -> None:
        get = self._queue.get
        while True:
            job = get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except Exception as exc:  # a full disk must not kill the writer for other calls
                self.errors += 1
                WRITE_ERRORS.inc()
                log.error("recorder_write_failed", error=str(exc))


class CallRecorder:
    """Records both legs of one call into ``path`` (stereo, 16-bit, the call's rate).

    ``interleave`` builds each flushed second of stereo: the numpy :func:`interleave_legs`
    unless given another (the recording part gives ``audiosocket.native.interleave``)."""

    def __init__(
        self,
        path: str | Path,
        rate: int,
        *,
        flush_every: int = 50,
        hold_slots: int = 0,
        writer: RecorderWriter,
        interleave: Interleave = interleave_legs,
        interleave_parts: InterleaveParts | None = None,
    ) -> None:
        self.path = Path(path)
        self.rate = rate
        self.frame_samples = rate // 50
        self.frame_bytes = self.frame_samples * 2
        self.flush_every = flush_every
        self.hold_slots = hold_slots
        self._writer = writer
        self._interleave = interleave
        # With it, a block that fills a flush is interleaved from where its audio is (see
        # add_block), not first appended to the held buffers.
        self._interleave_parts = interleave_parts
        # Slots not yet written, from _base on: one frame_bytes each, zero (silence) where
        # nothing was put, so a run of frames is one slice assignment.
        self._in = bytearray()
        self._out = bytearray()
        self._in_pos = 0  # absolute slot index of the next inbound frame
        self._in_partial = b""
        # The caller's frames of the current tick, placed together (see add_inbound).
        self._batch: list[bytes] = []
        self._batch_tick = -1
        self._batch_bytes = 0
        self._batch_max = AHEAD_SLOTS * self.frame_bytes
        self._zero = bytes(self.frame_bytes)
        self._base = 0  # absolute slot index of _in[0] / _out[0]
        self._out_pos = 0
        self.data_bytes = 0
        self.written_bytes = 0  # on disk (the header says this much)
        self._unwritten = bytearray()  # refused by the disk; written before the next chunk
        # Bytes handed to the writer thread and bytes it took: each written by one thread only.
        self._queued_in = 0
        self._queued_out = 0
        self.closed = False
        self.error: str | None = None
        #: The file already existed (another call's): nothing of it is touched or written.
        self.refused = False
        # The file stays open while the call records (writer thread only): an append is
        # then two pwrite()s, not open/seek/write/truncate/seek/write/close, which at a
        # thousand calls (a thousand appends a second) was most of the writer thread's time.
        self._fd: int | None = None
        # A failed write may have left bytes past written_bytes: cut them at the next one.
        self._tail_dirty = False
        # The file's header, kept: an append packs the two sizes into it (writer thread only).
        self._head = bytearray(_header(rate, 2, 0))
        self._writer.submit(self._create)

    def _create(self) -> None:
        # On the writer thread, like every other file operation of the recorder. Exclusive
        # create: a file already there is another call's recording, never to be truncated
        # (call ids are unique, so this is the last line of defence, not the rule).
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self.refused = True
            self.error = "a recording already exists at this path"
            raise
        self._fd = fd
        _write_at(fd, self._head, 0)

    # -- the loop side: cheap list appends ---------------------------------------------

    def add_inbound(self, pcm: bytes, tick: int) -> None:
        """A caller frame arrived while the clock was at ``tick``.

        Frames are placed a tick at a time: after a gap, a burst (what a network hiccup
        delivers at once) is right-aligned to end at the clock, as it was sent, instead of
        starting there and running the caller's channel ahead of ours for the rest of the
        call (seen in the soak: +0.6 s after one stall).
        """
        if self.closed:
            return
        if tick != self._batch_tick:
            self._place_batch()
            self._batch_tick = tick
        self._batch.append(pcm)
        self._batch_bytes += len(pcm)
        if self._batch_bytes >= self._batch_max:
            self._place_batch()  # a flood within one tick: bounded like any other

    def _place_batch(self) -> None:
        if not self._batch:
            return
        tick = self._batch_tick
        pcm = b"".join(self._batch)
        self._batch.clear()
        self._batch_bytes = 0
        if self._in_partial:
            pcm = self._in_partial + pcm
            self._in_partial = b""
        n = self.frame_bytes
        usable = len(pcm) - len(pcm) % n
        if self._in_pos < tick - JITTER_SLOTS:
            # A gap: the missing slots stay silent, and the burst ends at the clock's slot.
            self._in_pos = max(self._in_pos, tick - max(1, usable // n), self._base)
        ahead = tick + AHEAD_SLOTS
        for i in range(0, usable, n):
            if self._in_pos >= ahead:
                INBOUND_AHEAD_DROPPED.inc((usable - i) // n)
                break
            self._put(self._in, self._in_pos, pcm[i : i + n])
            self._in_pos += 1
        if usable != len(pcm):
            self._in_partial = pcm[usable:]

    def add_outbound(self, slot: int, pcm: bytes | None) -> None:
        """Outbound frame ``slot`` (None: silence). Called from the clock's tick."""
        if self.closed:
            return
        self._place_batch()  # the caller's frames of the last tick, before anything flushes
        self._put(self._out, slot, pcm)
        self._out_pos = max(self._out_pos, slot + 1)
        self._flush_due()

    def _flush_due(self) -> None:
        """The rounds' flush, checked after each slot: once ``flush_every`` slots are past
        the held ones, all but the last ``hold_slots`` go to the writer. They stay in
        memory so a burst after a gap can still be placed where it belongs (add_inbound);
        the cost is that much more lost in a crash."""
        if self._out_pos - self._base >= self.flush_every + self.hold_slots:
            self._flush(self._out_pos - self.hold_slots)

    def add_run(self, first_slot: int, heard: bytes, sent: bytes) -> bool:
        """A steady run at once: ``n`` frames went out on slots ``first_slot`` ..
        ``first_slot + n - 1`` and after each one frame came in (``heard``: ``n`` frames,
        read on the tick after each slot). :meth:`add_block` for that shape."""
        n = len(sent) // self.frame_bytes
        slots = np.arange(first_slot, first_slot + n, dtype="<i8")
        # heard_ticks[k] = first_slot + 1 + k: every frame's lead is first_slot + 1.
        return self.add_block(slots, sent, heard, slots + 1,
                              lead=(first_slot + 1, first_slot + 1))

    def add_block(
        self,
        slots: np.ndarray,
        sent: bytes,
        heard: bytes,
        heard_ticks: np.ndarray,
        *,
        lead: tuple[int, int] | None = None,
    ) -> bool:
        """A stretch of the call at once (the C path's tape): frame ``i`` of ``sent`` went
        out on ``slots[i]``, frame ``k`` of ``heard`` was read at ``heard_ticks[k]`` (each
        after the slot before its tick). The same bytes as the rounds of ``add_outbound``
        and ``add_inbound`` in that order whenever no frame would jump a gap or run ahead
        of the clock (jitter of a frame or two per tick included): inbound frames then go
        one after another, which is one slice assignment. Returns False, changing nothing,
        otherwise (the caller replays the rounds). ``lead``: the least and greatest
        ``heard_ticks[k] - k`` when the caller has them (``MediaBlock.shape``), which makes
        the check O(1)."""
        if self.closed:
            return True
        fb = self.frame_bytes
        n, m = len(slots), len(heard_ticks)
        if n == 0 or len(sent) != n * fb or len(heard) != m * fb:
            return False
        # This runs once per call per second at a thousand calls: .item() rather than
        # int(a[i]) (no numpy scalar).
        first_slot, last = slots.item(0), slots.item(-1)
        if m and lead is None:
            lead = tick_leads(heard_ticks)
        plan = self._plan(n, first_slot, last, m, heard_ticks.item(0) if m else 0,
                          lead or (0, 0))
        if plan is None:
            return False
        crossings, usual = plan
        base, pos = self._base, self._in_pos
        if usual and self._interleave_parts is not None:
            # The flush reads the block where it is instead of appending it first (the same
            # bytes; the appends were a third of the recording's cost).
            self._flush(self._take_usual(m, last, heard_ticks.item(-1), crossings), heard, sent)
            return True
        consecutive = last - first_slot == n - 1
        every = self.flush_every
        if m:
            self._put_run(self._in, pos, heard, m)
            self._in_pos = pos + m
            self._batch_tick = heard_ticks.item(-1)
        if consecutive:
            self._put_run(self._out, first_slot, sent, n)
        else:  # a resync skipped slots: each frame where it went out
            for i, slot in enumerate(slots.tolist()):
                self._put(self._out, slot, sent[i * fb : (i + 1) * fb])
        if consecutive and self._out_pos <= first_slot:
            if crossings > 0:
                self._out_pos = last + 1
                self._flush(base + every * crossings)
        else:
            for slot in slots.tolist():
                if slot >= self._out_pos:
                    self._out_pos = slot + 1
                self._flush_due()
        if last >= self._out_pos:
            self._out_pos = last + 1
        return True

    def _plan(self, n: int, first_slot: int, last: int, m: int, first_heard: int,
              lead: tuple[int, int]) -> tuple[int, bool] | None:
        """:meth:`add_block`'s checks, from a block's ends (``n`` frames sent on slots
        ``first_slot`` .. ``last``, ``m`` heard from tick ``first_heard``, ``lead`` as
        there): None to decline it, else the flushes its slots cross and whether it is the
        usual block (both legs follow what is held, and a flush is due)."""
        base = self._base
        if first_slot < base or (m and first_heard <= first_slot):
            return None  # already written out, or read before the block's first slot
        # What the last tick held goes first, as the rounds' first add_outbound does (so
        # declining after this leaves the rounds the same state); it may leave a partial.
        if self._batch:
            self._place_batch()
        if self._in_partial:
            return None
        pos = self._in_pos
        # Where each inbound frame lands against the tick it was read at: no gap jump
        # (lands at or after tick - JITTER_SLOTS) and not ahead of the clock. Frame k lands
        # at pos + k: it leads its tick by pos + k - heard_ticks[k].
        if m and (pos < base or pos - lead[1] < -JITTER_SLOTS or pos - lead[0] >= AHEAD_SLOTS):
            return None
        # Flush where the rounds would have: they check after every slot, so the file's
        # base (and with it which late partial frame still has a slot) is the same.
        # Consecutive slots: out_pos steps by one, crossing base + every + hold each time,
        # and each flush moves the base by ``every``.
        crossings = 0
        if last - first_slot == n - 1 and self._out_pos <= first_slot:
            every = self.flush_every
            crossings = (last + 1 - base - every - self.hold_slots) // every + 1
        fb = self.frame_bytes
        usual = (crossings > 0 and m > 0 and (pos - base) * fb == len(self._in)
                 and (first_slot - base) * fb == len(self._out))
        return crossings, usual

    def _take_usual(self, m: int, last: int, last_heard: int, crossings: int) -> int:
        """The positions after a usual block; the slot its flush goes up to."""
        self._in_pos += m
        self._batch_tick = last_heard
        self._out_pos = last + 1
        return self._base + self.flush_every * crossings

    def add_media(self, block: TapedBlock) -> bool:
        """:meth:`add_block` of a block from the C path's tape. The usual block is
        interleaved straight from where the tape holds it when the block is still there
        (``block.in_place``): no bytes of either leg are made, and the checks read only
        the block's span. Anything else goes to :meth:`add_block`."""
        if block.in_place and not self.closed and block.frame_bytes == self.frame_bytes:
            n, first_slot, last, m, first_heard, last_heard = block.span
            plan = self._plan(n, first_slot, last, m, first_heard, block.shape[:2]) if n else None
            if plan is not None and plan[1]:
                base = self._base
                upto = self._take_usual(m, last, last_heard, plan[0])
                data, self._in, self._out = block.interleave(
                    self._in, self._out, (upto - base) * self.frame_bytes)
                self._queue(upto, data)
                return True
        return self.add_block(block.sent_ticks, block.sent, block.heard, block.heard_ticks,
                              lead=block.shape[:2])

    def _put(self, slots: bytearray, index: int, pcm: bytes | None) -> None:
        """Slot ``index`` holds ``pcm`` (None: silence; a short frame: its start)."""
        self._put_run(slots, index, pcm if pcm is not None else self._zero, 1)

    def _put_run(self, slots: bytearray, index: int, pcm: bytes, count: int) -> None:
        """``count`` consecutive slots from ``index`` hold ``pcm`` (at most that many frames)."""
        fb = self.frame_bytes
        rel = index - self._base
        if rel * fb == len(slots) and len(pcm) == count * fb:
            slots += pcm  # the usual case: whole frames right after the last ones placed
            return
        if rel < 0:
            # Already written out; a very late frame is dropped rather than misplaced.
            skip = min(-rel, count)
            pcm, rel, count = pcm[skip * fb :], 0, count - skip
            if count <= 0:
                return
        start, end = rel * fb, (rel + count) * fb
        if start == len(slots) and len(pcm) >= end - start:
            slots += pcm[: end - start] if len(pcm) > end - start else pcm
            return
        if len(slots) < end:
            slots.extend(bytes(end - len(slots)))
        pcm = pcm[: end - start]
        slots[start : start + len(pcm)] = pcm
        if len(pcm) < end - start:
            slots[start + len(pcm) : end] = bytes(end - start - len(pcm))

    def _flush(self, upto: int, in_more: bytes | None = None,
               out_more: bytes | None = None) -> None:
        """Write the slots before ``upto``. ``in_more``/``out_more`` (both or neither):
        whole frames that follow what each leg holds, not yet appended to it (add_block)."""
        count = upto - self._base
        if count <= 0:
            if in_more is not None and out_more is not None:  # nothing to write: hold them
                self._in += in_more
                self._out += out_more
            return
        n = count * self.frame_bytes
        # Interleaved straight from the slots (a slot never filled is silence): once per
        # call per second, one C pass when the recording part passed native.interleave.
        if in_more is None or out_more is None or self._interleave_parts is None:
            data = self._interleave(self._in, self._out, n)
            del self._in[:n]
            del self._out[:n]
        else:
            data = self._interleave_parts(self._in, in_more, self._out, out_more, n)
            self._in = _rest(self._in, in_more, n)
            self._out = _rest(self._out, out_more, n)
        self._queue(upto, data)

    def _queue(self, upto: int, data: bytes) -> None:
        """The slots before ``upto`` are ``data`` (stereo): to the writer thread."""
        self._base = upto
        if self._queued_in - self._queued_out + len(data) > QUEUED_MAX_BYTES:
            RECORDING_BYTES_LOST.inc(len(data))  # the disk is this far behind: do not queue
            return
        self._queued_in += len(data)
        self.data_bytes += len(data)
        self._writer.submit(self._append, data)

    def _append(self, data: bytes) -> None:
        # On the writer thread. A chunk the disk refused is kept and goes out first next
        # time, so a transient full disk loses nothing; past RETRY_MAX_BYTES the oldest
        # audio is dropped (counted) rather than growing memory without bound.
        self._queued_out += len(data)
        if self.refused:
            RECORDING_BYTES_LOST.inc(len(data))
            return
        pending = bytes(self._unwritten) + data if self._unwritten else data
        try:
            fd = self._fd
            if fd is None:  # the create failed (or the file was closed): reopen it
                fd = self._fd = os.open(self.path, os.O_RDWR)
            end = _HEADER_SIZE + self.written_bytes
            if self._tail_dirty:  # a failed write's bytes may lie past the end: overwrite
                _write_at(fd, pending, end)
                os.ftruncate(fd, end + len(pending))
                self._tail_dirty = False
            else:
                _write_sparse(fd, pending, end)
            self.written_bytes += len(pending)
            # The header is rewritten after each append (crash safety); of its 44 bytes only
            # the two sizes change, packed into the kept copy rather than all of it anew.
            head = self._head
            _SIZE.pack_into(head, 4, 36 + self.written_bytes)
            _SIZE.pack_into(head, 40, self.written_bytes)
            _write_at(fd, head, 0)
            if self._unwritten:
                self._unwritten.clear()
            if self.error is not None:
                log.info("recording_writes_resumed", path=str(self.path))
                self.error = None
            if self.closed:
                self._release()
        except OSError as exc:
            self._tail_dirty = True
            self.error = str(exc)
            self._unwritten = bytearray(pending)
            excess = len(self._unwritten) - RETRY_MAX_BYTES
            if excess > 0:
                excess += (-excess) % 4  # whole stereo frames
                del self._unwritten[:excess]
                RECORDING_BYTES_LOST.inc(excess)
            raise

    @property
    def pending_bytes(self) -> int:
        """Audio the disk refused so far and that is still held for a retry."""
        return len(self._unwritten)

    def retry(self) -> None:
        """Try again to write what the disk refused (on the writer thread). Non-blocking."""
        if self._unwritten:
            self._writer.submit(self._append, b"")

    def close(self) -> None:
        """Write out everything up to the later of the two legs. Non-blocking."""
        if self.closed:
            return
        self._place_batch()
        if self._in_partial:
            pad = self._in_partial + bytes(self.frame_bytes - len(self._in_partial))
            self._put(self._in, self._in_pos, pad)
            self._in_pos += 1
            self._in_partial = b""
        self._flush(max(self._in_pos, self._out_pos))
        self.closed = True
        self._writer.submit(self._release)

    def _release(self) -> None:
        """Close the file once everything is on disk (writer thread); a refused tail keeps
        it open for ``retry``, whose successful write closes it."""
        if self._fd is not None and not self._unwritten:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def duration(self) -> float:
        """Seconds recorded so far (written or queued)."""
        return self.data_bytes / (self.rate * 4)


#: Where an append is silent, the file gets holes in whole chunks of this many bytes (at
#: offsets that are multiples of it): 32 KiB, a second of 8 kHz stereo.
HOLE_BYTES = 1 << 15
_ZEROS = bytes(HOLE_BYTES)


def _write_sparse(fd: int, data: bytes | bytearray, offset: int) -> None:
    """``data`` at ``offset``, the file's end, which it leaves at ``offset + len(data)``:
    the chunks of it that are all zero (:data:`HOLE_BYTES`, aligned in the file) are not
    written but left as holes, which read back as the same zeros.

    Silence both ways (an IVR waiting for input, a hold) then costs neither a copy into the
    page cache nor a disk write: at 1000 silent IVR calls about a third of the recordings'
    32 MB a second. Checking a chunk is one memcmp that stops at its first byte that is not
    zero, so audio costs next to nothing to check."""
    n = len(data)
    view = memoryview(data)
    zeros = _ZEROS
    run = -1  # where the run of chunks to write starts, -1 for none
    i = 0
    j = min(n, HOLE_BYTES - offset % HOLE_BYTES)
    while i < n:
        if zeros.startswith(view[i:j]):
            if run >= 0:
                _write_at(fd, view[run:i], offset + run)
                run = -1
        elif run < 0:
            run = i
        i, j = j, min(n, j + HOLE_BYTES)
    if run >= 0:
        _write_at(fd, view[run:], offset + run)
    else:  # the append ends in a hole: only the size says where
        os.ftruncate(fd, offset + n)


def _write_at(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """All of ``data`` at ``offset`` (``pwrite`` may write less than asked)."""
    done = os.pwrite(fd, data, offset)  # nearly always all of it: no memoryview to walk
    if done < len(data):
        view = memoryview(data)
        while done < len(data):
            done += os.pwrite(fd, view[done:], offset + done)


def repair_wav(path: str | Path) -> bool:
    """Fix the RIFF and data sizes of a WAV whose writer was killed. Returns True if changed.

    Only files this module wrote (a 44-byte canonical header) are touched.
    """
    path = Path(path)
    with open(path, "r+b") as fh:
        head = fh.read(_HEADER_SIZE)
        if len(head) < _HEADER_SIZE or head[:4] != b"RIFF" or head[36:40] != b"data":
            return False
        channels, rate = struct.unpack_from("<HI", head, 22)
        fh.seek(0, os.SEEK_END)
        size = fh.tell() - _HEADER_SIZE
        block = channels * 2
        size -= size % block
        (declared,) = struct.unpack_from("<I", head, 40)
        if declared == size:
            return False
        fh.truncate(_HEADER_SIZE + size)
        fh.seek(0)
        fh.write(_header(rate, channels, size))
    log.info("wav_repaired", path=str(path), declared=declared, actual=size)
    return True


def repair_all(directory: str | Path) -> int:
    """Repair every recording under ``directory``; returns how many were fixed."""
    fixed = 0
    for wav in Path(directory).rglob("*.wav"):
        try:
            fixed += repair_wav(wav)
        except OSError as exc:
            log.warning("wav_repair_failed", path=str(wav), error=str(exc))
    return fixed


def wav_seconds(path: str | Path) -> float | None:
    """Seconds of audio in a recording this module wrote, from the file's size (so a header
    a crash left stale does not matter); None when there is no such file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_SIZE)
            size = os.fstat(fh.fileno()).st_size - _HEADER_SIZE
    except OSError:
        return None
    if len(head) < _HEADER_SIZE or head[:4] != b"RIFF" or head[36:40] != b"data":
        return None
    channels, rate = struct.unpack_from("<HI", head, 22)
    if not channels or not rate:
        return None
    return max(0, size) // (int(channels) * 2) / int(rate)
