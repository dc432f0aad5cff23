"""The shared clock and playout buffers, on a real event loop with a fake transport."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import pytest

from audiosocket.clock import NATIVE_AVAILABLE, TICKS_PER_SECOND, Clock, Playout
from audiosocket.native import LINE, frame_clip
from audiosocket.playout import ClipFrames
from audiosocket.protocol import Audio, Decoder


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.times: list[float] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.times.append(asyncio.get_running_loop().time())

    def is_closing(self) -> bool:
        return self.closing

    def frames(self) -> list[Audio]:
        dec = Decoder()
        out = []
        for w in self.writes:
            out.extend(dec.feed(w))
        return out


def header_of(p: Playout) -> bytes:
    return p._silence[:3]


def test_silence_when_empty_and_one_frame_per_tick() -> None:
    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 16000)
        for _ in range(5):
            p.tick()
        frames = t.frames()
        assert len(t.writes) == 5  # one write per frame
        assert all(f == Audio(bytes(640), 16000) for f in frames)

    asyncio.run(go())


async def test_play_completes_when_last_frame_sent() -> None:
    t = FakeTransport()
    p = Playout(t, 8000)
    pb = p.play(b"\x01\x00" * 400)  # 2.5 frames -> 3 frames, tail padded with silence
    assert pb.frames == 3
    p.tick()
    p.tick()
    assert not pb.done()
    p.tick()
    assert await pb is True
    payloads = [f.payload for f in t.frames()]
    assert payloads[2] == b"\x01\x00" * 80 + bytes(160)


async def test_play_with_silence_after_queues_the_pause_as_the_shared_silent_frame() -> None:
    """A sentence and its pause (``silence_after``) are one clip: the pause fills the last
    audio frame first, whole frames of it are the playout's one silent frame object, and
    the playback completes after the pause, as a clip with the zeros joined on did."""
    t = FakeTransport()
    p = Playout(t, 8000)
    pb = p.play(b"\x01\x00" * 400, silence_after=800)  # 800 + 800 bytes -> 5 frames
    assert pb.frames == 5
    assert p._frames[3] is p._silence and p._frames[4] is p._silence
    for _ in range(4):
        p.tick()
    assert not pb.done()
    p.tick()
    assert await pb is True
    payloads = [f.payload for f in t.frames()]
    assert payloads[2] == b"\x01\x00" * 80 + bytes(160)
    assert payloads[3:] == [bytes(320)] * 2
    joined = Playout(FakeTransport(), 8000)
    assert joined.play(b"\x01\x00" * 400 + bytes(800)).frames == 5
    assert list(joined._frames) == [header_of(p) + f.payload for f in t.frames()]


async def test_play_parts_is_one_clip_of_the_parts_played_in_turn() -> None:
    """Several (pcm, pause) parts as one clip: the same frames as playing them one after
    another (shared ones included), one start and one completion for all of them."""
    shared = ClipFrames()
    parts = [(bytes([1, 0]) * 400, 640), (bytes([2, 0]) * 160, 640), (bytes([3, 0]) * 200, 0)]
    one = Playout(FakeTransport(), 8000, shared=shared)
    pb = one.play_parts(parts, shared=True)
    apart = Playout(FakeTransport(), 8000, shared=shared)
    pbs = [apart.play(pcm, silence_after=pause, shared=True) for pcm, pause in parts]
    assert list(one._frames) == list(apart._frames)
    assert pb.frames == sum(x.frames for x in pbs) == 10  # 5 + 3 + 2
    assert len(one._marks) == len(one._start_marks) == 1  # against 3 and 3 played apart
    assert len(apart._marks) == 3
    for _ in range(9):
        one.tick()
    assert pb.started.done() and not pb.done()
    one.tick()
    assert await pb is True
    for _ in range(10):
        apart.tick()
    assert one.transport.frames() == apart.transport.frames()  # type: ignore[attr-defined]


def test_play_past_the_bound_drops_the_oldest_frames_and_counts_them() -> None:
    async def go() -> None:
        p = Playout(FakeTransport(), 8000, max_seconds=0.1)  # 5 frames
        p.play(bytes([1, 0]) * 160 * 3)
        pb = p.play(bytes([2, 0]) * 160 * 4)
        assert p.queued_frames == 5
        assert [f[3] for f in p._frames] == [1, 2, 2, 2, 2]
        assert pb.frames == 4

    asyncio.run(go())


async def test_calls_playing_one_prompt_object_share_its_frames() -> None:
    """Two calls playing the cache's one PCM object queue the same frame objects (made
    once); another object with the same bytes is framed apart; the frames are what
    framing the clip alone gives, and the calls hear the same audio."""
    shared = ClipFrames()
    prompt = bytes(range(1, 201)) * 8  # 1600 bytes: 5 frames at 8 kHz
    a, b = (Playout(FakeTransport(), 8000, shared=shared) for _ in range(2))
    a.play(prompt, silence_after=640, shared=True)
    b.play(prompt, silence_after=640, shared=True)
    assert len(shared) == 1
    assert all(x is y for x, y in zip(a._frames, b._frames, strict=True))
    assert list(a._frames) == frame_clip(a._header, prompt, 320, 640, a._silence)
    a.play(bytes(bytearray(prompt)), silence_after=640, shared=True)  # equal, not the same
    assert len(shared) == 2
    unshared = Playout(FakeTransport(), 8000, shared=shared)
    unshared.play(prompt, silence_after=640)  # not marked shared: framed for this call
    assert len(shared) == 2 and unshared._frames[0] is not b._frames[0]
    for p in (a, b):
        for _ in range(7):
            p.tick()
    assert a.transport.frames() == b.transport.frames()  # type: ignore[attr-defined]


def test_clip_frames_is_bounded_and_drops_the_least_recently_played() -> None:
    shared = ClipFrames(max_bytes=3 * 2 * 3200 + 200)  # three 3200-byte prompts and change
    header, silence = b"\x10\x01\x40", b"\x10\x01\x40" + bytes(320)
    prompts = [bytes([i + 1]) * 3200 for i in range(4)]
    first = shared.frames(header, prompts[0], 320, 0, silence)
    for p in prompts[1:3]:
        shared.frames(header, p, 320, 0, silence)
    assert shared.frames(header, prompts[0], 320, 0, silence) is first  # played again
    shared.frames(header, prompts[3], 320, 0, silence)  # over the bound: prompts[1] goes
    assert len(shared) == 3
    assert shared.frames(header, prompts[0], 320, 0, silence) is first
    huge = bytes(320 * 200)
    assert len(shared.frames(header, huge, 320, 0, silence)) == len(huge) // 320
    assert len(shared) == 3  # too big to keep: framed, not cached


async def test_clear_takes_effect_next_tick_and_resolves_false() -> None:
    t = FakeTransport()
    p = Playout(t, 8000)
    pb = p.play(b"\x01\x00" * 1600)  # 10 frames
    p.tick()
    assert p.clear() == 9
    p.tick()
    assert await pb is False
    frames = t.frames()
    assert frames[0].payload != bytes(320)
    assert frames[1].payload == bytes(320)


def test_feed_keeps_partial_frames_for_later() -> None:
    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 8000)
        p.feed(b"\x01\x00" * 100)
        assert p.queued_frames == 1 and not p.plain  # queued as it is, to be re-cut
        p.feed(b"\x02\x00" * 60)
        p.tick()
        assert t.frames()[0].payload == b"\x01\x00" * 100 + b"\x02\x00" * 60
        assert p.plain and p.queued_frames == 0

    asyncio.run(go())


def _noise_frames(sizes: list[int], seed: int = 0) -> list[bytes]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(rng.integers(1, 30000, n // 2) * rng.choice([-1, 1], n // 2)).astype("<i2")
            .tobytes() for n in sizes]


@pytest.mark.parametrize("seed", range(4))
async def test_short_frames_in_a_live_stream_come_out_bit_exact(seed: int) -> None:
    """Asterisk's Playback sends a short frame at each file boundary, and arrivals jitter
    (none in one tick, two in the next): every sample goes out once, in order, in whole
    frames but for a short one when that is all there is; never padded, never late."""
    import random

    rng = random.Random(seed)
    t = FakeTransport()
    p = Playout(t, 8000, live_ms=80)
    sizes = [320] * 5 + [24] + [320] * 4 + [12, 138, 276] + [320] * 6 + [160, 160] + [320] * 3
    pcm = _noise_frames(sizes, seed)
    append = p.append_frame  # the fast path's sink: whole frames bypass feed()
    k = fed = out = 0
    while k < len(pcm):
        for chunk in pcm[k : k + rng.choice((0, 1, 1, 1, 2))]:
            if len(chunk) == 320:
                append(b"\x10\x01\x40" + chunk)
            else:
                p.feed(chunk)
            fed += len(chunk)
            k += 1
        waiting = fed - out
        p.tick()
        sent = t.frames()[-1].payload
        # Each tick sends a whole frame of what waits, or all of it if less: silence only
        # when nothing waits, and nothing that could go is held back.
        if sent == bytes(320):
            assert waiting == 0
        else:
            assert len(sent) == min(waiting, 320)
            out += len(sent)
    for _ in range(3):
        p.tick()
    frames = t.frames()
    assert b"".join(f.payload for f in frames if f.payload != bytes(320)) == b"".join(pcm)
    # Only what a short frame leaves over, alone on its tick, goes out short.
    assert sum(len(f.payload) != 320 for f in frames) <= sum(len(c) != 320 for c in pcm)
    audio = [i for i, f in enumerate(frames) if f.payload != bytes(320)]
    holes = audio[-1] - audio[0] + 1 - len(audio)  # ticks the jittery feed left empty
    assert p.underruns == holes and p.live_dropped == 0
    assert p.plain and p.queued_frames == 0


def test_underrun_counted_only_inside_a_started_stream() -> None:
    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 8000)
        p.tick()
        assert p.underruns == 0
        p.begin_stream()
        p.tick()  # waiting for the first sentence: latency, not a gap
        assert p.underruns == 0
        p.play(b"\x01\x00" * 160)  # one frame of the stream
        p.tick()
        assert p.underruns == 0
        p.tick()  # it started and ran dry before the next sentence: an underrun
        assert p.underruns == 1
        p.end_stream()
        p.tick()
        assert p.underruns == 1
        # A new stream behind a clip still playing: the gap before its own first frame
        # is between prompts, not inside one.
        p.play(b"\x01\x00" * 160)
        p.begin_stream()
        p.tick()
        p.tick()
        assert p.underruns == 1
        p.end_stream()

    asyncio.run(go())


def test_bounded_buffer_drops_oldest() -> None:
    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 8000, max_seconds=0.1)  # 5 frames
        for i in range(8):
            p.feed(bytes([i, 0]) * 160)
        assert p.queued_frames == 5
        p.tick()
        assert t.frames()[0].payload[:2] == bytes([3, 0])

    asyncio.run(go())


def test_lead_sends_ahead_but_never_more() -> None:
    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 8000, lead_ms=60)  # 3 frames ahead
        p.feed(b"\x01\x00" * 160 * 10)
        p.tick()
        assert p.sent_total == 4
        p.tick()
        assert p.sent_total == 5

    asyncio.run(go())


def test_resync_does_not_burst() -> None:
    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 8000)
        p.feed(b"\x01\x00" * 160 * 50)
        p.tick()
        p.tick(advance=20)  # the clock skipped 19 ticks
        assert len(t.writes) == 2  # one frame per tick, not 20
        assert p.ticks == 21
        p.tick()
        assert len(t.writes) == 3

    asyncio.run(go())


async def test_clock_uses_absolute_deadlines() -> None:
    loop = asyncio.get_running_loop()
    clock = Clock(loop=loop)
    transports = [FakeTransport() for _ in range(3)]
    for tr in transports:
        clock.register(Playout(tr, 8000, loop=loop))
    clock.start()
    start = loop.time()
    await asyncio.sleep(1.0)
    clock.stop()
    n = len(transports[0].writes)
    # ~50 ticks a second; every call gets the same count on the same ticks.
    assert 45 <= n <= 52
    assert all(len(tr.writes) == n for tr in transports)
    # No drift: the k-th write is close to start + k*20 ms.
    times = transports[0].times
    drift = times[-1] - (times[0] + (n - 1) * 0.02)
    assert abs(drift) < 0.015
    assert times[0] - start < 0.05


async def test_clock_resyncs_after_a_stall() -> None:
    loop = asyncio.get_running_loop()
    clock = Clock(loop=loop)
    tr = FakeTransport()
    p = Playout(tr, 8000, loop=loop)
    clock.register(p)
    clock.start()
    await asyncio.sleep(0.1)
    import time

    time.sleep(0.35)  # noqa: ASYNC251 - block the loop on purpose: the clock falls 350 ms behind
    await asyncio.sleep(0.1)
    clock.stop()
    assert clock.resyncs >= 1
    gaps = [b - a for a, b in zip(tr.times, tr.times[1:], strict=False)]
    # After the stall, no burst of catch-up frames: at most a couple at ~0 spacing.
    assert sum(1 for g in gaps if g < 0.005) <= 2
    assert p.ticks >= 0.5 / 0.02 - 3  # the timeline followed wall time


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_frame_kind_matches_call_rate(rate: int) -> None:
    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, rate)
        p.tick()
        (f,) = t.frames()
        assert f.rate == rate and len(f.payload) == rate // 50 * 2

    asyncio.run(go())


def test_append_frame_sends_the_wire_frame_as_is() -> None:
    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 8000)
        frame = b"\x10\x01\x40" + bytes(range(256)) + bytes(64)
        p.append_frame(frame)
        p.feed(b"\x02\x00" * 160)
        p.tick()
        p.tick()
        assert t.writes[0] is frame  # not even copied
        assert t.writes[1] == b"\x10\x01\x40" + b"\x02\x00" * 160

    asyncio.run(go())


def test_append_frame_is_bounded_on_the_next_tick_and_drops_are_counted() -> None:
    from audiosocket import metrics

    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 8000, max_seconds=0.1)  # 5 frames
        frames = [b"\x10\x01\x40" + bytes([i, 0]) * 160 for i in range(8)]
        for f in frames:
            p.append_frame(f)  # the deque's own append: no bound yet
        assert p.queued_frames == 8
        before = metrics.PLAYOUT_DROPPED._value.get()
        p.tick()
        assert metrics.PLAYOUT_DROPPED._value.get() - before == 3
        assert t.writes == [frames[3]]  # the three oldest were dropped, the next one sent
        assert p.queued_frames == 4

    asyncio.run(go())


async def test_playback_marks_count_frames_appended_before_them() -> None:
    t = FakeTransport()
    p = Playout(t, 8000)
    relay = b"\x10\x01\x40" + b"\x05\x00" * 160
    p.append_frame(relay)
    p.append_frame(relay)
    pb = p.play(b"\x01\x00" * 160)  # queued behind the two relayed frames
    p.tick()
    p.tick()
    assert not pb.done()
    p.tick()
    assert await pb is True
    assert t.writes[:2] == [relay, relay]
    p.append_frame(relay)
    assert p.clear() == 1  # clearing counts appended frames too
    p.tick()
    assert t.writes[-1] == b"\x10\x01\x40" + bytes(320)


@pytest.mark.parametrize("seed", range(5))
async def test_the_clocks_inline_path_matches_playout_tick(seed: int) -> None:
    """The clock sends a plain call's frame itself; it must do exactly what tick() does."""
    import random

    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    inline_t, direct_t = FakeTransport(), FakeTransport()
    inline = Playout(inline_t, 8000, max_seconds=0.1)
    direct = Playout(direct_t, 8000, max_seconds=0.1)
    clock = Clock(loop=loop)
    clock.register(inline)
    clock._loop = loop
    heard: dict[str, list[bytes | None]] = {"inline": [], "direct": []}
    playbacks = []
    plain_ticks = 0
    for step in range(400):
        op = rng.random()
        size = rng.choice((80, 160, 240))
        burst = rng.randint(1, 7)
        for name, p in (("inline", inline), ("direct", direct)):
            if op < 0.35:
                p.append_frame(b"\x10\x01\x40" + bytes([step % 256, 1]) * 160)
            elif op < 0.45:
                p.feed(bytes([step % 256, 2]) * size)
            elif op < 0.5:
                playbacks.append(p.play(bytes([step % 256, 3]) * 200))
            elif op < 0.53:
                p.clear()
            elif op < 0.56:
                p.begin_stream()
            elif op < 0.6:
                p.end_stream()
            elif op < 0.62:
                sink = heard[name]
                p.on_tick = None if p.on_tick else (lambda t, pcm, sink=sink: sink.append(pcm))
            elif op < 0.7:  # a burst, up to past the 5-frame bound
                for i in range(burst):
                    p.append_frame(b"\x10\x01\x40" + bytes([step % 256, i]) * 160)
        plain_ticks += inline.plain
        clock._k += 1
        clock._t0 = loop.time() - clock._k * clock.interval  # this tick is due now
        clock._on_tick()
        assert clock._handle is not None
        clock._handle.cancel()
        direct.tick()
        assert inline_t.writes == direct_t.writes, f"step {step}"
        for attr in ("ticks", "sent_total", "audio_frames_sent", "_sent_seq", "queued_frames"):
            assert getattr(inline, attr) == getattr(direct, attr), (step, attr)
    assert heard["inline"] == heard["direct"]
    assert plain_ticks and plain_ticks < 400  # both paths were taken
    await asyncio.sleep(0)
    assert sum(pb.done() for pb in playbacks) > 0


