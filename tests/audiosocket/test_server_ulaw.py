"""160-byte audio frames at call start, over real TCP against the real server.

They are 20 ms of μ-law (``Dial(AudioSocket/...)`` without ``c(slin)`` on a μ-law leg) or
10 ms of signed linear (a SIP leg with ptime 10, even through ``AudioSocket()``): the server
must tell them apart by content, and answer a μ-law caller in 320-byte signed-linear frames,
since Asterisk reads every 0x10 frame as slin (shared/PROTOCOL.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import structlog
from prometheus_client import REGISTRY

from audiosocket.call import Call
from audiosocket.caller import CallResult, place_call
from audiosocket.ulaw import lin2ulaw, ulaw2lin
from sessions.echo import EchoSession

from .test_server import wait_for

try:
    from tests.helpers.speech_fixtures import synth_speech
except ImportError:  # run from inside tests/
    from helpers.speech_fixtures import synth_speech  # type: ignore[no-redef]

pytestmark = pytest.mark.slow  # Piper synthesis (cached on disk after the first run)

SENTENCE = "Please connect me to the sales department."
SILENCE_S = 0.5


class Hears(EchoSession):
    """Echo that also keeps the linear PCM the app was handed, per call."""

    name = "hears"
    heard: ClassVar[dict[str, bytearray]] = {}
    ended: ClassVar[set[str]] = set()

    def __init__(self, call: Call, ctx: Any) -> None:
        super().__init__(call, ctx)
        Hears.heard[self.uuid] = bytearray()
        del self.fast_frame  # every frame through on_audio, so all of it is kept

    def on_audio(self, pcm: bytes, rate: int) -> None:
        Hears.heard[self.uuid] += pcm
        super().on_audio(pcm, rate)

    async def on_end(self, reason: str) -> None:
        Hears.ended.add(self.uuid)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Hears.heard.clear()
    Hears.ended.clear()


def ulaw_calls() -> float:
    return REGISTRY.get_sample_value("audiosocket_ulaw_calls_total") or 0.0


def speech(seconds: float = 1.2) -> bytes:
    """Real speech, a whole number of 20 ms frames long (so echo leaves no partial frame)."""
    pcm = synth_speech(SENTENCE, 8000)[: int(seconds * 8000) * 2]
    return pcm[: len(pcm) - len(pcm) % 320]


def quiet(kind: str, seconds: float = SILENCE_S) -> bytes:
    """Slin silence as a line sends it: digital zeros, or a little noise."""
    n = int(seconds * 8000)
    if kind == "zeros":
        return bytes(2 * n)
    rng = np.random.default_rng(7)
    return (rng.standard_normal(n) * 4).astype("<i2").tobytes()


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + 320] for i in range(0, len(pcm), 320)]


def assert_echo_is_slin(result: CallResult, expected: bytes, *, whole: bool = True) -> None:
    """Every frame back is slin (320 bytes; with ``whole=False`` a live 10 ms stream may
    also send a shorter piece when that is all that arrived by the tick, as the media path
    does rather than hold audio back behind silence), and what is not silence is
    ``expected``.

    Frame by frame, not as one stream: how the echo re-cuts 10 ms pieces and trims a live
    stream to its target latency belongs to the media path, not to this test.
    """
    got = bytes(result.received)
    assert result.frames_received > 20
    sizes = result.frame_sizes
    if whole:
        assert set(sizes) == {320}, "answer in 320-byte slin frames only"
    else:
        assert all(n % 2 == 0 and 0 < n <= 320 for n in sizes), sizes
        assert sizes.count(320) >= 0.8 * len(sizes), "mostly whole 20 ms frames"
    echoed = [f for f in frames(got) if any(f)]
    found = [f for f in echoed if expected.find(f) % 2 == 0]  # -1 (absent) is odd
    assert len(found) >= 0.9 * len(echoed)
    assert len(found) >= 0.6 * sum(1 for f in frames(expected) if any(f))


async def call(server: Any, pcm: bytes, **kw: Any) -> tuple[CallResult, list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        result = await place_call("127.0.0.1", server.port, pcm=pcm, linger=0.5, **kw)
        await wait_for(lambda: result.uuid in Hears.ended)
    return result, logs


def assert_not_blamed_on_dial(logs: list[dict[str, Any]]) -> None:
    assert not [e for e in logs if e["event"] == "ulaw_detected" or "Dial" in str(e)]


async def test_slin_10ms_speech_at_call_start_is_slin(start_server: Any) -> None:
    server = await start_server(Hears)
    before = ulaw_calls()
    pcm = speech()
    result, logs = await call(server, pcm, frame_ms=10)
    assert Hears.heard[result.uuid] == pcm  # the app hears exactly what was sent
    assert_echo_is_slin(result, pcm, whole=False)
    assert ulaw_calls() == before
    assert_not_blamed_on_dial(logs)


@pytest.mark.parametrize("kind", ["zeros", "noise"])
async def test_slin_10ms_silence_at_call_start_is_slin(start_server: Any, kind: str) -> None:
    server = await start_server(Hears)
    before = ulaw_calls()
    silence = quiet(kind)
    pcm = silence + speech(0.8)
    result, logs = await call(server, pcm, frame_ms=10)
    assert Hears.heard[result.uuid] == pcm
    got = np.frombuffer(bytes(result.received), "<i2").astype(int)
    # Until the speech could be back, only silence comes back (no -32124 from μ-law zeros).
    head = got[: int((SILENCE_S - 0.1) * 8000)]
    assert np.abs(head).max() <= np.abs(np.frombuffer(silence, "<i2").astype(int)).max()
    assert_echo_is_slin(result, pcm, whole=False)
    assert ulaw_calls() == before
    assert_not_blamed_on_dial(logs)


async def test_ulaw_20ms_speech_at_call_start_is_decoded_and_answered_in_slin(
    start_server: Any,
) -> None:
    server = await start_server(Hears)
    before = ulaw_calls()
    pcm = speech()
    result, logs = await call(server, pcm, ulaw=True)
    decoded = ulaw2lin(lin2ulaw(pcm))
    assert Hears.heard[result.uuid] == decoded
    assert_echo_is_slin(result, decoded)
    assert ulaw_calls() == before + 1
    (warning,) = [e for e in logs if e["event"] == "ulaw_detected"]
    assert "c(slin)" in warning["hint"]


@pytest.mark.parametrize("kind", ["zeros", "noise"])
async def test_ulaw_20ms_silence_at_call_start_is_ulaw(start_server: Any, kind: str) -> None:
    server = await start_server(Hears)
    before = ulaw_calls()
    pcm = quiet(kind) + speech(0.8)  # zeros go out as 0xFF bytes, μ-law's own silence
    result, _ = await call(server, pcm, ulaw=True)
    decoded = ulaw2lin(lin2ulaw(pcm))
    assert Hears.heard[result.uuid] == decoded
    assert_echo_is_slin(result, decoded)
    assert ulaw_calls() == before + 1
