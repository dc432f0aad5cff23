"""Issue 16, points 3 and 4 end to end: an IVR call through the real server with the demo
flow (real Piper prompts, real Whisper, real sockets, real SQLite) leaves a real message.

The call's stored transcript must hold what the server said interleaved with the caller, and
the message must be stored, transcribed and served with Range/206 by the real portal app.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from audiosocket.caller import place_call
from audiosocket.clock import NATIVE_AVAILABLE
from sessions.ivr import IvrSession
from tests.helpers.speech_fixtures import silence, synth_speech, wer
from tests.helpers.store.api_view import aapi_call
from tests.web.portal_fixtures import serve

pytestmark = pytest.mark.slow

SAID = "Please call me back about my broken heater."


async def _wait_for(store: Any, call_id: str) -> dict[str, Any]:
    """The stored call once its IVR result and its message transcript are in."""
    call: dict[str, Any] | None = None
    for _ in range(600):  # up to 60 s: Whisper shares two busy cores with other tests
        await store.aflush()
        call = await aapi_call(store, call_id)
        if (call and call["ivr"] and call["ivr"]["result"] and call["messages"]
                and call["messages"][0]["transcript"] is not None):
            return call
        await asyncio.sleep(0.1)
    raise AssertionError(f"no message transcript stored: {call}")


async def test_voicemail_and_both_sides_end_to_end(start_server: Any) -> None:
    server = await start_server(IvrSession)
    # Press 3 during the menu prompt (it is cut short), speak after the tone (it ends about
    # 7 s in; 3 s of quiet would end the message), then press # (the demo's terminator).
    speak_at = 8.0
    speech = synth_speech(SAID)
    pound_at = speak_at + len(speech) / 2 / 8000 + 1.0
    audio = silence(speak_at) + speech + silence(2.5)
    result = await place_call("127.0.0.1", server.port, pcm=audio, send_silence=True,
                              dtmf="3#", dtmf_delay=3.5, dtmf_gap=pound_at - 3.5,
                              max_seconds=60, linger=30)
    assert result.hangup_by_server
    store = server.ctx.services.store
    call = await _wait_for(store, result.uuid)
    assert call["ivr"]["result"] == "message"

    # Both sides, by time, labelled; what the server said is its text, not a recognition.
    lines = call["transcript"]
    assert [t["start"] for t in lines] == sorted(t["start"] for t in lines)
    server_lines = [t for t in lines if t["speaker"] == "server"]
    assert [t["text"] for t in server_lines] == [
        "Welcome to the demo line.",
        "For sales, press 1 or say sales. For support, press 2 or say support. "
        "To leave a message, press 3.",
        "Please leave your message after the tone, then press pound.",
        "Your message has been saved.",
        "Goodbye.",
    ]
    assert [t["interrupted"] for t in server_lines] == [False, True, False, False, False]
    for t in server_lines:
        assert t["confidence"] is None and t["end"] > t["start"]
    # The key at 3.5 s cut the menu prompt: it ended soon after, long before its ~8 s.
    menu = server_lines[1]
    assert menu["end"] - menu["start"] < 4.0
    caller = [t for t in lines if t["speaker"] == "caller"]
    assert caller, lines
    record_prompt, saved = server_lines[2], server_lines[3]
    # The caller's words sit between the record prompt and "saved" in the one list.
    spoken = [t for t in caller if record_prompt["end"] <= t["start"] < saved["start"]]
    assert spoken and wer(SAID, " ".join(t["text"] for t in spoken)) <= 0.4, caller
    order = [lines.index(t) for t in (record_prompt, *spoken, saved)]
    assert order == sorted(order)

    # The message: stored where the flow says, on the call's timeline, transcribed.
    (msg,) = call["messages"]
    assert msg["name"] == "message" and msg["stopped_by"] == "terminator"
    assert msg["url"] == f"/api/calls/{result.uuid}/messages/message.wav"
    assert record_prompt["end"] <= msg["start"] < spoken[0]["start"]
    speech_s = len(speech) / 2 / 8000
    assert speech_s < msg["seconds"] < speech_s + 4
    assert wer(SAID, msg["transcript"]) <= 0.3, msg["transcript"]
    data_dir = Path(server.ctx.data_dir)
    wav = data_dir / call["ivr"]["variables"]["message"]
    body = wav.read_bytes()
    assert len(body) > 44 + int(speech_s * 8000 * 2)

    # Served by the real portal app: Range -> 206 with exactly those bytes.
    served = await serve(store, data_dir)
    try:
        async with aiohttp.ClientSession() as http:
            url = served.url + msg["url"]
            async with http.get(url, headers={"Range": "bytes=44-1043"}) as r:
                assert r.status == 206
                assert r.headers["Content-Range"] == f"bytes 44-1043/{len(body)}"
                assert r.headers["Content-Type"] == "audio/wav"
                assert await r.read() == body[44:1044]
            async with http.get(url) as r:
                assert r.status == 200 and await r.read() == body
            for bad in ("nope.wav", "..%2Fcalls.wav", "message.mp3"):
                async with http.get(f"{served.url}/api/calls/{result.uuid}/messages/{bad}") as r:
                    assert r.status == 404, bad
            # Deleting the call deletes its message file too.
            async with http.delete(f"{served.url}/api/calls/{result.uuid}") as r:
                assert r.status == 200, await r.text()
            assert not wav.exists()
            async with http.get(url) as r:
                assert r.status == 404
    finally:
        await served.close()


async def test_a_silent_message_on_the_c_path_keeps_its_last_seconds(start_server: Any) -> None:
    """A caller who leaves nothing but digital silence rides the C path in blocks until the
    message starts; the message is then heard frame by frame (the flow wakes the call), so
    it holds every second up to the silence that ends it, not only what a block had
    delivered by then (blocks come every ``media_block_s``)."""
    server = await start_server(IvrSession, media_block_s=5.0)
    most = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, server.clock.native_lines)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    result = await place_call("127.0.0.1", server.port, pcm=silence(30), send_silence=True,
                              dtmf="3", dtmf_delay=3.5, max_seconds=60, linger=30)
    done.set()
    await watcher
    assert result.hangup_by_server
    if NATIVE_AVAILABLE:
        assert most >= 1  # the call did ride the C path
    store = server.ctx.services.store
    call: dict[str, Any] | None = None
    for _ in range(200):
        await store.aflush()
        call = await aapi_call(store, result.uuid)
        if call and call["messages"]:
            break
        await asyncio.sleep(0.1)
    assert call and call["messages"], call
    (msg,) = call["messages"]
    assert msg["stopped_by"] == "silence"
    # Stopped after 3 s of quiet (the demo's silence_seconds): all of it is in the message.
    assert 2.9 <= msg["seconds"] <= 3.6, msg
