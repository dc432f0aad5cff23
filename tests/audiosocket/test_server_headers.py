"""Headers that are wrong on their own end the call at once, over real TCP.

An odd audio length, or a UUID, DTMF or hang-up header whose length that kind can never
have, cannot be followed by a valid payload: waiting for up to 64 KiB that never comes kept
the call up until the inactivity limit. On both media paths.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from audiosocket.clock import NATIVE_AVAILABLE
from audiosocket.protocol import CallId, Hangup, encode_audio, encode_frame

from .test_server import Probe, Raw, tone, wait_for

HEADERS = pytest.mark.parametrize(
    "header",
    [
        b"\x10\xff\xff",  # odd audio length
        b"\x12\x00\x03",
        b"\x01\xff\xff",  # a UUID is 16 bytes
        b"\x03\xff\xff",  # a key is 1 byte
        b"\x03\x00\x02",
        b"\x00\xff\xff",  # a hang-up has no payload
        b"\x00\x00\x01",
    ],
    ids=lambda h: h.hex(),
)
PATHS = pytest.mark.parametrize(
    "native",
    [
        pytest.param(
            True, marks=pytest.mark.skipif(not NATIVE_AVAILABLE, reason="_wire not built")
        ),
        False,
    ],
    ids=["native", "python"],
)


@pytest.fixture(autouse=True)
def _reset_probe() -> None:
    Probe.ended.clear()


async def stream(raw: Raw, pcm: bytes) -> None:
    """20 ms frames on a 20 ms clock, so the call reaches its steady state."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k, i in enumerate(range(0, len(pcm), 320)):
        raw.send(encode_audio(pcm[i : i + 320]))
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - loop.time()))


@PATHS
@HEADERS
async def test_bad_header_mid_call_ends_it_within_a_second(
    start_server: Any, native: bool, header: bytes
) -> None:
    server = await start_server(Probe, native_media=native)
    raw = await Raw.connect(server.port)
    u = uuid.uuid4()
    raw.send(encode_frame(CallId(u)))
    await stream(raw, tone(0.4))
    assert server.clock.native_lines == (1 if native else 0)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    raw.send(header)  # and nothing after it
    frames = await raw.read_for(1.0)
    assert raw.eof, "the call must end on the header, not wait for its payload"
    assert loop.time() - sent_at < 1.0
    assert isinstance(frames[-1], Hangup)
    await wait_for(lambda: str(u) in Probe.ended, timeout=1.0)
    assert Probe.ended[str(u)] == "protocol_error"
    raw.close()


@HEADERS
async def test_bad_header_before_the_uuid_is_refused_at_once(
    start_server: Any, header: bytes
) -> None:
    server = await start_server(Probe)
    raw = await Raw.connect(server.port)
    raw.send(header)
    frames = await raw.read_for(1.0)
    assert raw.eof and frames == [Hangup()]
    assert Probe.ended == {}
    raw.close()
