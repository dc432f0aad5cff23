"""A call's audio in blocks: what the C media path taped while it carried the call.

On the Python path an app hears each inbound frame (``on_audio``) and each outbound one
(``on_tick``) as it happens: two Python calls per call per 20 ms. While the C path carries a
call whose app takes blocks (``Session.media_ready``), it appends both directions to the
line's tape instead (``_wire.c``, ``LINE_TAPE``), and about once a second the server hands
the app one :class:`MediaBlock`. An app consumes it either all at once (the recorder and
the VAD do, with numpy) or, when the block is not the steady case, event by event in
exactly the order the Python path would have delivered them (:meth:`MediaBlock.events`), so
both paths produce the same result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from audiosocket.native import Taken, Tape, block_shape, take

__all__ = ["MediaBlock", "Run", "Shape", "Span", "block_from_tape"]

#: One delivery of the Python path: ``(sent, tick, pcm)`` (see :meth:`MediaBlock.events`).
Event = tuple[bool, int, bytes]


@dataclass(frozen=True)
class Run:
    """A steady stretch of a block: ``n`` frames went out on slots ``first_slot`` ..
    ``first_slot + n - 1`` and after each exactly one frame came in, on the next tick."""

    first_slot: int
    heard: bytes
    sent: bytes
    frame_bytes: int

    @property
    def frames(self) -> int:
        return len(self.sent) // self.frame_bytes

    @property
    def slots(self) -> np.ndarray:
        """The slot of each frame sent (as :attr:`MediaBlock.sent_ticks`)."""
        return np.arange(self.first_slot, self.first_slot + self.frames, dtype="<i8")

    @property
    def heard_ticks(self) -> np.ndarray:
        """The tick each frame was read at: the one after its slot."""
        return self.slots + 1

    @property
    def lead(self) -> tuple[int, int]:
        """``(Shape.lead_lo, Shape.lead_hi)`` of the run: every ``heard_ticks[k] - k`` is
        ``first_slot + 1``."""
        return self.first_slot + 1, self.first_slot + 1

    def events(self) -> Iterator[Event]:
        """The run frame by frame, in the Python path's order."""
        fb = self.frame_bytes
        for k in range(self.frames):
            yield True, self.first_slot + k, self.sent[k * fb : (k + 1) * fb]
            yield False, self.first_slot + k + 1, self.heard[k * fb : (k + 1) * fb]


class Shape(NamedTuple):
    """What a block's consumers check before taking it at once, computed in one pass (C)
    so the checks cost O(1) Python instead of a dozen numpy calls per call per second.

    ``lead_lo``/``lead_hi``: the least and greatest ``heard_ticks[k] - k`` (0, 0 when
    nothing was heard): frame ``k`` placed at ``pos + k`` leads its tick by ``pos + k -
    heard_ticks[k]``, which lies in ``[pos - lead_hi, pos - lead_lo]``.
    ``consecutive``: the slots step by exactly one. ``silent``: the heard audio is all zero
    (digital silence)."""

    lead_lo: int
    lead_hi: int
    consecutive: bool
    silent: bool


class Span(NamedTuple):
    """How much a block holds and where it lies: ``sent_frames`` frames went out on slots
    ``first_slot`` .. ``last_slot``; ``heard_frames`` came in, read at ticks ``first_heard``
    .. ``last_heard`` (all 0 for a direction with no frame)."""

    sent_frames: int
    first_slot: int
    last_slot: int
    heard_frames: int
    first_heard: int
    last_heard: int


def _ends(ticks: np.ndarray) -> tuple[int, int, int]:
    n = len(ticks)
    return (n, ticks.item(0), ticks.item(-1)) if n else (0, 0, 0)


