"""The shared clock and playout buffers, on a real event loop with a fake transport."""

from __future__ import annotations

import asyncio

import pytest

from audiosocket.clock import Clock, Playout
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
        assert p.queued_frames == 0
        p.feed(b"\x01\x00" * 60)
        assert p.queued_frames == 1

    asyncio.run(go())


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


def test_feed_frame_sends_the_wire_frame_as_is() -> None:
    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 8000)
        frame = b"\x10\x01\x40" + bytes(range(256)) + bytes(64)
        p.feed_frame(frame)
        p.feed(b"\x02\x00" * 160)
        p.tick()
        p.tick()
        assert t.writes[0] is frame  # not even copied
        assert t.writes[1] == b"\x10\x01\x40" + b"\x02\x00" * 160

    asyncio.run(go())


def test_ulaw_switch_reencodes_queued_frames_and_listener_gets_linear() -> None:
    from audiosocket.ulaw import lin2ulaw, ulaw2lin

    async def go() -> None:
        t = FakeTransport()
        p = Playout(t, 8000)
        pcm = (b"\x00\x10" * 160)
        p.feed(pcm)  # queued as linear...
        p.use_ulaw()  # ...then the call turns out to be μ-law
        p.feed(pcm)
        heard: list[bytes | None] = []
        p.on_tick = lambda tick, sent: heard.append(sent)
        p.tick()
        p.tick()
        assert t.writes[0] == t.writes[1] == b"\x10\x00\xa0" + lin2ulaw(pcm)
        assert heard == [ulaw2lin(lin2ulaw(pcm))] * 2

    asyncio.run(go())
