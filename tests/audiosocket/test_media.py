"""MediaBlock: what the C path's tape hands an app, and the order a replay delivers it in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from audiosocket import native
from audiosocket.media import MediaBlock, block_from_tape

FB = 4  # tiny frames: the order is what matters here


def block(sent: list[int], heard: list[int]) -> MediaBlock:
    return MediaBlock(
        frame_bytes=FB,
        heard=b"".join(bytes([t % 256]) * FB for t in heard),
        heard_ticks=np.array(heard, dtype="<i8"),
        sent=b"".join(bytes([s % 256]) * FB for s in sent),
        sent_ticks=np.array(sent, dtype="<i8"),
    )


def test_steady_is_one_frame_each_way_per_tick() -> None:
    assert block([10, 11, 12], [11, 12, 13]).steady()
    assert not block([10, 11, 12], [11, 13, 13]).steady()  # two read at one tick
    assert not block([10, 11, 12], [11, 12]).steady()  # one missing
    assert not block([10, 12, 13], [11, 13, 14]).steady()  # a resync skipped a slot
    assert not block([10, 11, 12], [10, 11, 12]).steady()  # read before the send
    assert not block([], []).steady()


def test_events_interleave_as_the_python_path_delivers_them() -> None:
    b = block([10, 11, 12, 13], [11, 11, 14])
    order = [(sent, tick) for sent, tick, _ in b.events()]
    # Slot 10 goes out, then the two frames read at tick 11; slot 11... ; 14 after slot 13.
    assert order == [(True, 10), (False, 11), (False, 11), (True, 11), (True, 12),
                     (True, 13), (False, 14)]
    pcm = [p for _, _, p in b.events()]
    assert pcm[0] == bytes([10]) * FB and pcm[1] == bytes([11]) * FB


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=40))
def test_events_keep_every_frame_in_order(script: list[tuple[bool, int]]) -> None:
    """Whatever the tape holds, a replay hands over every frame once, each direction in
    its own order, and never a frame read at tick T before slot T - 1 went out."""
    sent: list[int] = []
    heard: list[int] = []
    slot = 0
    for sends, reads in script:
        if sends:
            sent.append(slot)
            slot += 1
        heard.extend([slot] * reads)
    events = list(block(sent, heard).events())
    assert [t for s, t, _ in events if s] == sent
    assert [t for s, t, _ in events if not s] == heard
    last_sent = -1
    for s, t, _ in events:
        if s:
            last_sent = t
        else:
            assert last_sent >= t - 1 or not [x for x in sent if x == t - 1]


@pytest.mark.skipif(not native.AVAILABLE, reason="the C media path is not built")
def test_block_from_tape_empties_the_tape() -> None:
    tape = native.new_tape(4)
    for k in range(2):
        tape.put(True, 4 + k, b"\x02" * 4)
        tape.put(False, 5 + k, b"\x01" * 4)
    b = block_from_tape(tape, 4)
    assert b is not None and b.steady() and b.heard_frames == 2 and b.sent_frames == 2
    assert b.heard == b"\x01" * 8 and b.sent == b"\x02" * 8
    assert len(tape) == 0
    assert block_from_tape(tape, 4) is None


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 3)), min_size=1, max_size=60),
       st.integers(0, 3))
def test_segments_are_the_events_with_steady_stretches_as_runs(
    script: list[tuple[int, int]], early: int
) -> None:
    """Whatever the tape holds (resyncs, ticks with no frame or several, frames read
    before the first slot), the segments replay exactly the events, in order, and every
    run is steady."""
    from audiosocket.media import Run

    sent: list[int] = []
    heard: list[int] = [0] * early
    slot = 1
    for advance, reads in script:
        slot += advance - 1
        sent.append(slot)
        slot += 1
        heard.extend([slot] * reads)
    b = block(sent, heard)
    flat: list[tuple[bool, int, bytes]] = []
    for seg in b.segments():
        if isinstance(seg, Run):
            assert seg.frames >= 1
            flat.extend(seg.events())
        else:
            flat.append(seg)
    assert flat == list(b.events())


def test_one_late_frame_leaves_the_rest_of_a_block_in_runs() -> None:
    from audiosocket.media import Run

    sent = list(range(10, 60))
    heard = [s + 1 for s in sent]
    heard[20] = heard[21]  # frame 20 read a tick late, together with frame 21
    b = block(sent, heard)
    runs = [seg for seg in b.segments() if isinstance(seg, Run)]
    assert sum(r.frames for r in runs) == 48 and len(runs) == 2


@pytest.mark.skipif(not native.AVAILABLE, reason="the C media path is not built")
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 3), st.booleans()), min_size=1,
                max_size=60))
def test_a_block_read_in_place_is_the_block_made_of_bytes(
    script: list[tuple[int, int, bool]]
) -> None:
    """A block from a tape keeps its audio where it was taped and makes each part only
    when read; every part, its shape and span, and its replay are the same as a block made
    of the same bytes."""
    tape = native.new_tape(FB)
    sent: list[int] = []
    heard: list[int] = []
    slot = 1
    for advance, reads, quiet in script:
        slot += advance - 1
        sent.append(slot)
        tape.put(True, slot, bytes(FB) if quiet else bytes([slot % 255 + 1]) * FB)
        slot += 1
        for _ in range(reads):
            heard.append(slot)
            tape.put(False, slot, bytes(FB) if quiet else bytes([slot % 255 + 1]) * FB)
    lazy = block_from_tape(tape, FB)
    assert lazy is not None and lazy.in_place
    assert lazy._heard is None and lazy._sent is None  # nothing made yet
    eager = MediaBlock(frame_bytes=FB, heard=lazy.heard, heard_ticks=lazy.heard_ticks,
                       sent=lazy.sent, sent_ticks=lazy.sent_ticks)
    assert not eager.in_place
    assert lazy.heard_ticks.tolist() == heard and lazy.sent_ticks.tolist() == sent
    assert (lazy.shape, lazy.span) == (eager.shape, eager.span)
    assert (lazy.heard_frames, lazy.sent_frames) == (len(heard), len(sent))
    assert lazy.steady() == eager.steady()
    assert list(lazy.events()) == list(eager.events())
    with pytest.raises(ValueError):
        eager.interleave(bytearray(), bytearray(), 0)  # its audio is no longer on a tape