class MediaBlock:
    """Both directions of one call's audio over a stretch of its timeline.

    ``heard``: the inbound frames' PCM (int16 LE, the call's rate), whole frames in order;
    ``heard_ticks[i]``: the call's tick (``Call.tick``) when frame ``i`` was read.
    ``sent``: the PCM of each frame that went out (silence included), in order;
    ``sent_ticks[i]``: the slot it went out on (what a tick listener is given).

    Made from bytes (``MediaBlock(frame_bytes=..., heard=..., ...)``), or from a tape by
    :func:`block_from_tape`: then the audio stays where the C path taped it and each part
    is made the first time a consumer reads it (the VAD reads ``heard``, the recorder none:
    it takes its stereo straight from the tape, :meth:`interleave`). Read-only.
    """

    __slots__ = ("_heard", "_heard_ticks", "_sent", "_sent_ticks", "_taken", "frame_bytes",
                 "shape", "span")

    frame_bytes: int
    #: The block's :class:`Shape` and :class:`Span`, computed once when it is made (every
    #: consumer reads them).
    shape: Shape
    span: Span

    def __init__(self, *, frame_bytes: int, heard: bytes, heard_ticks: np.ndarray,
                 sent: bytes, sent_ticks: np.ndarray) -> None:
        self.frame_bytes = frame_bytes
        self._taken: Taken | None = None
        self._heard: bytes | None = heard
        self._heard_ticks: np.ndarray | None = heard_ticks
        self._sent: bytes | None = sent
        self._sent_ticks: np.ndarray | None = sent_ticks
        self.shape = Shape(*block_shape(heard_ticks, sent_ticks, heard))
        self.span = Span(*_ends(sent_ticks), *_ends(heard_ticks))

    @classmethod
    def taken(cls, taken: Taken) -> MediaBlock:
        """A block of what :func:`audiosocket.native.take` took off a tape, read in place."""
        block = cls.__new__(cls)
        block.frame_bytes = taken.frame_bytes
        block._taken = taken
        block._heard = block._sent = None
        block._heard_ticks = block._sent_ticks = None
        span = taken.span
        block.span = Span(*span[:6])
        block.shape = Shape(*span[6:])
        return block

    @property
    def heard(self) -> bytes:
        if self._heard is None:
            assert self._taken is not None
            self._heard = self._taken.heard()
        return self._heard

    @property
    def heard_ticks(self) -> np.ndarray:
        if self._heard_ticks is None:
            assert self._taken is not None
            self._heard_ticks = np.frombuffer(self._taken.heard_ticks(), dtype="<i8")
        return self._heard_ticks

    @property
    def sent(self) -> bytes:
        if self._sent is None:
            assert self._taken is not None
            self._sent = self._taken.sent()
        return self._sent

    @property
    def sent_ticks(self) -> np.ndarray:
        if self._sent_ticks is None:
            assert self._taken is not None
            self._sent_ticks = np.frombuffer(self._taken.sent_ticks(), dtype="<i8")
        return self._sent_ticks

    @property
    def in_place(self) -> bool:
        """The audio is still where the C path taped it: :meth:`interleave` reads it there."""
        return self._taken is not None

    def interleave(self, held_in: bytearray, held_out: bytearray,
                   nbytes: int) -> tuple[bytes, bytearray, bytearray]:
        """The recorder's flush of this block in one pass, for a block :attr:`in_place`:
        the stereo of the first ``nbytes`` of ``held_in + heard`` (left) and ``held_out +
        sent`` (right), zeros past a short one, and what is left of each after them."""
        if self._taken is None:
            raise ValueError("the block's audio is not on a tape any more")
        return self._taken.interleave(held_in, held_out, nbytes)

    @property
    def heard_frames(self) -> int:
        return self.span.heard_frames

    @property
    def sent_frames(self) -> int:
        return self.span.sent_frames

    def steady(self) -> bool:
        """The common case: one frame sent per slot on consecutive slots, and one frame
        heard after each, on the tick that followed it (no gap, burst or resync)."""
        span = self.span
        n = span.sent_frames
        if n == 0 or span.heard_frames != n:
            return False
        # heard_ticks[k] == sent_ticks[0] + 1 + k for every k, and the slots consecutive.
        shape = self.shape
        s1 = span.first_slot + 1
        return shape.consecutive and shape.lead_lo == s1 and shape.lead_hi == s1

    def segments(self) -> Iterator[Run | Event]:
        """The block in the Python path's order, its steady stretches as :class:`Run`s
        and everything else (a tick with no frame or two, a resync, a frame read before the
        first slot) as single events. A consumer takes a run at once and the rest frame by
        frame; one late frame then costs a few Python calls, not the whole block's."""
        fb = self.frame_bytes
        s, h = self.sent_ticks, self.heard_ticks
        n, m = len(s), len(h)
        heard, sent = self.heard, self.sent
        if n == 0:
            yield from self.events()
            return
        hticks = h.tolist()
        lo = np.searchsorted(h, s + 1, "left")
        hi = np.searchsorted(h, s + 1, "right")
        one = (hi - lo) == 1
        # Slot i continues slot i - 1's run: the next slot, no frame read between them.
        cont = np.zeros(n, dtype=bool)
        cont[1:] = (np.diff(s) == 1) & (lo[1:] == hi[:-1])
        # Slot i and slot i + 1 are in one run: both read one frame and i + 1 continues i.
        link = np.zeros(n, dtype=bool)
        link[:-1] = one[:-1] & one[1:] & cont[1:]
        brk = np.flatnonzero(~link)  # a run that reaches i ends there
        lo_l, hi_l, s_l, one_l = lo.tolist(), hi.tolist(), s.tolist(), one.tolist()

        def heard_between(a: int, b: int) -> Iterator[Event]:
            for j in range(a, b):
                yield False, hticks[j], heard[j * fb : (j + 1) * fb]

        yield from heard_between(0, lo_l[0])  # read at or before the first slot
        i = 0
        b = 0  # index into brk: the first break at or after i
        brks = brk.tolist()
        while i < n:
            while brks[b] < i:
                b += 1
            if one_l[i]:
                k = brks[b] + 1  # the run is i .. brks[b] (a lone slot is a run of one)
                yield Run(s_l[i], heard[lo_l[i] * fb : hi_l[k - 1] * fb],
                          sent[i * fb : k * fb], fb)
            else:
                k = i + 1
                yield True, s_l[i], sent[i * fb : k * fb]
                yield from heard_between(lo_l[i], hi_l[i])
            nxt = lo_l[k] if k < n else m
            yield from heard_between(hi_l[k - 1], nxt)
            i = k

    def events(self) -> Iterator[tuple[bool, int, bytes]]:
        """``(sent, tick, pcm)`` in the order the Python path delivers them: a slot's
        outbound frame (``sent`` True, its slot), then what was read after it (``sent``
        False, the tick it was read at)."""
        fb = self.frame_bytes
        heard, sent = self.heard, self.sent
        hticks = self.heard_ticks.tolist()
        sticks = self.sent_ticks.tolist()
        i = j = 0
        while i < len(sticks) or j < len(hticks):
            # A frame read at tick T was read after slot T - 1 went out.
            if i < len(sticks) and (j >= len(hticks) or sticks[i] <= hticks[j] - 1):
                yield True, sticks[i], sent[i * fb : (i + 1) * fb]
                i += 1
            else:
                yield False, hticks[j], heard[j * fb : (j + 1) * fb]
                j += 1


def block_from_tape(tape: Tape, frame_bytes: int) -> MediaBlock | None:
    """Take what a line's tape holds (emptying it) as a block; None when it is empty."""
    taken = take(tape, frame_bytes)
    return None if taken is None else MediaBlock.taken(taken)
