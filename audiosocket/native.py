"""The one door to the C media path (``audiosocket._wire``): its layout, events and tape.

Everything else imports this module, never ``_wire``: the extension is optional (built when
a C compiler was there at install time), and without it ``AVAILABLE`` is False and the
Python path carries every call. The C side exports its own layout (``STATE_FIELDS``, the
int64 fields of a line's state; ``LINE_FIELDS``, the items of a line tuple), so no offset is
written twice.
"""

from __future__ import annotations

from typing import Final

import numpy as np

try:
    from audiosocket import _wire
    from audiosocket._wire import Taken, Tape
except ImportError:  # built without a C compiler: the Python path does everything
    _wire = None  # type: ignore[assignment]
    Tape = object  # type: ignore[assignment,misc]
    Taken = object  # type: ignore[assignment,misc]

__all__ = [
    "AVAILABLE",
    "EVENT_NAMES",
    "LINE",
    "State",
    "Taken",
    "Tape",
    "block_shape",
    "block_shape_numpy",
    "field",
    "frame_clip",
    "frame_clip_py",
    "interleave",
    "interleave_parts",
    "new_tape",
    "pump",
    "take",
    "take_tape",
]

#: The C media path was built and can be used.
AVAILABLE: Final = _wire is not None

#: A line's state fields, as the C struct lays them out (all int64). Without the extension
#: no state is ever made; the names still let this module load.
_FIELDS: tuple[str, ...] = _wire.STATE_FIELDS if _wire is not None else ()
#: Each field's index among the int64s (State.q).
_IX: dict[str, int] = {name: i for i, name in enumerate(_FIELDS)}


class _Line:
    """Positions in a line tuple (``LINE_FIELDS`` from the C side)."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        pos = {name: i for i, name in enumerate(fields)}
        self.size = len(fields)
        self.STATE = pos.get("state", 0)
        self.OWNER = pos.get("owner", 1)
        self.PLAYOUT = pos.get("playout", 2)
        self.TAPE = pos.get("tape", 7)


LINE: Final = _Line(_wire.LINE_FIELDS if _wire is not None else ())

#: Event codes to the names used in ``audiosocket_native_events_total{event}``.
EVENT_NAMES: Final[dict[int, str]] = (
    {
        _wire.EV_CHUNK: "chunk",
        _wire.EV_EOF: "eof",
        _wire.EV_RECV_ERR: "recv_error",
        _wire.EV_SLOW: "slow_tick",
        _wire.EV_SHORT: "short_write",
        _wire.EV_SEND_ERR: "send_error",
        _wire.EV_APP_ERR: "app_error",
        _wire.EV_MARK: "mark",
        _wire.EV_WAKE: "wake",
    }
    if _wire is not None
    else {}
)


class State:
    """A line's state: the bytearray the C path reads and adds to, by field name.

    ``q`` is the same bytes as int64s in the machine's order, as the C struct lays them
    out: an item read or written through it is ~50 ns, where ``struct.unpack_from`` behind
    a method was ~300, and ``Playout.sync_counters`` reads a handful of fields per call
    several times a second at a thousand calls. The bytearray is never resized (the view
    would forbid it)."""

    __slots__ = ("buf", "q")

    def __init__(self, **values: int) -> None:
        if _wire is None:
            raise RuntimeError("the C media path is not built")
        self.buf = bytearray(8 * len(_FIELDS))
        self.q = memoryview(self.buf).cast("q")
        for name, value in values.items():
            self[name] = value

    def __getitem__(self, name: str) -> int:
        return self.q[_IX[name]]

    def __setitem__(self, name: str, value: int) -> None:
        self.q[_IX[name]] = value

    def take(self, name: str) -> int:
        """Read a counter and zero it (what the Python side folds in)."""
        q, i = self.q, _IX[name]
        value: int = q[i]
        if value:
            q[i] = 0
        return value


def field(name: str) -> int:
    """The index of state field ``name`` in :attr:`State.q` (-1 without the extension), for
    code that reads several fields per call in a hot loop."""
    return _IX.get(name, -1)


def new_tape(frame_bytes: int) -> Tape:
    """An empty tape for a line whose frames carry ``frame_bytes`` of audio: the C path
    records both directions on it (only with the extension, like every line)."""
    if _wire is None:
        raise RuntimeError("the C media path is not built")
    return _wire.Tape(frame_bytes)


def pump(
    lines: list[tuple[object, ...]], advance: int
) -> list[tuple[tuple[object, ...], int, object]]:
    """One tick of the C path over ``lines`` (see ``_wire.c``); the events it hands back."""
    assert _wire is not None
    return _wire.pump(lines, advance)


def take(tape: Tape, frame_bytes: int) -> Taken | None:
    """What ``tape`` holds, moved to a :class:`Taken` without a copy (its buffers change
    hands; the tape gets a set of the same capacity), leaving the tape empty; None when it
    is empty. The Taken's parts are read where they were taped: ``heard()``,
    ``heard_ticks()``, ``sent()``, ``sent_ticks()`` as :func:`take_tape` gives them, ``span``
    (counts, ends, lead, silence) from one pass, and ``interleave(held_in, held_out,
    nbytes)``, the recorder's stereo and what it keeps, straight from the taped frames."""
    if _wire is None:
        raise RuntimeError("the C media path is not built")
    return _wire.take(tape, frame_bytes)


