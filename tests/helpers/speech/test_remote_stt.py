"""Remote STT over a real nats-server: results like local ones, drops by reason, outages."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket.config import load_config
from audiosocket.root.app import AppContext
from audiosocket.root.services import ensure_stt
from helpers import ai
from helpers.speech.remote_stt import (
    EngineUnavailable,
    RemoteSttEngine,
    WorkerError,
    WorkerExpired,
    decode_result,
    encode_result,
)
from helpers.speech.stt import SttDone, SttDropped, SttEngine, SttResult, Word
from tests.engines.nats import NatsServer
from tests.helpers.speech.remote_fixtures import (
    Results,
    WorkerThread,
    dropped,
    heartbeats,
    utterance,
    wait_for,
)
from tests.helpers.speech_fixtures import silence, synth_speech, wer

SENTENCES = [
    "Hello, I would like to check the balance of my account please.",
    "I need to speak with someone about my insurance claim.",
]
MODELS = ai.ModelCache()


@pytest.fixture(scope="module")
def whisper() -> Iterator[SttEngine]:
    """The worker side's local engine: real tiny.en, loaded once for the module."""
    engine = SttEngine(workers=1, models=MODELS)
    engine.start()
    yield engine
    engine.stop()


def remote(url: str, **kw: object) -> RemoteSttEngine:
    kw.setdefault("connect_timeout_s", 5.0)
    engine = RemoteSttEngine(nats_url=url, **kw)  # type: ignore[arg-type]
    engine.start()
    return engine


def speech(text: str) -> bytes:
    return silence(0.3) + synth_speech(text, 8000) + silence(0.3)


@pytest.mark.slow
def test_worker_answers_like_local_stt(nats_server: NatsServer, whisper: SttEngine) -> None:
    worker = WorkerThread(nats_server.url, whisper).start()
    engine = remote(nats_server.url, inflight=2)
    try:
        wait_for(lambda: "test-worker" in engine._workers)
        got = Results()
        for text in SENTENCES:
            assert engine.submit("call-1", utterance(speech(text)), got)
        assert engine.submit("call-1", utterance(silence(1.0)), got)  # the VAD guard
        results = got.wait(3)
    finally:
        engine.stop()
        worker.stop()
    by_id = {out.utterance_id: (seg, out) for seg, out in results}
    for uid, text in enumerate(SENTENCES, 1):
        seg, out = by_id[uid]
        assert seg is not None and wer(text, seg.text) <= 0.2, (text, seg)
        assert seg.call_uuid == "call-1" and seg.words and seg.words[0].start >= 1.0
        assert isinstance(out, SttDone) and out.worker == "test-worker", out
        assert out.remote_ms is not None and out.result.rejected is None
        # What a local result has (the worker ran SttEngine.transcribe): the decoder's
        # figures came over the wire.
        local = whisper.transcribe(speech(text), 8000)
        assert out.result.path == local.path and out.result.avg_logprob is not None
        assert out.result.text == seg.text and len(out.result.words) == len(seg.words)
        print(f"remote {out.remote_ms:.1f} ms, of which Whisper "
              f"{out.result.processing_ms:.1f}")
    seg, out = by_id[3]
    assert seg is None and isinstance(out, SttDone) and out.result.rejected == "vad"


def test_no_workers_drops_at_once(nats_server: NatsServer) -> None:
    engine = remote(nats_server.url, worker_timeout_s=0.3)
    before = dropped("no_workers")
    try:
        time.sleep(0.4)  # past the start-up grace, no heartbeat heard
        got = Results()
        t0 = time.monotonic()
        engine.submit("call-1", utterance(silence(1.0)), got)
        _, out = got.wait(1, 2.0)[0]
        assert out == SttDropped(1, "no_workers")
        assert time.monotonic() - t0 < 1.0  # not at its 10 s deadline
    finally:
        engine.stop()
    assert dropped("no_workers") - before == 1


def test_unanswered_utterance_times_out(nats_server: NatsServer) -> None:
    before = dropped("timeout")
    with heartbeats(nats_server.url):
        engine = remote(nats_server.url, reply_grace_s=0.2)
        try:
            got = Results()
            t0 = time.monotonic()
            engine.submit("call-1", utterance(silence(1.0)), got, deadline_s=0.3)
            _, out = got.wait(1, 5.0)[0]
            waited = time.monotonic() - t0
        finally:
            engine.stop()
    assert isinstance(out, SttDropped) and out.reason == "timeout"
    assert 0.45 <= waited < 2.0, waited
    assert dropped("timeout") - before == 1


def test_full_pool_refuses(nats_server: NatsServer) -> None:
    """``max_msgs`` with ``discard=new``: past it, the publish is refused (``pool_full``)."""
    before = dropped("pool_full")
    with heartbeats(nats_server.url):
        engine = remote(nats_server.url, pool=1, inflight=3)
        try:
            got = Results()
            for i in range(3):
                engine.submit(f"call-{i}", utterance(silence(0.5)), got)
            assert got.wait(2, 5.0)
            assert got.reasons() == ["pool_full", "pool_full"]
        finally:
            engine.stop()
    assert dropped("pool_full") - before == 2
    assert got.reasons()[-1] == "stopped"  # the one in the stream, when the engine stopped


