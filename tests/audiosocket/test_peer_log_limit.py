"""Protocol warnings are rate limited per peer in the log, and every one is still counted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

import audiosocket.peerlog as peerlog_mod
from audiosocket.protocol import ErrorFrame, encode_frame
from tests.audiosocket.test_server import Probe, Raw

BURST = 5
WINDOW_S = 1.5
BAD = 40


def protocol_errors() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "audiosocket_protocol_errors":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def _bad_connection(port: int, data: bytes) -> None:
    raw = await Raw.connect(port)
    raw.send(data)
    await raw.read_for(2.0)  # until the server hangs up
    raw.close()


async def test_many_bad_connections_from_one_peer_log_a_bounded_number_of_lines(
        start_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peerlog_mod, "PEER_LOG_BURST", BURST)
    monkeypatch.setattr(peerlog_mod, "PEER_LOG_WINDOW_S", WINDOW_S)
    server = await start_server(Probe)
    before = protocol_errors()
    with structlog.testing.capture_logs() as logs:
        # Garbage before the UUID (an unknown kind): a protocol error and a hang-up each.
        await asyncio.gather(*(_bad_connection(server.port, b"\x07\x00\x00")
                               for _ in range(BAD)))
        errors = [e for e in logs if e["event"] == "protocol_error"]
        assert len(errors) <= BURST
        assert protocol_errors() - before == BAD  # the metric counts every one
        # When the window ends, one line says how many were left out.
        loop = asyncio.get_running_loop()
        end = loop.time() + WINDOW_S + 5.0
        while not any(e["event"] == "peer_log_suppressed" for e in logs):
            assert loop.time() < end, "no summary line"
            await asyncio.sleep(0.05)
    [summary] = [e for e in logs if e["event"] == "peer_log_suppressed"]
    assert summary["peer"] == "127.0.0.1"
    assert summary["suppressed"] == BAD - len(errors)
    assert summary["events"] == {"protocol_error": BAD - len(errors)}
    assert len(logs) <= BURST + 1


async def test_peer_error_frames_on_a_live_call_are_limited_too(
        start_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    from audiosocket.protocol import CallId, encode_audio

    monkeypatch.setattr(peerlog_mod, "PEER_LOG_BURST", BURST)
    server = await start_server(Probe)
    counter = REGISTRY.get_sample_value("audiosocket_peer_error_frames_total") or 0.0
    raw = await Raw.connect(server.port)
    with structlog.testing.capture_logs() as logs:
        raw.send(encode_frame(CallId(uuid.uuid4())) + encode_audio(bytes(320))
                 + encode_frame(ErrorFrame(0x02)) * 200)  # not fatal: the call goes on
        await raw.read_for(0.5)
    raw.close()
    assert not raw.eof
    assert len([e for e in logs if e["event"] == "peer_error_frame"]) <= BURST
    assert (REGISTRY.get_sample_value("audiosocket_peer_error_frames_total") or 0.0) \
        - counter == 200


async def test_hosts_tracked_are_bounded() -> None:
    limit = peerlog_mod.PeerLogLimit(burst=1, window_s=60.0, max_hosts=10)
    for i in range(1000):
        assert limit.allow(f"10.0.{i // 256}.{i % 256}", "non_call") is (i < 10 or i == 10)
    assert len(limit._hosts) <= 11  # ten hosts and the shared "(other peers)" budget
