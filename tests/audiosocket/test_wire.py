"""The C media path (audiosocket._wire) on its own, over real loopback TCP sockets.

Each test builds a line the way Connection._attach_native does and calls ``pump`` as the
clock does; the server-level behaviour (detach and hand-back) is in test_server_native.py.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket.clock import Playout
from audiosocket.native import State, block_shape_numpy, frame_clip_py
from audiosocket.protocol import Dtmf, encode_audio, encode_frame
from helpers.recorder import interleave_legs

_wire = pytest.importorskip("audiosocket._wire")

HEADER = b"\x10\x01\x40"  # 8 kHz audio, 320 bytes


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


class Owner:
    def __init__(self) -> None:
        self._native_line: tuple[object, ...] | None = None


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, peer): a connected loopback TCP pair; ours is non-blocking."""
    ours, peer = make_pair()
    yield ours, peer
    ours.close()
    peer.close()


def make_line(
    sock: socket.socket,
    sink: Callable[..., Any],
    *,
    whole: bool = True,
    max_frames: int = 100,
    playout: Playout | None = None,
    tape: tuple[bytearray, ...] | None = None,
) -> tuple[tuple[object, ...], Playout, Owner]:
    playout = playout or Playout(Transport(), 8000)
    state = State(fd=sock.fileno(), frame_len=323, max_frames=max_frames, whole=int(whole),
                  mark_at=-1, wired=int(playout.wired))
    owner = Owner()
    line = (state.buf, owner, playout, playout._frames, sink, 8000, HEADER, tape,
            playout._silence)
    owner._native_line = line
    playout._native_state = state
    return line, playout, owner


def counters(line: tuple[object, ...]) -> tuple[int, ...]:
    """ticks, popped, audio_sent, frames_in."""
    state = State()
    state.buf[:] = line[0]  # type: ignore[index]
    return tuple(state[f] for f in ("ticks", "popped", "audio_sent", "frames_in"))


def frame(i: int) -> bytes:
    return encode_audio(bytes([i % 256]) * 320)


def recv_exactly(sock: socket.socket, n: int, timeout: float = 2.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def settle(seconds: float = 0.02) -> None:
    time.sleep(seconds)  # loopback delivery is immediate, but leave the kernel a moment


def test_steady_state_sends_queued_frame_and_hands_frames_to_the_sink(pair: Any) -> None:
    ours, peer = pair
    got: list[bytes] = []
    line, playout, _ = make_line(ours, got.append)
    playout.append_frame(frame(1))
    playout.append_frame(frame(2))
    peer.sendall(frame(7) + frame(8))
    settle()
    assert _wire.pump([line], 1) == []
    assert recv_exactly(peer, 323) == frame(1)
    assert got == [frame(7), frame(8)]
    assert counters(line) == (1, 1, 1, 2)  # ticks, popped, audio sent, frames in
    playout.sync_counters()
    assert (playout.ticks, playout.sent_total, playout.audio_frames_sent) == (1, 1, 1)
    assert playout._queued_seq == 2 and list(playout._frames) == [frame(2)]
    assert counters(line)[:3] == (0, 0, 0)  # folded and reset


def test_empty_queue_sends_silence_and_counts_no_audio(pair: Any) -> None:
    ours, peer = pair
    line, playout, _ = make_line(ours, list().append)
    for _ in range(3):
        assert _wire.pump([line], 1) == []
    assert recv_exactly(peer, 3 * 323) == playout._silence * 3
    assert counters(line) == (3, 0, 0, 0)


def test_non_whole_sink_gets_pcm_and_rate(pair: Any) -> None:
    ours, peer = pair
    calls: list[tuple[bytes, int]] = []
    line, _, _ = make_line(ours, lambda pcm, rate: calls.append((pcm, rate)), whole=False)
    peer.sendall(frame(3))
    settle()
    assert _wire.pump([line], 1) == []
    assert calls == [(bytes([3]) * 320, 8000)]


@pytest.mark.parametrize(
    "data",
    [frame(1)[:100], frame(1) + encode_frame(Dtmf("5")), b"\x12\x01\x40" + bytes(320)],
    ids=["partial_frame", "audio_then_dtmf", "other_kind"],
)
def test_anything_but_whole_frames_of_its_kind_is_handed_back_unread(
    pair: Any, data: bytes
) -> None:
    ours, peer = pair
    got: list[bytes] = []
    line, _, _ = make_line(ours, got.append)
    peer.sendall(data)
    settle()
    events = _wire.pump([line], 1)
    assert events == [(line, _wire.EV_CHUNK, data)]
    assert got == []  # nothing of it went to the app: the Python decoder gets it all
    assert counters(line)[3] == 0
    assert recv_exactly(peer, 323)  # this tick's frame went out all the same


def test_eof_is_reported(pair: Any) -> None:
    ours, peer = pair
    line, _, _ = make_line(ours, list().append)
    peer.shutdown(socket.SHUT_WR)
    settle()
    assert _wire.pump([line], 1) == [(line, _wire.EV_EOF, None)]


def test_reset_peer_is_a_send_error_and_no_read(pair: Any) -> None:
    ours, peer = pair
    line, _, _ = make_line(ours, list().append)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    settle()
    events = _wire.pump([line], 1)
    assert len(events) == 1
    assert events[0][:2] == (line, _wire.EV_SEND_ERR)
    assert events[0][2] in (errno.ECONNRESET, errno.EPIPE)
    assert counters(line)[0] == 0  # no tick counted for a frame that did not go out


def test_a_playout_that_is_not_plain_goes_to_the_python_tick(pair: Any) -> None:
    ours, peer = pair
    got: list[bytes] = []
    line, playout, _ = make_line(ours, got.append)
    playout.wired = False
    peer.sendall(frame(1))
    settle()
    assert _wire.pump([line], 1) == [(line, _wire.EV_SLOW, None)]
    assert got == [] and counters(line) == (0, 0, 0, 0)
    assert ours.recv(4096) == frame(1)  # not read: the Python path reads it after the hand-back


def test_over_the_bound_goes_to_the_python_tick(pair: Any) -> None:
    ours, _ = pair
    line, playout, _ = make_line(ours, list().append, max_frames=2)
    for i in range(3):
        playout.append_frame(frame(i))
    assert _wire.pump([line], 1) == [(line, _wire.EV_SLOW, None)]
    assert len(playout._frames) == 3


def test_short_write_hands_back_the_rest_and_counts_the_frame(pair: Any) -> None:
    ours, peer = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    line, playout, _ = make_line(ours, list().append, max_frames=100000)
    for i in range(5000):
        playout.append_frame(frame(i))
    events: list[Any] = []
    ticks = 0
    while not events and ticks < 5000:  # the peer never reads: the buffers fill up
        events = _wire.pump([line], 1)
        ticks += 1
    assert events, "the send buffer never filled"
    ((ev_line, code, rest),) = events
    assert ev_line is line and code == _wire.EV_SHORT
    assert isinstance(rest, bytes) and 0 < len(rest) <= 323
    assert frame(ticks - 1).endswith(rest)
    assert counters(line)[:3] == (ticks, ticks, ticks)


def test_a_raising_sink_is_reported_with_its_exception(pair: Any) -> None:
    ours, peer = pair
    boom = ValueError("boom")

    def sink(_: bytes) -> None:
        raise boom

    line, _, _ = make_line(ours, sink)
    peer.sendall(frame(1) + frame(2))
    settle()
    assert _wire.pump([line], 1) == [(line, _wire.EV_APP_ERR, boom)]
    assert counters(line)[3] == 1


def test_a_sink_that_ends_another_line_stops_its_read(pair: Any) -> None:
    ours, peer = pair
    srv = socket.create_server(("127.0.0.1", 0))
    peer2 = socket.create_connection(srv.getsockname())
    ours2, _ = srv.accept()
    srv.close()
    ours2.setblocking(False)
    try:
        line2, _, owner2 = make_line(ours2, list().append)

        def sink(_: bytes) -> None:
            owner2._native_line = None  # as Connection._detach_native does

        line1, _, _ = make_line(ours, sink)
        peer.sendall(frame(1))
        peer2.sendall(frame(2))
        settle()
        assert _wire.pump([line1, line2], 1) == []
        assert ours2.recv(4096) == frame(2)  # line 2 was detached: its bytes stay unread
    finally:
        ours2.close()
        peer2.close()


def test_advance_moves_the_timeline_and_sends_one_frame(pair: Any) -> None:
    ours, peer = pair
    line, playout, _ = make_line(ours, list().append)
    assert _wire.pump([line], 5) == []
    playout.sync_counters()
    assert playout.ticks == playout.sent_total == 5
    assert recv_exactly(peer, 323) == playout._silence
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1)


