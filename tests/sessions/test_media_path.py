"""The recording apps on the C media path: a call's audio in blocks from the line's tape.

Real server, real TCP, real WAV files (and Whisper for the transcript). Each test checks
that the call really rode the C path (the clock's ``native_lines``, the wake events) and
that what the app made of it is what the Python path makes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audiosocket import metrics
from audiosocket.caller import place_call
from audiosocket.clock import NATIVE_AVAILABLE
from audiosocket.protocol import CallId, encode_audio, encode_frame, encode_hangup
from sessions.record import RecordSession, recording_path
from sessions.transcribe import TranscribeSession
from tests.audiosocket.test_server import wait_for
from tests.helpers.speech_fixtures import silence, synth_speech, wer
from tests.helpers.store.api_view import await_transcript

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="audiosocket._wire not built")

PATHS = pytest.mark.parametrize("native", [True, False], ids=["native", "python"])


def numbered_frames(n: int) -> bytes:
    """``n`` frames, frame k a ramp starting at k + 1: each frame is told apart by value."""
    ramp = np.arange(160, dtype=np.int64)
    return b"".join(((ramp + k * 7 + 1) % 30000 + 1).astype("<i2").tobytes() for k in range(n))


async def watch_native(server: Any, until: asyncio.Event) -> int:
    """The most calls seen on the C path at once while ``until`` is not set."""
    most = 0
    while not until.is_set():
        most = max(most, server.clock.native_lines)
        await asyncio.sleep(0.02)
    return most


def wake_events() -> float:
    return metrics.NATIVE_EVENTS.labels(event="wake")._value.get()


@PATHS
async def test_record_rides_the_c_path_and_keeps_every_frame(
    start_server: Any, native: bool, tmp_path: Path
) -> None:
    server = await start_server(RecordSession, native_media=native)
    pcm = numbered_frames(150)  # 3 s, every frame distinct
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_native(server, done))
    result = await place_call("127.0.0.1", server.port, pcm=pcm, linger=0.3)
    done.set()
    most = await watcher
    assert most == (1 if native else 0)
    await wait_for(lambda: not server.calls)
    assert_recorded_once(recording_path(tmp_path / "data", result.uuid), pcm)


def assert_recorded_once(path: Path, pcm: bytes) -> None:
    """The WAV's left leg holds every frame of ``pcm`` once, in order, from near its start;
    the right leg (what the record app sent) is silence."""
    with wave.open(str(path), "rb") as wf:
        data = np.frombuffer(wf.readframes(wf.getnframes()), "<i2")
    left, right = data[0::2], data[1::2]
    frames = [f for f in left.reshape(-1, 160) if f.any()]
    sent = np.frombuffer(pcm, "<i2").reshape(-1, 160)
    assert len(frames) == len(sent)
    assert all(np.array_equal(a, b) for a, b in zip(frames, sent, strict=True))
    assert not right.any()  # the record app sends only silence
    # The caller's first frame sits where it was read: not after it (no lag from blocks).
    first = next(i for i, f in enumerate(left.reshape(-1, 160)) if f.any())
    assert first <= 5


@pytest.mark.parametrize("read_ms", [20, 40])
async def test_media_read_ms_sets_how_often_a_taped_line_is_read(
    start_server: Any, tmp_path: Path, read_ms: int
) -> None:
    """``media_read_ms`` reaches each taped line's state; read every tick or every second
    one, the recording holds every frame once where it was read."""
    from audiosocket.native import State

    server = await start_server(RecordSession, native_media=True, media_read_ms=read_ms)
    assert server.clock.tape_read_ticks == read_ms // 20
    pcm = numbered_frames(150)
    call = asyncio.create_task(place_call("127.0.0.1", server.port, pcm=pcm, linger=0.3))
    await wait_for(lambda: server.clock.native_lines == 1, timeout=5)
    state = State()
    state.buf[:] = server.clock._lines[0][0]
    assert state["read_ticks"] == read_ms // 20
    result = await call
    await wait_for(lambda: not server.calls)
    assert_recorded_once(recording_path(tmp_path / "data", result.uuid), pcm)


async def test_a_stall_s_backlog_stays_on_the_c_path_and_is_recorded_whole(
    start_server: Any, tmp_path: Path
) -> None:
    """The server stalls for 1.5 s (its loop blocked) while the caller goes on sending in
    real time: the frames pile up in the socket, more than one read's buffer (50 frames).
    The C path reads the backlog in one tick onto the tape, the call is never handed back,
    and the WAV has every frame once, in order (the recorder places a stall's burst where
    it belongs, as on the Python path)."""
    server = await start_server(RecordSession, native_media=True)
    chunks = metrics.NATIVE_EVENTS.labels(event="chunk")
    speaking, may_hang_up = threading.Event(), threading.Event()
    audio = numbered_frames(150)

    def caller() -> None:  # paced in real time on its own thread: the loop will stall
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(encode_frame(CallId(uuid.uuid4())))
            frames = [bytes(320)] * 25 + [audio[k * 320 : (k + 1) * 320] for k in range(150)]
            start = time.monotonic()
            for k, pcm in enumerate(frames + [bytes(320)] * 25):
                if k == 25:
                    speaking.set()
                time.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
                sock.sendall(encode_audio(pcm))
            may_hang_up.wait(10)
            sock.sendall(encode_hangup())
            sock.recv(1 << 16)

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        await wait_for(lambda: server.clock.native_lines == 1)
        await asyncio.to_thread(speaking.wait, 10)
        before = chunks._value.get()
        await asyncio.sleep(0.5)
        time.sleep(1.5)  # noqa: ASYNC251  # the stall: nothing on the loop runs
        for _ in range(60):
            await asyncio.sleep(0.02)
            assert server.clock.native_lines == 1  # never handed back
        assert chunks._value.get() == before  # nothing of it went to the Python decoder
    finally:
        may_hang_up.set()
        await asyncio.to_thread(thread.join, 15)
    await wait_for(lambda: not server.calls)
    wavs = list((tmp_path / "data" / "recordings").glob("*.wav"))
    assert len(wavs) == 1
    with wave.open(str(wavs[0]), "rb") as wf:
        data = np.frombuffer(wf.readframes(wf.getnframes()), "<i2")
    frames = [f for f in data[0::2].reshape(-1, 160) if f.any()]
    sent = np.frombuffer(audio, "<i2").reshape(-1, 160)
    assert len(frames) == len(sent)
    assert all(np.array_equal(a, b) for a, b in zip(frames, sent, strict=True))


class LiveRecord(RecordSession):
    """The record app with the live hub (the portal's live view and listen-in)."""

    needs = ("live",)


async def test_a_listen_in_brings_a_taped_call_back_frame_by_frame(start_server: Any) -> None:
    server = await start_server(LiveRecord, native_media=True)
    call = asyncio.create_task(
        place_call("127.0.0.1", server.port, pcm=numbered_frames(100), linger=0.2))
    await wait_for(lambda: server.clock.native_lines == 1, timeout=3.0)
    hub = server.ctx.services.live
    (call_id,) = list(server.calls)
    entry, listener = hub.listen(call_id)
    assert server.clock.native_lines == 0  # woken at once: listeners hear it as it comes
    got = await listener.next(timeout=1.0)
    assert got
    await asyncio.sleep(0.3)
    assert server.clock.native_lines == 0  # and it stays off while someone listens
    hub.unlisten(entry, listener)
    await call


async def test_a_listening_app_s_line_takes_quiet_blocks_and_its_recording_is_whole(
    start_server: Any, tmp_path: Path
) -> None:
    """A transcribing call wakes at the caller's first sound, so while it rides the C path
    its tape holds only the caller's digital silence: it is drained every
    ``media_block_quiet_s``, a recording call every ``media_block_s``. Either way what was
    taped reaches the WAV when the call ends."""
    server = await start_server(TranscribeSession, native_media=True,
                                media_block_s=0.5, media_block_quiet_s=10.0)
    clock = server.clock
    assert (clock.block_ticks, clock.quiet_block_ticks) == (25, 500)
    call = asyncio.create_task(
        place_call("127.0.0.1", server.port, pcm=silence(3.0), linger=0.2))
    await wait_for(lambda: clock.native_lines == 1, timeout=5)
    line = clock._lines[0]
    assert any(line in bucket for bucket in clock._quiet_blocks)
    assert not any(line in bucket for bucket in clock._blocks)
    result = await call
    await wait_for(lambda: not server.calls)
    # Shorter than a quiet block, so no block reached it while the call was up: the
    # drain at hang-up wrote it all (3 s of silence, the linger and the hang-up's slack).
    with wave.open(str(recording_path(tmp_path / "data", result.uuid)), "rb") as wf:
        assert 3.0 <= wf.getnframes() / wf.getframerate() <= 4.5


async def test_a_recording_app_s_line_takes_ordinary_blocks(
    start_server: Any, tmp_path: Path
) -> None:
    """The record app does not wake at sound (every frame of speech rides the tape), so
    its line keeps ``media_block_s`` however long ``media_block_quiet_s`` is."""
    server = await start_server(RecordSession, native_media=True,
                                media_block_s=0.5, media_block_quiet_s=10.0)
    clock = server.clock
    call = asyncio.create_task(
        place_call("127.0.0.1", server.port, pcm=numbered_frames(100), linger=0.2))
    await wait_for(lambda: clock.native_lines == 1, timeout=5)
    line = clock._lines[0]
    assert any(line in bucket for bucket in clock._blocks)
    assert not any(line in bucket for bucket in clock._quiet_blocks)
    await call


FIRST = "I would like to check the status of my order."
SECOND = "My phone number has changed since last year."


@PATHS
async def test_a_silent_caller_rides_in_blocks_and_speech_wakes_it(
    start_server: Any, native: bool
) -> None:
    """Digital silence goes to the VAD in blocks from the tape; the first frame of speech
    hands the call back at once, so the transcript is the Python path's."""
    server = await start_server(TranscribeSession, native_media=native)
    store = server.ctx.services.store
    wakes = wake_events()
    audio = silence(1.5) + synth_speech(FIRST) + silence(1.5) + synth_speech(SECOND) + silence(1)
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_native(server, done))
    result = await place_call("127.0.0.1", server.port, pcm=audio, linger=0.2)
    done.set()
    assert await watcher == (1 if native else 0)
    if native:
        assert wake_events() - wakes >= 2  # each sentence woke the line
    call = await await_transcript(store, result.uuid, 2, timeout=20, every=0.2)
    assert call is not None
    segs = [s for s in call["transcript"] if s.get("speaker", "caller") == "caller"]
    assert len(segs) == 2, segs
    assert wer(FIRST, segs[0]["text"]) <= 0.2 and wer(SECOND, segs[1]["text"]) <= 0.2
    first_at = 1.5
    assert segs[0]["start"] == pytest.approx(first_at, abs=0.35)
