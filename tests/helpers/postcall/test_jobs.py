"""Post-call jobs with real FFmpeg, the real bundled Whisper and a real SQLite store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audiosocket.config import load_config
from audiosocket.root.app import AppContext
from audiosocket.root.services import close_services, ensure_jobs
from helpers.audio import write_wav
from helpers.postcall.archive import probe_duration
from helpers.postcall.retention import apply_retention
from tests.helpers.speech_fixtures import silence, synth_speech
from tests.helpers.store.api_view import aapi_call

pytestmark = pytest.mark.slow

PROMPT = "Welcome to Acme. Say sales, support or billing."
SPEECH = "My internet connection has been down since yesterday. Please send a technician."


def stereo_call(path: Path, left: bytes, rate: int = 8000) -> float:
    mono = np.frombuffer(left, "<i2")
    stereo = np.zeros(len(mono) * 2, "<i2")
    stereo[0::2] = mono
    write_wav(path, stereo.tobytes(), rate, channels=2)
    return len(mono) / rate


@pytest.fixture
async def ctx(tmp_path: Path) -> Any:
    cfg = load_config(overrides={"data_dir": str(tmp_path / "data")}, environ={})
    context = AppContext(cfg)
    yield context
    await close_services(context)


async def test_pipeline_archives_transcribes_and_summarises(ctx: Any) -> None:
    jobs = await ensure_jobs(ctx)
    store = ctx.services.store
    wav = ctx.data_dir / "recordings" / "c1.wav"
    wav.parent.mkdir(parents=True)
    seconds = stereo_call(wav, silence(0.5) + synth_speech(SPEECH) + silence(0.5))
    store.call_started("c1", "record", 8000, None, time.time() - seconds)
    store.call_ended("c1", time.time(), "remote_closed", 0, 0)
    # What the server said is in the transcript too; the summary is of the caller's words.
    store.add_segment("c1", 0.0, 0.4, PROMPT, None, None, speaker="server")
    jobs.submit("c1", wav)
    await jobs.wait_idle(120)
    call = await aapi_call(store, "c1")
    assert [s["text"] for s in call["transcript"] if s["speaker"] == "server"] == [PROMPT]
    assert "welcome" not in (call["summary"]["title"] + call["summary"]["text"]).lower()
    assert call["jobs"] == {s: "done" for s in
                            ("archive_aac", "archive_mp3", "peaks", "transcript", "summary")}
    for fmt in ("m4a", "mp3"):
        path = ctx.data_dir / "archive" / f"c1.{fmt}"
        assert abs(await probe_duration(path) - seconds) <= 0.1
        assert call["recordings"][fmt] == f"/api/calls/c1/recording.{fmt}"
    words = " ".join(s["text"] for s in call["transcript"]).lower()
    assert "internet" in words and "technician" in words
    summary = call["summary"]
    assert summary["method"] == "extractive" and summary["model"] is None
    assert 0 < len(summary["title"]) <= 50 and summary["text"]
    assert wav.exists()  # the original is kept (no retention rule)
    # The gauge follows the store: once every job is done it reads 0 (it kept a stale 1).
    from helpers.postcall.jobs import QUEUE

    deadline = time.monotonic() + 10
    while QUEUE._value.get() != 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a gauge
        await asyncio.sleep(0.1)
    assert QUEUE._value.get() == 0


async def test_failures_retry_then_fail_with_the_error(ctx: Any) -> None:
    jobs = await ensure_jobs(ctx)
    jobs.max_attempts = 2
    store = ctx.services.store
    store.call_started("c2", "record", 8000, None, time.time())
    store.call_ended("c2", time.time(), "remote_closed", 0, 0)
    bad = ctx.data_dir / "recordings" / "c2.wav"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")  # not decodable
    jobs.submit("c2", bad)
    await jobs.wait_idle(60)
    rows = {j.step: j for j in await store.aread(store.jobs_for, "c2")}
    assert rows["archive_aac"].status == "failed"
    assert rows["archive_aac"].attempts == 2
    assert rows["archive_aac"].error  # FFmpeg's own explanation is kept
    assert rows["summary"].status == "failed"  # its transcript failed too
    assert not (ctx.data_dir / "archive" / "c2.m4a").exists()


async def test_retention_respects_jobs_and_archives(ctx: Any) -> None:
    jobs = await ensure_jobs(ctx)
    store = ctx.services.store
    old = time.time() - 40 * 86400
    wav = ctx.data_dir / "recordings" / "c3.wav"
    wav.parent.mkdir(parents=True, exist_ok=True)
    stereo_call(wav, synth_speech("Hello there."))
    store.call_started("c3", "record", 8000, None, old)
    store.call_ended("c3", old + 5, "remote_closed", 0, 0)
    store.set_recording("c3", "wav", str(wav), wav.stat().st_size, 1.0)
    store.enqueue_jobs("c3", ["archive_aac"])  # pending: the WAV is still needed
    store.flush()
    assert await asyncio.to_thread(apply_retention, store, {"wav": 30}) == []
    jobs.submit("c3", wav)
    await jobs.wait_idle(120)
    deleted = await asyncio.to_thread(apply_retention, store, {"wav": 30, "mp3": 90})
    assert [(d.call_uuid, d.fmt) for d in deleted] == [("c3", "wav")]
    assert not wav.exists() and (ctx.data_dir / "archive" / "c3.mp3").exists()
    audit = await store.aread(store.audit_log)
    assert any(a.action == "retention_delete" and a.call_uuid == "c3" for a in audit)


async def test_aclose_returns_even_if_a_step_absorbs_the_cancel(ctx: Any) -> None:
    # Python 3.11's wait_for could lose a cancel that arrived as its inner await finished;
    # the worker then went on looping and shutdown waited on it forever (a CI hang).
    # Simulate the worst case, a step that swallows its cancellation outright.
    jobs = await ensure_jobs(ctx)
    store = ctx.services.store
    entered = asyncio.Event()
    absorbed: list[bool] = []

    async def stubborn(call_uuid: str) -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            absorbed.append(True)  # and return normally: the cancel is gone

    jobs._step_archive_aac = stubborn
    store.call_started("c3", "record", 8000, None, time.time())
    store.call_ended("c3", time.time(), "remote_closed", 0, 0)
    store.enqueue_jobs("c3", ["archive_aac"])
    jobs._poke()
    async with asyncio.timeout(10):
        await entered.wait()
    started = time.monotonic()
    async with asyncio.timeout(10):
        await jobs.aclose()
    assert absorbed == [True]
    assert time.monotonic() - started < 5
    assert all(t.done() for t in asyncio.all_tasks() if t.get_name().startswith("jobs-"))