def test_bad_arguments_raise() -> None:
    with pytest.raises(TypeError):
        _wire.pump("lines", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _wire.pump([], 0)
    with pytest.raises(TypeError):
        _wire.pump([(1, 2)], 1)
    bad_state = (bytearray(8), Owner(), None, None, None, 8000, HEADER, None)
    with pytest.raises(TypeError):
        _wire.pump([bad_state], 1)
    assert _wire.STATE_SIZE == len(State().buf) == 8 * len(_wire.STATE_FIELDS)


def relay_line(sock: socket.socket, target: int = 4) -> tuple[tuple[object, ...], Playout]:
    """A line as the server builds it for echo: the sink is the playout queue's append."""
    playout = Playout(Transport(), 8000, live_ms=target * 20)
    state = playout.native_state(sock.fileno(), 323, True)
    line = (state.buf, Owner(), playout, playout._frames, playout.append_frame, 8000, HEADER,
            None, playout._silence)
    line[1]._native_line = line  # type: ignore[attr-defined]
    playout._native_state = state
    return line, playout


def test_a_relay_sends_what_arrived_since_the_last_tick_in_this_tick(pair: Any) -> None:
    """Issue 12.4: reading after the send echoed every frame a tick late, behind a silent
    frame inserted while the audio waited in the socket."""
    ours, peer = pair
    line, playout = relay_line(ours)
    assert _wire.pump([line], 1) == []  # nothing yet: silence
    for i in range(1, 6):
        peer.sendall(frame(i))
        settle()
        assert _wire.pump([line], 1) == []
    got = recv_exactly(peer, 6 * 323)
    assert got == playout._silence + b"".join(frame(i) for i in range(1, 6))
    playout.sync_counters()
    assert playout.underruns == 0 and not playout._frames


def test_a_gap_in_a_relayed_stream_is_an_underrun_and_a_pause_is_not(pair: Any) -> None:
    ours, peer = pair
    line, playout = relay_line(ours)
    script = [1, 1, 0, 1, 0, 0, 1] + [0] * 10 + [1]  # a frame arrives before the tick, or not
    for k, arrives in enumerate(script):
        if arrives:
            peer.sendall(frame(k))
            settle()
        assert _wire.pump([line], 1) == []
    playout.sync_counters()
    assert playout.underruns == 3  # the holes of 1 and 2 ticks; the 10-tick pause is not one
    assert playout.audio_frames_sent == sum(script)


def test_a_relay_over_its_live_target_is_trimmed_as_the_python_tick_trims_it(
    pair: Any,
) -> None:
    """A burst after a stall: the C path drops the oldest frames above the live target and
    sends the next, counting them as Playout.tick does; the line stays on the C path."""
    ours, peer = pair
    line, playout = relay_line(ours, target=3)
    burst = [frame(i) for i in range(8)]
    peer.sendall(b"".join(burst))
    settle()
    assert _wire.pump([line], 1) == []
    assert recv_exactly(peer, 323) == frame(5)
    playout.sync_counters()
    # The Python tick on the same burst, for reference.
    ref = Playout(Transport(), 8000, live_ms=3 * 20)
    for f in burst:
        ref.append_frame(f)
    ref.tick()
    assert ref.transport.written == [frame(5)]  # type: ignore[attr-defined]
    assert (playout.live_dropped, list(playout._frames)) == (5, burst[6:])
    assert (ref.live_dropped, list(ref._frames)) == (5, burst[6:])
    assert (playout._sent_seq, playout.audio_frames_sent) == (ref._sent_seq, 1)
    assert ref.audio_frames_sent == 1


def test_a_backlog_of_several_buffers_is_read_in_one_tick(pair: Any) -> None:
    """A 2.4 s stall's worth of frames (more than one read's buffer): read whole in the
    tick, trimmed to the live target, and the line stays on the C path."""
    ours, peer = pair
    line, playout = relay_line(ours, target=3)
    peer.sendall(b"".join(frame(i) for i in range(120)))
    settle(0.05)
    assert _wire.pump([line], 1) == []
    assert recv_exactly(peer, 323) == frame(117)
    assert _wire.pump([line], 1) == []
    assert recv_exactly(peer, 323) == frame(118)
    playout.sync_counters()
    assert playout.live_dropped == 117 and list(playout._frames) == [frame(119)]
    assert counters(line)[3] == 120  # every frame read went to the sink
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1)  # one frame a tick, no burst out


