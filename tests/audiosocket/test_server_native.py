"""The server with the C media path attached: calls in the steady state move to it, and
everything out of the ordinary hands them back to the Python path with nothing lost.

Real server, real TCP. Each test checks that the call really was on the C path (the clock's
``native_lines``) before the event it is about, and most run on both paths to show the same
result.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from typing import Any

import numpy as np
import pytest

from audiosocket.caller import place_call
from audiosocket.clock import NATIVE_AVAILABLE
from audiosocket.protocol import Audio, CallId, Dtmf, Hangup, encode_audio, encode_frame
from sessions.echo import EchoSession

from .test_server import Probe, Raw, tone, wait_for

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="audiosocket._wire not built")

PATHS = pytest.mark.parametrize("native", [True, False], ids=["native", "python"])


class PlaysOnDtmf(Probe):
    """Plays a clip when a key is pressed and remembers that the playback completed."""

    completed: dict[str, bool] = {}

    def on_dtmf(self, digit: str) -> None:
        super().on_dtmf(digit)

        async def play() -> None:
            PlaysOnDtmf.completed[self.uuid] = await self.play(b"\x22\x11" * 160 * 10)

        asyncio.get_running_loop().create_task(play())


def frames_of(seconds: float, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(8000 * seconds)) * 3000).astype("<i2").tobytes()


async def stream(raw: Raw, pcm: bytes) -> None:
    """Send PCM as 20 ms frames on a 20 ms clock."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k, i in enumerate(range(0, len(pcm), 320)):
        raw.send(encode_audio(pcm[i : i + 320]))
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - loop.time()))