def test_plain_flag_follows_listener_streams_and_playbacks() -> None:
    async def go() -> None:
        p = Playout(FakeTransport(), 8000)
        assert p.plain
        p.on_tick = lambda tick, pcm: None
        assert not p.plain
        p.on_tick = None
        assert p.plain
        p.begin_stream()
        assert not p.plain
        p.end_stream()
        assert p.plain
        pb = p.play(bytes(640))
        assert not p.plain
        p.tick()
        p.tick()
        assert await pb is True
        assert p.plain
        assert not Playout(FakeTransport(), 8000, lead_ms=40).plain

    asyncio.run(go())


class BlockOwner:
    """A taped line's owner that only counts the blocks the clock asks it for."""

    _native_line: tuple[object, ...] | None = None

    def __init__(self) -> None:
        self.blocks: list[int] = []
        self.clock: Clock | None = None

    def _drain_tape(self) -> None:
        assert self.clock is not None
        self.blocks.append(self.clock.ticks)

    def _detach_native(self) -> None:
        pass

    def _native_read_event(self, event: str, payload: object) -> None:
        pass


@pytest.mark.skipif(not NATIVE_AVAILABLE, reason="audiosocket._wire not built")
def test_taped_lines_get_one_block_every_block_ticks_spread_over_the_ticks() -> None:
    every, n = 4, 10
    clock = Clock(block_ticks=every)
    owners = []
    for i in range(n + 1):
        playout = Playout(FakeTransport(), 8000)
        clock.register(playout)
        owner = BlockOwner()
        owner.clock = clock
        line: list[object] = [None] * LINE.size
        line[LINE.PLAYOUT], line[LINE.OWNER] = playout, owner
        # The last line has no tape (a relay such as echo): it never gets a block.
        line[LINE.TAPE] = object() if i < n else None
        assert clock.attach(tuple(line))
        owners.append(owner)
    per_tick = []
    for _ in range(3 * every):
        before = sum(len(o.blocks) for o in owners)
        clock._flush_slice()
        per_tick.append(sum(len(o.blocks) for o in owners) - before)
        clock.ticks += 1
    assert all(len(o.blocks) == 3 for o in owners[:n])
    assert all(b - a == every for o in owners[:n] for a, b in pairwise(o.blocks))
    assert not owners[n].blocks
    assert max(per_tick) == -(-n // every)  # spread: at most a 1/every share in one tick
    # A line detached meanwhile gets no block from the clock (detaching drained it).
    gone = owners[0]
    clock.detach(clock._native[id(clock._lines[0][LINE.PLAYOUT])])
    taken = len(gone.blocks)
    for _ in range(every):
        clock._flush_slice()
        clock.ticks += 1
    assert len(gone.blocks) == taken
    assert all(len(o.blocks) == 4 for o in owners[1:n])


@pytest.mark.skipif(not NATIVE_AVAILABLE, reason="audiosocket._wire not built")
def test_quiet_lines_get_their_blocks_every_quiet_block_ticks() -> None:
    """A line that wakes at the caller's first sound (``quiet``) is drained on its own,
    longer period; the other taped lines of the same clock keep theirs."""
    every, quiet_every = 3, 7
    clock = Clock(block_ticks=every, quiet_block_ticks=quiet_every)
    owners: dict[bool, list[BlockOwner]] = {False: [], True: []}
    for quiet in (False, True, False, True):
        playout = Playout(FakeTransport(), 8000)
        clock.register(playout)
        owner = BlockOwner()
        owner.clock = clock
        line: list[object] = [None] * LINE.size
        line[LINE.PLAYOUT], line[LINE.OWNER], line[LINE.TAPE] = playout, owner, object()
        assert clock.attach(tuple(line), quiet=quiet)
        owners[quiet].append(owner)
    for _ in range(4 * every * quiet_every):
        clock._flush_slice()
        clock.ticks += 1
    for quiet, period in ((False, every), (True, quiet_every)):
        for owner in owners[quiet]:
            assert len(owner.blocks) == 4 * every * quiet_every // period
            assert all(b - a == period for a, b in pairwise(owner.blocks))
    # By default a quiet line has the same period as any other.
    assert Clock(block_ticks=every).quiet_block_ticks == every


def test_media_block_s_sets_the_servers_block_ticks() -> None:
    from audiosocket.config import Config, ConfigError

    Config(media_block_s=0.5).validate()
    assert round(0.5 * TICKS_PER_SECOND) == 25
    for bad in (0.0, 0.01, 11.0):
        with pytest.raises(ConfigError, match="media_block_s"):
            Config(media_block_s=bad).validate()
    for bad in (0.0, 0.01, 11.0):
        with pytest.raises(ConfigError, match="media_block_quiet_s"):
            Config(media_block_quiet_s=bad).validate()
    with pytest.raises(ValueError, match="block_ticks"):
        Clock(block_ticks=0)
    with pytest.raises(ValueError, match="quiet_block_ticks"):
        Clock(quiet_block_ticks=0)


def test_media_read_ms_is_every_tick_or_every_second_one() -> None:
    from audiosocket.config import Config, ConfigError

    assert Config().media_read_ms == 40
    assert Clock().tape_read_ticks == 2
    Config(media_read_ms=20).validate()
    for bad in (0, 10, 60, 100):
        with pytest.raises(ConfigError, match="media_read_ms"):
            Config(media_read_ms=bad).validate()
    for ticks in (0, 3):
        with pytest.raises(ValueError, match="tape_read_ticks"):
            Clock(tape_read_ticks=ticks)