def take_tape(tape: Tape, frame_bytes: int) -> tuple[bytes, bytes, bytes, bytes] | None:
    """What ``tape`` holds (inbound audio, inbound ticks, outbound audio, outbound slots),
    leaving it empty; None when it is empty. Each audio part has ``frame_bytes`` per tick,
    zeros where the frame was digital silence (taped as its tick alone); a part that is all
    such frames is a zero-filled object every tape shares (never written to: bytes). The
    tape keeps its capacity, so the next second refills it without reallocating."""
    if _wire is None:
        raise RuntimeError("the C media path is not built")
    return _wire.take_tape(tape, frame_bytes)


def block_shape(
    heard_ticks: np.ndarray, sent_ticks: np.ndarray, heard: bytes
) -> tuple[int, int, bool, bool]:
    """``(lead_lo, lead_hi, consecutive, silent)`` of a block (see ``MediaBlock.shape``):
    the least and greatest ``heard_ticks[k] - k`` (0, 0 when nothing was heard), whether
    ``sent_ticks`` step by exactly one, whether ``heard`` is all zero. One C pass when the
    extension is there (a dozen numpy calls per call per second otherwise)."""
    if _wire is not None:
        return _wire.block_shape(heard_ticks, sent_ticks, heard)
    return block_shape_numpy(heard_ticks, sent_ticks, heard)


def block_shape_numpy(
    heard_ticks: np.ndarray, sent_ticks: np.ndarray, heard: bytes
) -> tuple[int, int, bool, bool]:
    """:func:`block_shape` without the extension (and the reference its tests compare)."""
    m = len(heard_ticks)
    lo = hi = 0
    if m:
        offsets = heard_ticks - np.arange(m, dtype=heard_ticks.dtype)
        lo, hi = int(offsets.min()), int(offsets.max())
    consecutive = len(sent_ticks) <= 1 or bool(np.all(np.diff(sent_ticks) == 1))
    silent = not np.frombuffer(heard, dtype=np.uint8).any()
    return lo, hi, consecutive, silent


def frame_clip(
    header: bytes, pcm: bytes, frame_size: int, zeros_after: int, silence: bytes
) -> list[bytes]:
    """``pcm`` then ``zeros_after`` zero bytes as wire frames (``header`` + ``frame_size``
    bytes each, the last padded with zeros); a frame wholly in the zeros is ``silence``
    itself (one shared object). One C call per clip when the extension is there."""
    if _wire is not None:
        return _wire.frame_clip(header, pcm, frame_size, zeros_after, silence)
    return frame_clip_py(header, pcm, frame_size, zeros_after, silence)


def frame_clip_py(
    header: bytes, pcm: bytes, frame_size: int, zeros_after: int, silence: bytes
) -> list[bytes]:
    """:func:`frame_clip` without the extension (and the reference its tests compare)."""
    n = frame_size
    if n <= 0 or zeros_after < 0 or len(silence) != len(header) + n:
        raise ValueError("frame_size > 0, zeros_after >= 0, silence one whole frame")
    whole, rest = divmod(len(pcm), n)
    frames = [header + pcm[i * n : (i + 1) * n] for i in range(whole)]
    if rest:
        frames.append(header + pcm[whole * n :] + bytes(n - rest))
    count = -(-(len(pcm) + zeros_after) // n)
    frames.extend([silence] * (count - len(frames)))
    return frames


def interleave(left: bytes | bytearray, right: bytes | bytearray, nbytes: int) -> bytes:
    """Stereo 16-bit audio from two mono legs: ``2 * nbytes`` bytes, sample ``k`` of
    ``left`` then sample ``k`` of ``right``, from the first ``nbytes`` (even) of each, zeros
    where a leg is shorter; one C pass into the result (the recorder's flush). Only when
    :data:`AVAILABLE`: without the extension the recorder keeps its own numpy version
    (``helpers.recorder.interleave_legs``, also the reference the tests compare)."""
    assert _wire is not None
    return _wire.interleave(left, right, nbytes)


def interleave_parts(
    left_a: bytes | bytearray, left_b: bytes | bytearray,
    right_a: bytes | bytearray, right_b: bytes | bytearray, nbytes: int,
) -> bytes:
    """:func:`interleave` of ``left_a + left_b`` and ``right_a + right_b`` without joining
    them (the recorder's held frames and the block it adds). ``left_a`` and ``right_a`` must
    be whole samples. Only when :data:`AVAILABLE`."""
    assert _wire is not None
    return _wire.interleave_parts(left_a, left_b, right_a, right_b, nbytes)