def test_a_backlog_past_the_reads_a_tick_allows_goes_to_the_python_side(pair: Any) -> None:
    """Four buffers a tick at most: a peer far ahead of real time is the Python path's
    (its limits are tested there); what the C path took is queued, in order, first."""
    ours, peer = pair
    line, playout = relay_line(ours, target=1000)
    per_read = 16384 // 323
    total = 4 * per_read + 10
    peer.sendall(b"".join(frame(i) for i in range(total)))
    settle(0.05)
    events = _wire.pump([line], 1)
    assert events == [(line, _wire.EV_CHUNK,
                       b"".join(frame(i) for i in range(3 * per_read, 4 * per_read))),
                      (line, _wire.EV_SLOW, None)]
    assert list(playout._frames) == [frame(i) for i in range(3 * per_read)]
    assert len(ours.recv(1 << 16)) == 10 * 323  # the rest is still in the socket


def test_a_relay_read_that_is_not_clean_hands_back_the_read_then_the_write(pair: Any) -> None:
    ours, peer = pair
    line, _ = relay_line(ours)
    data = frame(1) + b"\x10\x00\x18" + bytes(24)  # a whole frame and a short one
    peer.sendall(data)
    settle()
    assert _wire.pump([line], 1) == [(line, _wire.EV_CHUNK, data), (line, _wire.EV_SLOW, None)]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1)  # nothing sent: the Python side writes this tick's frame


# -- the tape (apps that take blocks), playback marks, waking ------------------------------

def taped_line(sock: socket.socket, *, wake: bool = False, read_ticks: int = 1) -> tuple[
    tuple[object, ...], Playout, _wire.Tape
]:
    from audiosocket.native import new_tape

    playout = Playout(Transport(), 8000)
    state = playout.native_state(sock.fileno(), 323, False, wake=wake, read_ticks=read_ticks)
    tape = new_tape(320)
    owner = Owner()
    line = (state.buf, owner, playout, playout._frames, None, 8000, HEADER, tape,
            playout._silence)
    owner._native_line = line
    playout._native_state = state
    return line, playout, tape


def test_a_taped_line_records_both_directions_with_their_ticks(pair: Any) -> None:
    ours, peer = pair
    line, playout, tape = taped_line(ours)
    playout._native_state["now"] = 7  # type: ignore[index]  # a call already 7 ticks old
    playout.append_frame(frame(9))
    for k in range(3):
        if k != 1:  # nothing arrives before the second tick
            peer.sendall(frame(k + 1))
        if k == 2:
            peer.sendall(frame(4))  # two at once on the third
        settle()
        assert _wire.pump([line], 1) == []
    # On the tape the line's own silence is its slot alone; the zeros come back when the
    # tape is taken.
    assert len(tape) == 6  # three frames each way
    assert tape.sizes() == (3 * 320, 3 * 8, 320, 3 * 8)
    taken = _wire.take_tape(tape, 320)
    assert taken is not None
    in_pcm, in_ticks, out_pcm, out_ticks = taken
    assert np.frombuffer(out_ticks, "<i8").tolist() == [7, 8, 9]
    assert out_pcm == frame(9)[3:] + bytes(640)  # the queued frame, then silence
    assert np.frombuffer(in_ticks, "<i8").tolist() == [8, 10, 10]
    assert bytes(in_pcm) == frame(1)[3:] + frame(3)[3:] + frame(4)[3:]
    assert counters(line) == (3, 1, 1, 3)  # ticks, popped, sent, frames in
    assert recv_exactly(peer, 3 * 323) == frame(9) + playout._silence * 2


