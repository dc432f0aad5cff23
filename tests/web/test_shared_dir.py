"""Recordings on a shared directory (``[cluster] shared_dir``): written there by a real
call, stored relative to it, served by the portal with Range / 206 on both the fast path
and aiohttp's; rows from before (absolute paths) still served; ``calls.db`` stays in
``data_dir``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from audiosocket.caller import place_call
from sessions.record import RecordSession
from web.app import make_app
from web.fastpath import _FAST_206, fast_site


class RecordWithJobs(RecordSession):
    """The record app with the call store and the post-call jobs, as ``serve`` runs it."""

    needs = ("store", "jobs")


def _tone(seconds: float, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes()


async def _portal(server: Any) -> tuple[web.AppRunner, str]:
    """The portal as ``serve`` runs it: the server's config and services, the fast site."""
    app = make_app(server.ctx.config, server.ctx.services, health=server.health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = fast_site(app, runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def _ended(server: Any) -> None:
    for _ in range(500):
        if not server.calls:
            server.ctx.services.writer.flush()
            return
        await asyncio.sleep(0.02)
    raise AssertionError("calls still running")


@pytest.mark.slow  # the post-call jobs: FFmpeg and Whisper
async def test_recorded_on_the_shared_dir_served_with_ranges(
    start_server: Any, tmp_path: Path
) -> None:
    shared, data = tmp_path / "shared", tmp_path / "data"
    server = await start_server(RecordWithJobs, data_dir=str(data),
                                **{"cluster.shared_dir": str(shared)})
    store = server.ctx.services.store
    result = await place_call("127.0.0.1", server.port, pcm=_tone(1.0), linger=0.2)
    await _ended(server)
    # Written on the shared dir, stored relative to it; the database stays in data_dir.
    wav = shared / "recordings" / f"{result.uuid}.wav"
    assert wav.is_file() and not (data / "recordings" / f"{result.uuid}.wav").exists()
    assert (data / "calls.db").is_file() and not (shared / "calls.db").exists()
    await server.ctx.services.jobs.wait_idle(120)
    rows = await store.aread(store.recordings_for, result.uuid)
    # The post-call jobs read it there and put their output beside it, relative too.
    assert {fmt: r.path for fmt, r in rows.items()} == {
        "wav": f"recordings/{result.uuid}.wav", "m4a": f"archive/{result.uuid}.m4a",
        "mp3": f"archive/{result.uuid}.mp3", "peaks": f"peaks/{result.uuid}.json"}
    assert all((shared / r.path).is_file() for r in rows.values())
    body = wav.read_bytes()

    # A row from before the shared dir: an absolute path (here under data_dir) as it is.
    legacy_id = "00000000-0000-4000-8000-000000000001"
    legacy = data / "recordings" / f"{legacy_id}.wav"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_bytes(body[:5000])
    store.call_started(legacy_id, "record", 8000, None, 1.0)
    store.call_ended(legacy_id, 2.0, "remote_closed", 0, 0)
    store.set_recording(legacy_id, "wav", str(legacy), 5000, 0.3)
    store.flush()
    assert store.recordings_for(legacy_id)["wav"].path == str(legacy)

    runner, url = await _portal(server)
    try:
        async with aiohttp.ClientSession() as http:
            for call_id, data_bytes in ((result.uuid, body), (legacy_id, body[:5000])):
                rec = f"{url}/api/calls/{call_id}/recording.wav"
                fast_before = _FAST_206._value.get()
                # A connection of its own: one handed to aiohttp (the multi-range request
                # below) stays with it.
                async with aiohttp.ClientSession() as fresh:
                    r = await fresh.get(rec, headers={"Range": "bytes=100-1099"})
                    data = await r.read()
                assert r.status == 206, (call_id, r.status)
                assert r.headers["Content-Range"] == f"bytes 100-1099/{len(data_bytes)}"
                assert data == data_bytes[100:1100]
                assert _FAST_206._value.get() == fast_before + 1  # the fast path served it
                # Two ranges: aiohttp's path (multipart/byteranges) resolves it the same way.
                r = await http.get(rec, headers={"Range": "bytes=0-9,20-29"})
                assert r.status == 206 and r.content_type == "multipart/byteranges"
                raw = await r.read()
                assert data_bytes[0:10] in raw and data_bytes[20:30] in raw
                r = await http.get(rec)
                assert r.status == 200 and await r.read() == data_bytes
            # Deleting the call removes its file on the shared dir.
            r = await http.delete(f"{url}/api/calls/{result.uuid}")
            assert r.status == 200 and (await r.json())["files"] == 4
            assert not any((shared / r.path).exists() for r in rows.values())
    finally:
        await runner.cleanup()