@PATHS
async def test_echo_is_the_same_on_both_paths(start_server: Any, native: bool) -> None:
    # No live target: on a machine busy enough to stall the loop past it (the suite beside
    # two CPU hogs), echo would rightly drop the oldest frames, and this compares content.
    server = await start_server(EchoSession, native_media=native, live_latency_ms=0)
    pcm = frames_of(1.5)
    call = asyncio.create_task(place_call("127.0.0.1", server.port, pcm=pcm, linger=0.3))
    await asyncio.sleep(0.8)
    assert server.clock.native_lines == (1 if native else 0)
    result = await call
    got = bytes(result.received)
    sent_frames = [pcm[i : i + 320] for i in range(0, len(pcm), 320)]
    got_frames = [got[i : i + 320] for i in range(0, len(got), 320)]
    echoed = [f for f in got_frames if f != bytes(320)]
    assert echoed == sent_frames  # every frame back, once, in order
    gaps = sorted(result.gaps_ms())
    assert gaps[len(gaps) // 2] == pytest.approx(20, abs=3)
    await wait_for(lambda: not server.calls)
    assert server.clock.native_lines == 0


@PATHS
async def test_counters_and_metrics_agree_on_both_paths(start_server: Any, native: bool) -> None:
    server = await start_server(Probe, native_media=native)
    raw = await Raw.connect(server.port)
    u = uuid.uuid4()
    raw.send(encode_frame(CallId(u)))
    await stream(raw, tone(1.0))
    await asyncio.sleep(0.1)
    conn = server.calls[str(u)]
    assert server.clock.native_lines == (1 if native else 0)
    call = conn.call
    assert call is not None
    conn.flush_metrics()
    assert call.frames_in == 50
    assert Probe.audio[str(u)] == 50 * 320
    playout = call.playout
    playout.sync_counters()
    assert playout.sent_total == playout.ticks == call.tick
    assert playout.silence_frames_sent == playout.sent_total  # Probe sends nothing
    raw.close()
    await wait_for(lambda: str(u) in Probe.ended)
    assert playout.sent_total >= 50


@PATHS
async def test_dtmf_and_a_fragmented_frame_mid_call(start_server: Any, native: bool) -> None:
    server = await start_server(Probe, native_media=native)
    raw = await Raw.connect(server.port)
    u = uuid.uuid4()
    raw.send(encode_frame(CallId(u)))
    await stream(raw, tone(0.5))
    assert server.clock.native_lines == (1 if native else 0)
    raw.send(encode_frame(Dtmf("4")))
    await stream(raw, tone(0.2))
    half = encode_audio(b"\x01\x00" * 160)
    raw.send(half[:100])
    await raw.writer.drain()
    await asyncio.sleep(0.06)  # three ticks with half a frame in the socket
    raw.send(half[100:])
    await stream(raw, tone(0.4))
    assert server.clock.native_lines == (1 if native else 0)  # back on the C path
    raw.close()
    await wait_for(lambda: str(u) in Probe.ended)
    assert Probe.dtmf[str(u)] == ["4"]
    assert Probe.audio[str(u)] == (25 + 10 + 1 + 20) * 320


@PATHS
async def test_garbage_mid_call_ends_that_call_with_a_hangup(
    start_server: Any, native: bool
) -> None:
    server = await start_server(Probe, native_media=native)
    healthy = asyncio.create_task(place_call("127.0.0.1", server.port, pcm=tone(1.5)))
    raw = await Raw.connect(server.port)
    u = uuid.uuid4()
    raw.send(encode_frame(CallId(u)))
    await stream(raw, tone(0.4))
    assert server.clock.native_lines == (2 if native else 0)
    raw.send(b"\x07\x00\x00")
    frames = await raw.read_for(2.0)
    assert raw.eof and isinstance(frames[-1], Hangup)
    await wait_for(lambda: str(u) in Probe.ended)
    assert Probe.ended[str(u)] == "protocol_error"
    result = await healthy
    assert not result.closed_by_server and Probe.ended[result.uuid] == "remote_closed"


@PATHS
async def test_reset_and_close_mid_call(start_server: Any, native: bool) -> None:
    server = await start_server(Probe, native_media=native)
    sock = socket.create_connection(("127.0.0.1", server.port))
    raw = await Raw.connect(server.port)
    u1, u2 = uuid.uuid4(), uuid.uuid4()
    sock.sendall(encode_frame(CallId(u1)))
    raw.send(encode_frame(CallId(u2)))
    for _ in range(20):
        sock.sendall(encode_audio(bytes(320)))
        raw.send(encode_audio(bytes(320)))
        await asyncio.sleep(0.02)
    assert server.clock.native_lines == (2 if native else 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    await wait_for(lambda: str(u1) in Probe.ended)
    assert Probe.ended[str(u1)] in ("remote_reset", "remote_closed")
    await raw.read_for(0.2)  # drain what we were sent, so our close is a FIN
    raw.close()
    await wait_for(lambda: str(u2) in Probe.ended)
    assert Probe.ended[str(u2)] in ("remote_closed", "remote_reset")
    assert server.clock.native_lines == 0
    result = await place_call("127.0.0.1", server.port, pcm=tone(0.2), linger=0.1)
    assert result.frames_received > 0


@PATHS
async def test_playback_mid_call_plays_whole_and_completes(
    start_server: Any, native: bool
) -> None:
    server = await start_server(PlaysOnDtmf, native_media=native)
    raw = await Raw.connect(server.port)
    u = uuid.uuid4()
    raw.send(encode_frame(CallId(u)))
    await stream(raw, tone(0.4))
    assert server.clock.native_lines == (1 if native else 0)
    raw.send(encode_frame(Dtmf("1")))
    reader = asyncio.create_task(raw.read_for(1.0))
    await stream(raw, tone(0.6))
    frames = await reader
    raw.close()
    await wait_for(lambda: str(u) in Probe.ended)
    assert PlaysOnDtmf.completed[str(u)] is True
    clip = [f for f in frames if isinstance(f, Audio) and f.payload == b"\x22\x11" * 160]
    assert len(clip) == 10
    audio = [f for f in frames if isinstance(f, Audio)]
    first = audio.index(clip[0])
    assert audio[first : first + 10] == clip  # back to back, one per tick


async def test_app_failure_in_on_audio_ends_only_that_call(start_server: Any) -> None:
    doomed = uuid.uuid4()

    class FailsLater(Probe):
        def on_audio(self, pcm: bytes, rate: int) -> None:
            super().on_audio(pcm, rate)
            if self.uuid == str(doomed) and Probe.audio[self.uuid] > 20 * 320:
                raise RuntimeError("app bug")

    server = await start_server(FailsLater)
    healthy = asyncio.create_task(place_call("127.0.0.1", server.port, pcm=tone(1.0)))
    raw = await Raw.connect(server.port)
    raw.send(encode_frame(CallId(doomed)))
    # Read until the server hangs up (read_for ends at EOF); the bound is for a loaded machine.
    reader = asyncio.create_task(raw.read_for(10.0))
    await stream(raw, tone(0.3))
    assert server.clock.native_lines == 2  # its sink is the app's own on_audio
    await stream(raw, tone(0.3))
    frames = await reader
    assert isinstance(frames[-1], Hangup)
    await wait_for(lambda: str(doomed) in Probe.ended)
    assert Probe.ended[str(doomed)] == "app_error"
    result = await healthy
    assert not result.closed_by_server
    assert Probe.ended[result.uuid] == "remote_closed"


async def test_disabled_by_config(start_server: Any) -> None:
    server = await start_server(EchoSession, native_media=False)
    result = await place_call("127.0.0.1", server.port, pcm=tone(0.5))
    assert result.frames_received > 0
    assert server.clock.native_lines == 0 and server.clock.native_events == 0
