"""The transcribe app end to end: a software caller speaks (Piper), the bundled Whisper
transcribes it live, and the store/API has the words with offsets and latencies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from audiosocket.caller import place_call
from sessions.transcribe import TranscribeSession
from tests.helpers.speech_fixtures import silence, synth_speech, wer
from tests.helpers.store.api_view import await_transcript

pytestmark = pytest.mark.slow

FIRST = "I would like to check the status of my order."
SECOND = "My phone number has changed since last year."  # stable across VAD cut points


async def test_transcript_complete_after_hangup(start_server: Any) -> None:
    server = await start_server(TranscribeSession)
    store = server.ctx.services.store
    audio = silence(0.5) + synth_speech(FIRST) + silence(1.2) + synth_speech(SECOND)
    # Hang up right after the last word: the final utterance is flushed at hang-up.
    result = await place_call("127.0.0.1", server.port, pcm=audio, linger=0.1)
    call = await await_transcript(store, result.uuid, 2, timeout=20, every=0.2)
    assert call is not None
    assert call["app"] == "transcribe" and call["end_reason"] == "remote_closed"
    segs = call["transcript"]
    assert len(segs) == 2, segs
    assert wer(FIRST, segs[0]["text"]) <= 0.2, segs[0]["text"]
    assert wer(SECOND, segs[1]["text"]) <= 0.2, segs[1]["text"]
    # Offsets are on the call's timeline: speech started ~0.5 s in, the second after a pause.
    # On a busy machine the caller itself sends late; the server's timeline follows what
    # really arrived, so compare with when those frames were really sent.
    first_len = len(synth_speech(FIRST)) / 16000
    second_frame = round((0.5 + first_len + 1.2) / 0.02)
    assert 0.1 <= segs[0]["start"] <= result.sent_at[25] + 0.2
    assert segs[1]["start"] == pytest.approx(result.sent_at[second_frame], abs=0.45)
    assert all(s["latency_ms"] > 0 and 0 < s["confidence"] <= 1 for s in segs)


async def test_quiet_caller_silence_ends_utterances(start_server: Any) -> None:
    # The caller sends speech then NOTHING (no frames at all): the clock measures the
    # silence and the utterance is transcribed while the call is still up.
    server = await start_server(TranscribeSession)
    store = server.ctx.services.store
    call_task = asyncio.create_task(
        place_call("127.0.0.1", server.port, pcm=synth_speech(FIRST), linger=6.0)
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8
    segs: list[Any] = []
    while loop.time() < deadline and not segs:
        await asyncio.sleep(0.2)
        live = [c for c in server.calls.values() if c.session is not None]
        if live:
            segs = list(live[0].session.segments)  # type: ignore[union-attr]
    assert not call_task.done(), "the segment must arrive while the call is live"
    assert segs and wer(FIRST, segs[0].text) <= 0.2
    await call_task
    await store.aflush()