def test_a_taped_line_reads_every_read_ticks_in_a_phase_set_by_its_fd(pair: Any) -> None:
    """With ``read_ticks`` 2 the socket is read on every second tick (the tick plus the fd
    even), so what arrived on the tick between waits in the kernel; a read finds both frames
    and stamps them with its tick, as a backlog. Every tick still sends its frame."""
    ours, peer = pair
    line, playout, tape = taped_line(ours, read_ticks=2)
    start = 5 + ours.fileno() % 2  # (start + fd) is odd: the first tick does not read
    playout._native_state["now"] = start  # type: ignore[index]
    waiting = []
    for k in range(6):
        peer.sendall(frame(k + 1))
        settle()
        assert _wire.pump([line], 1) == []
        waiting.append(len(tape))
    # Entries after each tick: its sent frame, and both heard frames on the odd ticks.
    assert waiting == [1, 4, 5, 8, 9, 12]
    taken = _wire.take_tape(tape, 320)
    assert taken is not None
    in_pcm, in_ticks, _, out_ticks = taken
    assert bytes(in_pcm) == b"".join(frame(k + 1)[3:] for k in range(6))
    s = start
    assert np.frombuffer(in_ticks, "<i8").tolist() == [s + 2, s + 2, s + 4, s + 4, s + 6, s + 6]
    assert np.frombuffer(out_ticks, "<i8").tolist() == list(range(s, s + 6))
    assert recv_exactly(peer, 6 * 323) == playout._silence * 6
    # A line without a tape (a relay, a Python sink) reads every tick whatever it says.
    got: list[bytes] = []
    plain, _, _ = make_line(ours, got.append)
    plain_state = State()
    plain_state.buf[:] = plain[0]  # type: ignore[index]
    assert plain_state["read_ticks"] == 0
    peer.sendall(frame(7))
    settle()
    assert _wire.pump([plain], 1) == []
    assert got == [frame(7)]


def test_a_taped_line_reads_a_backlog_whole_onto_its_tape(pair: Any) -> None:
    from audiosocket.native import take_tape

    ours, peer = pair
    line, _, tape = taped_line(ours)
    data = [bytes([i % 250 + 1]) * 320 for i in range(120)]
    peer.sendall(b"".join(encode_audio(d) for d in data))
    settle(0.05)
    assert _wire.pump([line], 1) == []
    taken = take_tape(tape, 320)
    assert taken is not None
    in_pcm, in_ticks = taken[0], np.frombuffer(taken[1], "<i8")
    assert in_pcm == b"".join(data)
    assert (in_ticks == 1).all()  # all read at this tick, after its frame went out


def test_a_queued_frame_is_taped_by_reference_and_let_go_when_taken(pair: Any) -> None:
    """A prompt's frame goes on the tape as a reference (its payload is copied only by
    take_tape, in order with what was copied); a short one is copied and padded."""
    import sys

    ours, peer = pair
    line, playout, tape = taped_line(ours)
    prompt = [frame(20 + k) for k in range(3)]
    short = encode_audio(b"\x07\x00" * 80)  # 160 bytes: the tape pads it to 320
    held = [sys.getrefcount(f) for f in prompt]
    for f in [*prompt, short]:
        playout.append_frame(f)
    for k in range(5):
        peer.sendall(frame(k + 1))
        settle()
        assert _wire.pump([line], 1) == []
    # Queued frames popped and sent: each prompt frame is now held by the tape alone.
    assert [sys.getrefcount(f) for f in prompt] == [n + 1 for n in held]
    assert tape.sizes() == (5 * 320, 5 * 8, 4 * 320, 5 * 8)
    taken = _wire.take_tape(tape, 320)
    assert taken is not None
    assert taken[2] == b"".join(f[3:] for f in prompt) + b"\x07\x00" * 80 + bytes(160 + 320)
    assert taken[0] == b"".join(frame(k + 1)[3:] for k in range(5))
    assert [sys.getrefcount(f) for f in prompt] == held
    # A tape dropped while it holds frames lets them go.
    playout.append_frame(prompt[0])
    peer.sendall(frame(9))
    settle()
    assert _wire.pump([line], 1) == []
    assert sys.getrefcount(prompt[0]) == held[0] + 1
    line[1]._native_line = None  # type: ignore[attr-defined]  # the owner let go of the line
    del line, tape
    assert sys.getrefcount(prompt[0]) == held[0]


