"""The record app over a real socket: one time-aligned stereo WAV per call."""

from __future__ import annotations

import asyncio
import uuid
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from audiosocket.caller import place_call
from helpers.postcall.jobs import STEPS
from sessions.record import RecordSession, recording_path
from tests.helpers.store.api_view import aapi_call
from tests.web.portal_fixtures import serve


async def test_record_writes_aligned_stereo(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(RecordSession)
    t = np.arange(8000) / 8000
    pcm = (0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype("<i2").tobytes()
    # 1 s of tone, then the caller goes quiet for 1 s (sends nothing), then hangs up.
    result = await place_call("127.0.0.1", server.port, pcm=pcm, linger=1.0)
    path = recording_path(server.ctx.data_dir, result.uuid)
    for _ in range(100):
        if not server.calls:
            break
        await asyncio.sleep(0.02)
    server.ctx.services.writer.flush()
    with wave.open(str(path), "rb") as wf:
        assert wf.getnchannels() == 2 and wf.getframerate() == 8000
        seconds = wf.getnframes() / 8000
        data = np.frombuffer(wf.readframes(wf.getnframes()), "<i2")
    # The file covers the whole call (tone + quiet), not just the frames received.
    assert 1.8 <= seconds <= 2.6
    left = data[0::2].astype(float)
    voiced = np.nonzero(np.abs(left) > 1000)[0]
    assert voiced[0] / 8000 < 0.1  # the tone starts at the start of the call
    assert 0.9 < voiced[-1] / 8000 < 1.1  # and ends after one second
    assert np.all(data[1::2] == 0)  # record is silent: the right leg is all silence


# ---- a reused AudioSocket UUID (fixed UUIDs in dialplans) ---------------------------------


class RecordWithStore(RecordSession):
    """The record app with the call store, as ``audiosocket serve`` runs it."""

    needs = ("store",)


class RecordWithJobs(RecordSession):
    """The record app with the call store and the post-call jobs."""

    needs = ("store", "jobs")


def tone(freq: float, seconds: float, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


async def calls_done(server: Any) -> None:
    """Until the server has finished every call (on_end included)."""
    for _ in range(500):
        if not server.calls:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("calls still running")


def read_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wf:
        return wf.getnframes() / wf.getframerate()


@pytest.mark.slow
async def test_a_reused_uuid_is_a_call_of_its_own(start_server: Any) -> None:
    server = await start_server(RecordWithJobs)
    ctx = server.ctx
    store, jobs = ctx.services.store, ctx.services.jobs
    fixed = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")  # as in a dialplan
    first = str(fixed)
    await place_call("127.0.0.1", server.port, pcm=tone(300, 1.0), call_uuid=fixed, linger=0.2)
    await calls_done(server)
    await jobs.wait_idle(120)
    files1 = await store.aread(store.recordings_for, first)
    snapshot = {fmt: read_bytes(store.files.path(f.path)) for fmt, f in files1.items()}
    assert {"wav", "m4a", "mp3", "peaks"} <= set(snapshot)

    await place_call("127.0.0.1", server.port, pcm=tone(700, 1.6), call_uuid=fixed, linger=0.2)
    await calls_done(server)
    await jobs.wait_idle(120)

    web = await serve(store, ctx.data_dir, jobs=jobs)
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"{web.url}/api/calls", params={"uuid": first})
            assert r.status == 200
            listed = await r.json()
            r = await http.get(f"{web.url}/api/calls")
            everything = await r.json()
    finally:
        await web.close()
    # Both calls are listed, newest first; the first kept its UUID as its id.
    assert listed["total"] == 2 and everything["total"] == 2
    second, again = (c["uuid"] for c in listed["items"])
    assert again == first and second != first
    assert all(c["audiosocket_uuid"] == first for c in listed["items"])

    # Nothing of the first call changed: every file is byte-identical, in the same place.
    files1_after = await store.aread(store.recordings_for, first)
    assert {f: r.path for f, r in files1_after.items()} == {
        f: r.path for f, r in files1.items()
    }
    for fmt, data in snapshot.items():
        assert read_bytes(store.files.path(files1[fmt].path)) == data, fmt
    # The second call has its own recording, archives and jobs, all named by its own id.
    files2 = await store.aread(store.recordings_for, second)
    assert set(files2) == set(files1)
    for fmt in files2:
        path2 = store.files.path(files2[fmt].path)
        assert second in path2.name and path2 != store.files.path(files1[fmt].path)
        assert read_bytes(path2) != snapshot[fmt], fmt
    assert 0.9 < wav_seconds(store.files.path(files1["wav"].path)) < 1.6
    assert 1.5 < wav_seconds(store.files.path(files2["wav"].path)) < 2.2
    for cid in (first, second):
        call = await aapi_call(store, cid)
        assert set(call["jobs"]) == set(STEPS) and call["jobs"]["archive_aac"] == "done"
        assert call["recordings"]["m4a"] == f"/api/calls/{cid}/recording.m4a"
        assert call["live"] is False and call["audiosocket_uuid"] == first


async def test_a_live_call_with_a_reused_uuid_is_live_and_cannot_be_deleted(
    start_server: Any,
) -> None:
    server = await start_server(RecordWithStore)
    store = server.ctx.services.store
    data_dir = server.ctx.data_dir
    fixed = uuid.uuid4()
    await place_call("127.0.0.1", server.port, pcm=tone(300, 0.6), call_uuid=fixed, linger=0.2)
    await calls_done(server)
    server.ctx.services.writer.flush()
    first_wav = recording_path(data_dir, str(fixed))
    before = first_wav.read_bytes()

    web = await serve(store, data_dir)
    second = asyncio.create_task(
        place_call("127.0.0.1", server.port, pcm=tone(700, 2.0), call_uuid=fixed, linger=0.2)
    )
    try:
        async with aiohttp.ClientSession() as http:
            live = None
            for _ in range(100):
                r = await http.get(f"{web.url}/api/calls", params={"uuid": str(fixed)})
                live = next((c for c in (await r.json())["items"] if c["live"]), None)
                if live is not None:
                    break
                await asyncio.sleep(0.05)
            assert live is not None, "the second call never shows as live"
            assert live["uuid"] != str(fixed) and live["audiosocket_uuid"] == str(fixed)
            live_wav = recording_path(data_dir, live["uuid"])
            r = await http.delete(f"{web.url}/api/calls/{live['uuid']}")
            assert r.status == 409
            assert (await r.json())["error"] == "conflict"
            assert live_wav.exists() and first_wav.read_bytes() == before
            r = await http.get(f"{web.url}/api/calls/{live['uuid']}")
            assert r.status == 200 and (await r.json())["live"] is True
            await second
    finally:
        await web.close()
    await calls_done(server)
    server.ctx.services.writer.flush()
    # The refused DELETE left the recorder alone: the whole second call is on disk.
    assert 1.9 < wav_seconds(live_wav) < 2.6
    assert first_wav.read_bytes() == before