def test_unreachable_at_start_fails_after_timeout(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    engine = RemoteSttEngine(nats_url=f"nats://127.0.0.1:{port}", connect_timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable, match="unreachable"):
        engine.start()
    assert 0.45 <= time.monotonic() - t0 < 3.0
    got = Results()
    assert not engine.submit("call-1", utterance(silence(0.5)), got)
    assert got.reasons() == ["not_running"]


@pytest.mark.slow
def test_nats_restart_mid_call(nats_server: NatsServer, whisper: SttEngine) -> None:
    """NATS goes away: calls go on, utterances drop with a reason; it comes back (a fresh
    server: the memory stream is gone) and both sides find their way back on their own."""
    worker = WorkerThread(nats_server.url, whisper).start()
    engine = remote(nats_server.url, worker_timeout_s=1.5)
    try:
        wait_for(lambda: engine.workers_alive() and "test-worker" in engine._workers)
        nats_server.stop()
        got = Results()
        engine.submit("call-1", utterance(speech(SENTENCES[0])), got)
        _, out = got.wait(1, 5.0)[0]
        assert isinstance(out, SttDropped) and out.reason == "no_workers"
        nats_server.start()  # same port
        wait_for(lambda: engine.workers_alive() and engine._nc is not None
                 and engine._nc.is_connected, 15.0)
        time.sleep(0.5)  # the worker binds its consumer again
        engine.submit("call-1", utterance(speech(SENTENCES[1])), got)
        seg, out = got.wait(2, 20.0)[1]
    finally:
        engine.stop()
        worker.stop()
    assert seg is not None and wer(SENTENCES[1], seg.text) <= 0.2, out


async def test_composition_root_builds_the_remote_engine(nats_server: NatsServer,
                                                         tmp_path: Path) -> None:
    cfg = load_config(overrides={"data_dir": str(tmp_path)}, environ={
        "AUDIOSOCKET_CLUSTER__NATS": nats_server.url, "AUDIOSOCKET_CLUSTER__STT_REMOTE": "true",
        "AUDIOSOCKET_CLUSTER__STT_REMOTE_INFLIGHT": "3",
    })
    ctx = AppContext(cfg)
    stt = await ensure_stt(ctx)
    try:
        assert isinstance(stt, RemoteSttEngine) and stt.inflight == 3
        assert stt._backend is None  # no Whisper loaded on this server
    finally:
        await asyncio.to_thread(stt.stop)
    nats_server.stop()
    cfg.cluster.connect_timeout_s = 0.3
    with pytest.raises(ConnectionError):
        await ensure_stt(AppContext(cfg))


def test_result_survives_the_wire() -> None:
    r = SttResult("Hi", 0.8, duration_s=1.0, dbfs=-math.inf, voiced_ms=640.0,
                  processing_ms=12.5, words=(Word(" Hi", 0.1, 0.4, 0.9),),
                  avg_logprob=-0.2, no_speech_prob=float(np.float32(0.25)), tokens=3,
                  path="short", raw_text=" Hi")
    assert decode_result(encode_result(r)) == r
    # A backend's numpy scalars go out as plain floats and come back equal.
    r32 = replace(r, no_speech_prob=np.float32(0.25))  # type: ignore[arg-type]
    assert decode_result(encode_result(r32)) == r
    vad = SttResult("", 0.0, duration_s=1.0, dbfs=-60.5, voiced_ms=0.0, processing_ms=0.1,
                    rejected="vad")
    assert decode_result(encode_result(vad)) == vad
    for other in (WorkerExpired(), WorkerError("RuntimeError('boom')")):
        assert decode_result(encode_result(other)) == other


_floats = st.floats(allow_nan=False)  # NaN is never equal to itself, on the wire or not
_opt = st.none() | _floats
_text = st.text()
_words = st.lists(st.builds(Word, _text, _floats, _floats, _floats), max_size=5).map(tuple)


@settings(max_examples=200, deadline=None)
@given(st.builds(SttResult, _text, _floats, duration_s=_floats, dbfs=_floats,
                 voiced_ms=_floats, processing_ms=_floats, rejected=st.none() | _text,
                 words=_words, avg_logprob=_opt, no_speech_prob=_opt,
                 tokens=st.none() | st.integers(), path=st.none() | _text,
                 raw_text=st.none() | _text))
def test_any_result_round_trips_exactly(r: SttResult) -> None:
    assert decode_result(encode_result(r)) == r


@pytest.mark.parametrize("data", [b"", b"{}", b'{"status": "done"}', b'{"status": "maybe"}',
                                  b'{"status": "done", "result": {"text": "x"}}', b"[1]"])
def test_unreadable_reply_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="unreadable STT reply"):
        decode_result(data)