def test_a_direction_of_only_silence_is_one_shared_zero_object() -> None:
    """A silent caller's heard audio (or a line that sent only silence) comes back as a
    zero-filled bytes object every tape shares: nothing zeroed per block, and block_shape
    knows it is silent without reading it. One sound frame makes it a copy of its own."""
    from audiosocket.native import block_shape, new_tape, take_tape

    quiet, z = bytes(320), bytes(320)
    tapes = [new_tape(320) for _ in range(3)]
    for k in range(100):
        for tape in tapes[:2]:
            tape.put(True, k, z)
            tape.put(False, k + 1, quiet)
        tapes[2].put(True, k, z)
        tapes[2].put(False, k + 1, frame(5)[3:] if k == 50 else quiet)
    a, b, c = (take_tape(t, 320) for t in tapes)
    assert a is not None and b is not None and c is not None
    assert a[0] is b[0] and a[2] is b[2]  # one object, heard and sent alike (same size)
    assert a[0] == bytes(100 * 320) and a[2] == bytes(100 * 320)
    assert c[2] is a[2]  # its own silence out: shared too
    assert c[0] is not a[0] and c[0] == bytes(50 * 320) + frame(5)[3:] + bytes(49 * 320)
    ticks = np.frombuffer(a[1], "<i8")
    assert ticks.tolist() == list(range(1, 101))
    assert block_shape(ticks, np.frombuffer(a[3], "<i8"), a[0])[3] is True
    assert block_shape(np.frombuffer(c[1], "<i8"), np.frombuffer(c[3], "<i8"), c[0])[3] is False
    # Another size (a block one frame longer) gets its own shared object; the first stays.
    d = new_tape(320)
    for k in range(101):
        d.put(False, k + 1, quiet)
    taken = take_tape(d, 320)
    assert taken is not None and taken[0] == bytes(101 * 320) and taken[2] == b""
    e = new_tape(320)
    for k in range(100):
        e.put(False, k + 1, quiet)
    again = take_tape(e, 320)
    assert again is not None and again[0] is a[0]


def test_taking_a_tape_empties_it_and_keeps_its_capacity(pair: Any) -> None:
    """A second of frames, taken, then another: the same bytes in order, and the second
    second appends into the buffers the first one grew (no realloc churn per second)."""
    from audiosocket.native import take_tape

    ours, peer = pair
    line, _, tape = taped_line(ours)
    for second in range(2):
        for k in range(50):
            peer.sendall(frame(50 * second + k))
            settle(0.02 if k == 49 else 0.001)  # a late frame is read next tick; not the last
            assert _wire.pump([line], 1) == []
        held = tape.capacity
        taken = take_tape(tape, 320)
        assert taken is not None
        in_pcm, in_ticks, out_pcm, out_ticks = taken
        assert in_pcm == b"".join(frame(50 * second + k)[3:] for k in range(50))
        sent_at = np.frombuffer(out_ticks, "<i8").tolist()
        assert sent_at == list(range(50 * second, 50 * second + 50))
        assert out_pcm == bytes(50 * 320)  # silence, taped as slots alone
        assert len(in_ticks) == 50 * 8
        assert len(tape) == 0 and tape.sizes() == (0, 0, 0, 0)
        assert tape.capacity == held  # capacity kept
        assert held >= 50 * 320
    assert take_tape(tape, 320) is None


def test_a_waking_line_reports_the_first_sound_and_tapes_it(pair: Any) -> None:
    ours, peer = pair
    line, _, tape = taped_line(ours, wake=True)
    peer.sendall(encode_audio(bytes(320)))  # digital silence: no wake
    settle()
    assert _wire.pump([line], 1) == []
    loud = encode_audio(b"\x01\x00" + bytes(318))  # one sample of 1 is sound
    peer.sendall(loud + encode_audio(bytes(320)))
    settle()
    assert _wire.pump([line], 1) == [(line, _wire.EV_WAKE, None)]
    # All of it on the tape, for the app to take first; the silent frames as their ticks
    # alone (no bytes copied), given back as zeros.
    assert tape.sizes()[:2] == (320, 3 * 8)
    taken = _wire.take_tape(tape, 320)
    assert taken is not None
    assert taken[0] == bytes(320) + b"\x01\x00" + bytes(318) + bytes(320)
    assert np.frombuffer(taken[1], dtype="<i8").tolist() == [1, 2, 2]  # read after ticks 1, 2


def test_digital_silence_is_taped_as_its_tick_alone_and_taken_back_as_zeros(
    pair: Any,
) -> None:
    """A silent caller's frames cost the tape 8 bytes each, not 328; what take_tape gives
    is the same as if every frame had been copied: zeros where the silence was, in order
    with the sound around it, on the ticks they were read at."""
    ours, peer = pair
    line, _, tape = taped_line(ours)
    pcm = [bytes(320), b"\x00" * 318 + b"\x05\x00", bytes(320), bytes(320)]
    for p in pcm:
        peer.sendall(encode_audio(p))
        settle()
        assert _wire.pump([line], 1) == []
    assert tape.sizes()[:2] == (320, 4 * 8)
    taken = _wire.take_tape(tape, 320)
    assert taken is not None
    assert taken[0] == b"".join(pcm)
    assert np.frombuffer(taken[1], dtype="<i8").tolist() == [1, 2, 3, 4]
    assert len(tape) == 0


def test_a_playback_mark_is_reported_and_the_line_keeps_going(pair: Any) -> None:
    ours, _peer = pair

    async def run() -> None:
        line, playout, tape = taped_line(ours)
        pb = playout.play(b"\x11\x22" * 160 * 3)  # a three-frame clip
        assert playout.wired and not playout.plain
        events = _wire.pump([line], 1)
        assert events == [(line, _wire.EV_MARK, None)]  # its first frame: started
        playout.sync_counters()
        playout._resolve_marks()
        assert pb.started.done() and not pb.done()
        assert _wire.pump([line], 1) == []
        assert _wire.pump([line], 1) == [(line, _wire.EV_MARK, None)]  # its last frame
        playout.sync_counters()
        playout._resolve_marks()
        assert pb.done() and await pb is True
        assert playout.plain and _wire.pump([line], 1) == []  # then silence
        # The clip; the silence after it is its slot alone.
        assert tape.sizes()[2:] == (3 * 320, 4 * 8)

    import asyncio

    asyncio.run(run())


