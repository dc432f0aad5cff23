"""The portal in real headless Chromium (Debian's, driven by Playwright for Python).

The server is the real app on a loopback port over a real store, with a finished call whose
archives FFmpeg made and whose speech Piper made (tests/web/portal_fixtures.py). Skipped,
with the reason, when Chromium or Playwright is missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers.audio import write_wav
from helpers.postcall.jobs import PostCallJobs
from helpers.store.db import CallStore
from tests.helpers.speech_fixtures import synth_speech
from tests.helpers.store.api_view import aapi_call
from tests.web.portal_fixtures import Served, seed_call, serve, track_uploads

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    # No sound card here: play() must still run the media clock.
    "--autoplay-policy=no-user-gesture-required", "--mute-audio",
]

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the dev extras
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
                       reason=f"Chromium not installed ({CHROMIUM}); scripts/system-deps.sh "
                              "installs it"),
    pytest.mark.skipif(async_playwright is None,
                       reason="playwright (Python) not installed; it is in the dev extras"),
]

EXE = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
VENDOR = Path(__file__).resolve().parents[2] / "web" / "static" / "vendor"
HAVE_VAD = (VENDOR / "vad" / "silero_vad_v5.onnx").exists()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CallStore]:
    (tmp_path / "data").mkdir()
    s = CallStore(tmp_path / "data").open()
    yield s
    s.close()


@pytest.fixture
async def served(store: CallStore, tmp_path: Path) -> AsyncIterator[Served]:
    # Jobs are not started: an upload only has to land (row, WAV, queued jobs); the
    # pipeline itself is tested elsewhere.
    jobs = PostCallJobs(store, tmp_path / "data")
    s = await serve(store, tmp_path / "data", jobs=jobs)
    yield s
    await s.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert async_playwright is not None
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=EXE, args=ARGS, headless=True)
        yield b
        await b.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    ctx = await browser.new_context(viewport={"width": 1200, "height": 900})
    p = await ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield p
    await ctx.close()
    # CSP violations and script errors show up here; none are acceptable.
    assert not [e for e in errors if "Content Security Policy" in e or "Uncaught" in e], errors


async def test_list_shows_call_and_search_finds_it(
    page: Page, served: Served, store: CallStore, tmp_path: Path
) -> None:
    call = await seed_call(store, tmp_path / "data")
    await page.goto(served.url + "/")
    row = page.locator(f'tr[data-uuid="{call["uuid"]}"]')
    await row.wait_for()
    text = await row.inner_text()
    assert "Parcel status" in text and "remote_closed" in text and "0:" in text

    await page.fill("#q", "manchester")
    await page.press("#q", "Enter")
    await page.locator("#calls tbody tr .snippet mark").first.wait_for()
    assert (await page.locator("#calls tbody tr .snippet mark").first.inner_text()).lower() \
        == "manchester"
    assert "q=manchester" in page.url

    await page.fill("#q", "zeppelin")
    await page.press("#q", "Enter")
    await page.wait_for_function(
        "() => document.querySelectorAll('#calls tbody tr').length === 0")
    assert "No call mentions" in await page.inner_text("#status")


async def test_player_plays_seeks_and_transcript_seeks(
    page: Page, served: Served, store: CallStore, tmp_path: Path
) -> None:
    call = await seed_call(store, tmp_path / "data")
    mp3: list[tuple[int, str | None]] = []
    page.on("response", lambda r: mp3.append((r.status, r.request.headers.get("range")))
            if r.url.endswith("/recording.mp3") else None)
    await page.goto(f"{served.url}/calls/{call['uuid']}")
    await page.wait_for_selector("body[data-ready='1']")
    assert "Extractive" in await page.inner_text("#method")
    assert "tracking" in await page.inner_text("#ivr-path")
    assert await page.locator("#downloads a").count() == 3
    await page.wait_for_function(
        "() => document.getElementById('audio').readyState >= 1")
    duration = await page.evaluate("document.getElementById('audio').duration")
    assert abs(duration - call["duration"]) < 0.3

    await page.click("#play")
    await page.wait_for_function(
        "() => document.getElementById('audio').currentTime > 0.2",
                                 timeout=10_000)
    await page.click("#fwd")
    t = await page.evaluate("document.getElementById('audio').currentTime")
    assert t >= 10 or t >= duration - 0.5 or t > 8  # +10 s (clamped near the end)

    # Click the second transcript segment: the player jumps to its start.
    seg = call["segments"][1]
    await page.click("#transcript li:nth-child(2)")
    t = await page.evaluate("document.getElementById('audio').currentTime")
    assert abs(t - seg["start"]) < 0.25, (t, seg)
    await page.wait_for_selector("#transcript li:nth-child(2).current")

    # Click the waveform at 10 %: seek to ~10 % of the duration.
    await page.click("#play")  # pause, so the position does not run on while we look
    box = await page.locator("#wave").bounding_box()
    assert box is not None
    await page.locator("#wave").click(position={"x": box["width"] * 0.1, "y": box["height"] / 2})
    t = await page.evaluate("document.getElementById('audio').currentTime")
    assert abs(t - duration * 0.1) < 0.5

    await page.select_option("#speed", "1.5")
    assert await page.evaluate("document.getElementById('audio').playbackRate") == 1.5
    assert "/" in await page.inner_text("#time")
    await asyncio.sleep(0.3)
    assert any(status == 206 for status, _ in mp3), mp3


def _wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    write_wav(path, pcm, rate)
    return path


async def _verdict(page: Page, path: Path) -> str:
    await page.set_input_files("#file", str(path))
    await page.wait_for_function(
        "() => ['accepted', 'rejected'].includes(document.body.dataset.verdict)", timeout=30_000)
    return str(await page.evaluate("document.body.dataset.verdict"))


async def test_validator_rejects_silence_and_noise_accepts_speech(
    page: Page, served: Served, store: CallStore, tmp_path: Path
) -> None:
    uploads = track_uploads(page)
    await page.goto(served.url + "/upload")
    await page.wait_for_selector("body[data-ready='1']")
    vad = await page.evaluate("document.body.dataset.vad")
    assert vad == ("silero" if HAVE_VAD else "off")

    silent = _wav(tmp_path / "silent.wav", np.zeros(16000 * 3))
    assert await _verdict(page, silent) == "rejected"
    assert await page.locator("#checks li.fail[data-check='level']").count() == 1
    assert await page.is_disabled("#send")

    rng = np.random.default_rng(7)
    noise = _wav(tmp_path / "noise.wav", rng.normal(0, 0.2, 16000 * 3))
    assert await _verdict(page, noise) == "rejected"
    assert await page.locator("#checks li.fail[data-check='speech']").count() == 1
    if HAVE_VAD:
        assert "Silero" in await page.inner_text("#checks li[data-check='speech']")

    # Nothing was sent for the rejected files, not even by pressing the button.
    await page.locator("#send").click(force=True)
    await asyncio.sleep(0.2)
    assert uploads == []

    speech = tmp_path / "speech.wav"
    write_wav(speech, synth_speech("Hello, I am calling about my broken washing machine.",
                                   16000), 16000)
    assert await _verdict(page, speech) == "accepted"
    assert await page.locator("#checks li.fail").count() == 0
    async with page.expect_response(lambda r: r.url.endswith("/api/uploads")) as info:
        await page.click("#send")
    assert (await info.value).status == 201
    await page.wait_for_selector("body[data-verdict='uploaded']")
    href = await page.get_attribute("#new-call", "href")
    assert href is not None and href.startswith("/calls/")
    # It landed: a call of app 'upload' with its WAV and queued post-call jobs.
    row = await aapi_call(store, href.removeprefix("/calls/"))
    assert row is not None and row["app"] == "upload" and "wav" in row["recordings"]
    assert set(row["jobs"]) >= {"archive_mp3", "transcript"}
    assert len(uploads) == 1


async def test_validator_without_vad_assets_uses_energy_heuristic(
    page: Page, served: Served, tmp_path: Path
) -> None:
    """What a machine without npm gets: the vendor files 404, the VAD check says it is off."""
    await page.route("**/static/vendor/**", lambda route: route.fulfill(status=404, body=""))
    await page.goto(served.url + "/upload")
    await page.wait_for_selector("body[data-ready='1']")
    assert await page.evaluate("document.body.dataset.vad") == "off"
    assert "check off" in await page.inner_text("#vad-state")
    rng = np.random.default_rng(3)
    noise = _wav(tmp_path / "noise.wav", rng.normal(0, 0.2, 16000 * 3))
    assert await _verdict(page, noise) == "rejected"
    assert await page.locator("#checks li.off[data-check='vad']").count() == 1
    speech = tmp_path / "speech.wav"
    write_wav(speech, synth_speech("Please call me back tomorrow morning.", 8000), 8000)
    assert await _verdict(page, speech) == "accepted"
