"""POST /api/uploads: the server re-validates everything the page claims to have checked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from audiosocket.config import Config
from audiosocket.root.app import Services
from helpers.audio import wav_bytes
from helpers.postcall.jobs import PostCallJobs
from helpers.store.db import CallStore
from tests.helpers.speech_fixtures import silence, synth_speech
from web.app import make_app

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.slow  # FFmpeg decodes every upload


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def store(data_dir: Path) -> Iterator[CallStore]:
    s = CallStore(data_dir).open()
    yield s
    s.close()


async def _client(store: CallStore, data_dir: Path, jobs: bool = True,
                  max_mb: int = 1) -> Client:
    cfg = Config(data_dir=str(data_dir))
    cfg.web.max_upload_mb = max_mb
    services = Services(store=store, jobs=PostCallJobs(store, data_dir) if jobs else None)
    return TestClient(TestServer(make_app(cfg, services)))


@pytest.fixture
async def client(store: CallStore, data_dir: Path) -> AsyncIterator[Client]:
    async with await _client(store, data_dir) as c:
        yield c


def speech_wav() -> bytes:
    return wav_bytes(synth_speech("I would like to book a table for two tonight.", 16000), 16000)


def leftovers(data_dir: Path) -> list[Path]:
    return list((data_dir / "uploads").glob("*")) if (data_dir / "uploads").exists() else []


async def test_limits_are_published(client: Client) -> None:
    body = await (await client.get("/api/uploads")).json()
    assert body["max_bytes"] == 1024 * 1024 and body["min_seconds"] == 0.5
    assert body["enabled"] is True and "audio/wav" in body["accepted_types"]


async def test_silent_file_is_refused_with_reason(client: Client, data_dir: Path) -> None:
    r = await client.post("/api/uploads", data=wav_bytes(silence(2.0, 8000), 8000),
                          headers={"Content-Type": "audio/wav"})
    assert r.status == 422
    body = await r.json()
    assert body["error"] == "invalid_audio" and body["reason"] == "silent"
    assert not leftovers(data_dir)


@pytest.mark.parametrize("payload,reason", [
    (b"this is not audio at all" * 50, "undecodable"),
    (wav_bytes(b"\x10\x20" * 800, 8000), "too_short"),  # 0.1 s
])
async def test_bad_audio_is_refused(client: Client, payload: bytes, reason: str) -> None:
    r = await client.post("/api/uploads", data=payload,
                          headers={"Content-Type": "application/octet-stream"})
    assert r.status == 422 and (await r.json())["reason"] == reason


async def test_size_cap_413_declared_and_streamed(client: Client, data_dir: Path) -> None:
    big = b"\0" * (1024 * 1024 + 1)
    r = await client.post("/api/uploads", data=big, headers={"Content-Type": "audio/wav"})
    assert r.status == 413 and (await r.json())["error"] == "too_large"

    async def chunks():  # no Content-Length: the cap must hold while streaming
        for _ in range(20):
            yield b"\0" * 65536

    r = await client.post("/api/uploads", data=chunks(), headers={"Content-Type": "audio/wav"})
    assert r.status == 413
    assert not leftovers(data_dir)


@pytest.mark.parametrize("ctype", ["text/plain", "image/png", "application/json", ""])
async def test_content_type_checked(client: Client, ctype: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    r = await client.post("/api/uploads", data=speech_wav(), headers=headers,
                          skip_auto_headers=() if ctype else ("Content-Type",))
    assert r.status == 415
    form = aiohttp.FormData()
    form.add_field("file", speech_wav(), filename="x.wav", content_type="text/html")
    r = await client.post("/api/uploads", data=form)
    assert r.status == 415


async def test_raw_upload_is_imported(client: Client, store: CallStore, data_dir: Path) -> None:
    r = await client.post("/api/uploads", data=speech_wav(),
                          headers={"Content-Type": "audio/wav",
                                   "X-Filename": "caf%C3%A9%2F..%2Fbooking.wav"})
    assert r.status == 201
    body = await r.json()
    assert body["url"] == f"/calls/{body['uuid']}" and body["skipped"] is False
    assert r.headers["Location"] == body["url"]
    call = store.get_call_row(body["uuid"])
    assert call is not None and call.app == "upload"
    assert "/" not in call.meta["source"] and call.meta["source"].endswith("booking.wav")
    assert (data_dir / "recordings" / f"{body['uuid']}.wav").exists()
    assert {j.step for j in store.jobs_for(body["uuid"])} >= {"archive_mp3", "transcript"}
    assert not leftovers(data_dir)
    # The same content again is recognised, not imported twice.
    r = await client.post("/api/uploads", data=speech_wav(), headers={"Content-Type": "audio/wav"})
    assert r.status == 200 and (await r.json())["skipped"] is True


async def test_multipart_upload_is_imported(client: Client, store: CallStore) -> None:
    form = aiohttp.FormData()
    form.add_field("note", "ignored")
    form.add_field("file", speech_wav(), filename="table.wav", content_type="audio/wav")
    r = await client.post("/api/uploads", data=form)
    assert r.status == 201
    uuid = (await r.json())["uuid"]
    row = store.get_call_row(uuid)
    assert row is not None and row.meta["source"] == "table.wav"
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="a.wav", content_type="audio/wav")
    assert (await client.post("/api/uploads", data=form)).status == 400


async def test_uploads_off_without_jobs(store: CallStore, data_dir: Path) -> None:
    async with await _client(store, data_dir, jobs=False) as c:
        r = await c.post("/api/uploads", data=speech_wav(), headers={"Content-Type": "audio/wav"})
        assert r.status == 503
        assert (await (await c.get("/api/uploads")).json())["enabled"] is False