@given(
    steps=st.lists(st.integers(0, 3), max_size=120),
    sent_steps=st.lists(st.integers(1, 3), max_size=120),
    start=st.integers(-5, 10**12),
    noise=st.lists(st.integers(0, 319), max_size=3),
    frames=st.integers(0, 4),
)
@settings(max_examples=200, deadline=None)
def test_block_shape_is_the_numpy_reference(
    steps: list[int], sent_steps: list[int], start: int, noise: list[int], frames: int
) -> None:
    """``_wire.block_shape`` (one C pass) against the numpy code the Python side would run:
    the same leads, the same verdicts on consecutive slots and digital silence."""
    heard_ticks = np.cumsum([start, *steps], dtype="<i8")
    sent_ticks = np.cumsum([start, *sent_steps], dtype="<i8")
    heard = bytearray(frames * 320)
    for at in noise:  # a single non-zero byte anywhere makes it sound, the last one too
        if heard:
            heard[at % len(heard)] = 1
    args = (heard_ticks, sent_ticks, bytes(heard))
    assert _wire.block_shape(*args) == block_shape_numpy(*args)
    empty = np.zeros(0, dtype="<i8")
    assert _wire.block_shape(empty, empty, b"") == block_shape_numpy(empty, empty, b"")



@given(
    pcm_len=st.integers(0, 2000).map(lambda n: n - n % 2),
    zeros=st.integers(0, 1500),
    size=st.sampled_from([(320, b"\x10\x01\x40"), (640, b"\x10\x02\x80"), (160, b"\x13\x00\xa0")]),
)
@settings(max_examples=200, deadline=None)
def test_frame_clip_is_the_python_reference(
    pcm_len: int, zeros: int, size: tuple[int, bytes]
) -> None:
    """``_wire.frame_clip`` against the Python framing: the same frames, and frames wholly
    in the pause are the silence object itself."""
    n, header = size
    pcm = bytes(range(1, 256)) * (pcm_len // 255 + 1)
    pcm = pcm[:pcm_len]
    silence = header + bytes(n)
    got = _wire.frame_clip(header, pcm, n, zeros, silence)
    want = frame_clip_py(header, pcm, n, zeros, silence)
    assert got == want
    assert [f is silence for f in got] == [f is silence for f in want]
    assert b"".join(f[3:] for f in got).rstrip(b"\x00") == pcm.rstrip(b"\x00")
    assert len(got) == -(-(pcm_len + zeros) // n)


def test_frame_clip_refuses_a_silence_of_the_wrong_size() -> None:
    with pytest.raises(ValueError):
        _wire.frame_clip(HEADER, bytes(320), 320, 0, bytes(10))
    with pytest.raises(ValueError):
        frame_clip_py(HEADER, bytes(320), 320, 0, bytes(10))


@given(
    left=st.binary(max_size=80),
    right=st.binary(max_size=80),
    samples=st.integers(0, 48),
    as_bytearray=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_interleave_is_the_numpy_reference(
    left: bytes, right: bytes, samples: int, as_bytearray: bool
) -> None:
    """``_wire.interleave`` (one C pass, eight samples at a time) against numpy: legs
    longer, shorter (zeros past them) or odd-sized, from bytes or the recorder's bytearrays."""
    legs = (bytearray(left), bytearray(right)) if as_bytearray else (left, right)
    nbytes = 2 * samples
    got = _wire.interleave(*legs, nbytes)
    assert type(got) is bytes and len(got) == 2 * nbytes
    assert got == interleave_legs(*legs, nbytes)
    if isinstance(legs[0], bytearray):
        legs[0].extend(b"\x00\x00")  # no buffer left exported: the leg can still resize


@given(
    left_a=st.integers(0, 40), left_b=st.binary(max_size=80),
    right_a=st.integers(0, 40), right_b=st.binary(max_size=80),
    samples=st.integers(0, 96),
)
@settings(max_examples=300, deadline=None)
def test_interleave_parts_is_interleave_of_the_joined_legs(
    left_a: int, left_b: bytes, right_a: int, right_b: bytes, samples: int
) -> None:
    """Each leg as the recorder's held frames (a bytearray of whole samples) and the block
    after them: the same bytes as joining them first, whichever part the run ends in, with
    zeros past a short leg."""
    la = bytearray(range(2 * left_a))
    ra = bytearray(255 - i for i in range(2 * right_a))
    nbytes = 2 * samples
    got = _wire.interleave_parts(la, left_b, ra, right_b, nbytes)
    assert got == _wire.interleave(bytes(la) + left_b, bytes(ra) + right_b, nbytes)
    assert got == interleave_legs(bytes(la) + left_b, bytes(ra) + right_b, nbytes)
    la.extend(b"\x00\x00")  # no buffer left exported: the held leg can still resize
    with pytest.raises(ValueError):  # a first part that ends mid-sample
        _wire.interleave_parts(b"\x01", b"", b"", b"", 2)


def test_interleave_rejects_odd_or_negative_sizes() -> None:
    for nbytes in (-2, 3):
        with pytest.raises(ValueError):
            _wire.interleave(b"", b"", nbytes)
        with pytest.raises(ValueError):
            interleave_legs(b"", b"", nbytes)
    with pytest.raises(TypeError):
        _wire.interleave(b"", b"", 2.0)  # type: ignore[arg-type]


@given(
    frames=st.lists(
        st.tuples(st.booleans(), st.integers(0, 2**40),
                  st.one_of(st.just(b""), st.binary(max_size=12), st.sampled_from([bytes(8)]))),
        max_size=80,
    ),
    takes=st.integers(1, 3),
)
def test_a_tape_gives_back_each_direction_as_taped(
    frames: list[tuple[bool, int, bytes]], takes: int
) -> None:
    """Whatever is put on a tape, in whatever order, taking it gives each direction's
    frames in order, each cut or padded with zeros to frame_bytes, with its tick; digital
    silence (kept as its tick alone) comes back as zeros. Taken in pieces or at once."""
    fb = 8
    tape = _wire.Tape(fb)
    got: list[list[bytes]] = [[], [], [], []]
    cut = len(frames) // takes or 1
    for i in range(0, max(len(frames), 1), cut):
        for sent, tick, pcm in frames[i : i + cut]:
            tape.put(sent, tick, pcm)
        taken = _wire.take_tape(tape, fb)
        assert (taken is None) == (not frames[i : i + cut])
        if taken is not None:
            for part, piece in zip(got, taken, strict=True):
                part.append(piece)
        assert len(tape) == 0
    want: list[list[bytes]] = [[], [], [], []]
    for sent, tick, pcm in frames:
        side = 2 if sent else 0
        want[side].append((pcm + bytes(fb))[:fb])
        want[side + 1].append(tick.to_bytes(8, "little"))
    assert [b"".join(p) for p in got] == [b"".join(p) for p in want]


def test_a_tape_refuses_another_frame_size() -> None:
    tape = _wire.Tape(320)
    tape.put(False, 1, b"\x01\x00" * 160)
    with pytest.raises(ValueError, match="320"):
        _wire.take_tape(tape, 640)
    assert len(tape) == 1  # nothing taken


def test_a_taped_line_taken_over_by_its_write_hands_back_what_it_read(pair: Any) -> None:
    """A taped line reads before it sends (the ACK then leaves with the frame). When the
    write hands the line to the Python side, what was read goes with it as raw bytes after
    the write's event, and nothing is taped: no byte is lost or taken twice."""
    ours, peer = pair
    line, playout, tape = taped_line(ours)
    playout.wired = False  # this tick's write needs Playout.tick()
    data = frame(1) + frame(2)
    peer.sendall(data)
    settle()
    assert _wire.pump([line], 1) == [(line, _wire.EV_SLOW, None), (line, _wire.EV_CHUNK, data)]
    assert len(tape) == 0
    assert counters(line) == (0, 0, 0, 0)  # nothing sent nor handed to the app by C


def test_a_queue_that_is_not_exactly_a_deque_is_asked_the_generic_way(pair: Any) -> None:
    """The pump reads a deque's length and pops it through deque's own C function; a
    subclass may override popleft, so it gets the ordinary method call."""
    import collections

    class CountingDeque(collections.deque[bytes]):
        pops = 0

        def popleft(self) -> bytes:
            CountingDeque.pops += 1
            return super().popleft()

    ours, peer = pair
    playout = Playout(Transport(), 8000)
    state = playout.native_state(ours.fileno(), 323, True, wake=False)
    queue = CountingDeque([frame(1), frame(2)])
    owner = Owner()
    line = (state.buf, owner, playout, queue, list().append, 8000, HEADER, None,
            playout._silence)
    owner._native_line = line
    for _ in range(3):
        assert _wire.pump([line], 1) == []
    assert CountingDeque.pops == 2
    assert recv_exactly(peer, 3 * 323) == frame(1) + frame(2) + playout._silence
    assert counters(line) == (3, 2, 2, 0)


def test_many_lines_of_every_kind_in_one_pump(pair: Any) -> None:
    """Eleven lines in one call, taped or not, playing or silent, in an order that puts
    every kind before and after every other: the pump looks a few lines ahead of the one
    it serves, and each line still gets exactly its own frame and its own reads."""
    pairs = [pair] + [make_pair() for _ in range(10)]
    lines, playouts, tapes, peers = [], [], [], []
    for k, (ours, peer) in enumerate(pairs):
        if k % 3 == 0:
            line, playout, tape = taped_line(ours)
        else:
            line, playout, _ = make_line(ours, list().append)
            tape = None
        if k % 2 == 0:
            playout.append_frame(frame(100 + k))
        lines.append(line)
        playouts.append(playout)
        tapes.append(tape)
        peers.append(peer)
    try:
        for k, peer in enumerate(peers):
            peer.sendall(frame(k + 1))
        settle()
        assert _wire.pump(lines, 1) == []
        for k, peer in enumerate(peers):
            want = frame(100 + k) if k % 2 == 0 else playouts[k]._silence
            assert recv_exactly(peer, 323) == want
            tape = tapes[k]
            if tape is not None:
                taken = _wire.take_tape(tape, 320)
                assert taken is not None
                assert taken[0] == frame(k + 1)[3:]
                assert taken[2] == want[3:]
            else:
                assert counters(lines[k])[3] == 1  # its one frame went to its sink
    finally:
        for ours, peer in pairs[1:]:
            ours.close()
            peer.close()


def make_pair() -> tuple[socket.socket, socket.socket]:
    """(ours, peer): a connected loopback TCP pair, ours non-blocking; the caller closes
    both (the ``pair`` fixture does for its own)."""
    srv = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(srv.getsockname())
    ours, _ = srv.accept()
    srv.close()
    ours.setblocking(False)
    for s in (ours, peer):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, peer


# -- take(): a tape's frames handed over in place --------------------------------------------

# One taped frame: (sent, tick advance, audio kind: 0 digital silence, else a fill byte).
_Entry = tuple[bool, int, int]


def _tape_of(entries: list[_Entry], fb: int = 320) -> tuple[_wire.Tape, list[bytes]]:
    from audiosocket.native import new_tape

    tape = new_tape(fb)
    tick = 0
    audio: list[bytes] = []
    for sent, advance, fill in entries:
        tick += advance
        pcm = bytes(fb) if fill == 0 else bytes([fill]) * fb
        tape.put(sent, tick, pcm)
        audio.append(pcm)
    return tape, audio


@given(entries=st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.sampled_from([0, 0, 7, 9])),
                        min_size=1, max_size=60))
@settings(max_examples=80, deadline=None)
def test_take_hands_over_what_take_tape_copies(entries: list[_Entry]) -> None:
    """A Taken's parts are take_tape's four bytes objects, and its span is what numpy makes
    of them: counts, first and last ticks, the heard frames' lead, consecutive, silent."""
    from audiosocket.native import take, take_tape

    a, _ = _tape_of(entries)
    b, _ = _tape_of(entries)
    taken = take(a, 320)
    parts = take_tape(b, 320)
    assert taken is not None and parts is not None
    assert len(a) == 0 and len(b) == 0
    assert (taken.heard(), taken.heard_ticks(), taken.sent(), taken.sent_ticks()) == parts
    heard_ticks = np.frombuffer(parts[1], "<i8")
    sent_ticks = np.frombuffer(parts[3], "<i8")
    ends = [(len(t), int(t[0]), int(t[-1])) if len(t) else (0, 0, 0)
            for t in (sent_ticks, heard_ticks)]
    lo, hi, consecutive, silent = block_shape_numpy(heard_ticks, sent_ticks, parts[0])
    assert taken.span == (*ends[0], *ends[1], lo, hi, consecutive, silent)
    assert taken.frame_bytes == 320
    assert take(a, 320) is None


@given(
    entries=st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.sampled_from([0, 3, 200])),
                     max_size=40),
    held=st.tuples(st.integers(0, 700), st.integers(0, 700)),
    nbytes=st.integers(0, 9000),
)
@settings(max_examples=120, deadline=None)
def test_a_taken_tape_interleaves_as_its_parts_would(
    entries: list[_Entry], held: tuple[int, int], nbytes: int
) -> None:
    """Taken.interleave(held_in, held_out, n) is interleave_legs of held_in + heard and
    held_out + sent (zeros past a short leg), and gives back what is left of each leg after
    its first n bytes: the recorder's flush, without making heard or sent."""
    from audiosocket.native import take, take_tape

    entries = [(True, 1, 5), *entries]  # never empty
    a, _ = _tape_of(entries, 160)
    b, _ = _tape_of(entries, 160)
    taken = take(a, 160)
    parts = take_tape(b, 160)
    assert taken is not None and parts is not None
    nbytes -= nbytes % 2
    held_in = bytearray(np.arange(held[0], dtype="<i2").tobytes())
    held_out = bytearray((-np.arange(held[1], dtype="<i2")).tobytes())
    stereo, rest_in, rest_out = taken.interleave(held_in, held_out, nbytes)
    left, right = bytes(held_in) + parts[0], bytes(held_out) + parts[2]
    assert stereo == interleave_legs(left, right, nbytes)
    assert (rest_in, rest_out) == (bytearray(left[nbytes:]), bytearray(right[nbytes:]))
    assert isinstance(rest_in, bytearray) and isinstance(rest_out, bytearray)
    with pytest.raises(ValueError):
        taken.interleave(bytearray(3), held_out, 4)  # held audio of an odd byte count
    with pytest.raises(ValueError):
        taken.interleave(held_in, held_out, 5)


def test_a_taken_tape_holds_the_prompt_frames_it_took_until_it_goes(pair: Any) -> None:
    """A prompt's frames taped by reference move to the Taken with the tape's buffers: the
    tape is empty at once, the frames are read there (interleave, sent) and let go when the
    Taken goes; the tape refills into buffers of the capacity it had."""
    import sys

    from audiosocket.native import take

    ours, peer = pair
    line, playout, tape = taped_line(ours)
    prompt = [frame(20 + k) for k in range(3)]
    held = [sys.getrefcount(f) for f in prompt]
    for f in [*prompt, frame(30)]:  # the playout keeps the last frame it queued
        playout.append_frame(f)
    for k in range(4):
        peer.sendall(frame(k + 1))
        settle()
        assert _wire.pump([line], 1) == []
    capacity = tape.capacity
    taken = take(tape, 320)
    assert taken is not None
    assert len(tape) == 0 and tape.capacity == capacity
    assert [sys.getrefcount(f) for f in prompt] == [n + 1 for n in held]
    assert taken.sent() == b"".join(f[3:] for f in [*prompt, frame(30)])
    stereo, _, _ = taken.interleave(bytearray(), bytearray(), 4 * 320)
    assert stereo == interleave_legs(b"".join(frame(k + 1)[3:] for k in range(4)),
                                     taken.sent(), 4 * 320)
    del taken
    assert [sys.getrefcount(f) for f in prompt] == held
    peer.sendall(frame(9))
    settle()
    assert _wire.pump([line], 1) == []
    assert tape.capacity == capacity  # refilled without growing
