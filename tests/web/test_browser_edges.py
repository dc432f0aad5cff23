"""Rough edges a new user hit in the portal (issue 16, point 8), in real headless Chromium at
a desktop and a phone width. Screenshots are kept in ``tests/artifacts/`` (gitignored)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import web.upload
from helpers.audio import write_wav
from helpers.store.db import CallStore
from tests.helpers.speech_fixtures import synth_speech
from tests.web.portal_fixtures import Served, seed_call
from tests.web.test_browser import (  # noqa: F401 - fixtures and the skip marks
    browser,
    pytestmark,
    served,
    store,
)

try:
    from playwright.async_api import Browser, Page
except ImportError:  # pragma: no cover - depends on the dev extras
    pass

WIDTHS = {"desktop": (1280, 800), "phone": (390, 844)}
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
#: Enough lines to overflow the transcript box at both widths.
LONG = tuple(f"This is line number {n} of a long call." for n in range(1, 17))


@pytest.fixture(params=sorted(WIDTHS))
async def page(request: Any, browser: Browser) -> AsyncIterator[Page]:  # noqa: F811
    """A page at a desktop or a phone viewport; console errors land in ``page.errors``."""
    width, height = WIDTHS[request.param]
    ctx = await browser.new_context(viewport={"width": width, "height": height})
    p = await ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda m: errors.append(f"{m.text} {m.location.get('url', '')}")
         if m.type == "error" else None)
    p.errors = errors  # type: ignore[attr-defined]
    p.width_name = request.param  # type: ignore[attr-defined]
    yield p
    await ctx.close()


async def shot(page: Page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot, taken after the checks (it resizes the viewport meanwhile)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}-{page.width_name}.png"  # type: ignore[attr-defined]
    await page.screenshot(path=str(path), full_page=True)


async def test_call_list_fits_the_viewport(
    page: Page, served: Served, store: CallStore, tmp_path: Path  # noqa: F811
) -> None:
    call = await seed_call(store, tmp_path / "data")
    await page.goto(served.url + "/")
    await page.locator(f'tr[data-uuid="{call["uuid"]}"]').wait_for()
    widths = await page.evaluate("""() => ({
        viewport: window.innerWidth,
        page: document.documentElement.scrollWidth,
        list: document.getElementById('calls').scrollWidth,
        right: document.getElementById('calls').getBoundingClientRect().right})""")
    assert widths["list"] <= widths["viewport"], widths
    assert widths["right"] <= widths["viewport"], widths
    assert widths["page"] <= widths["viewport"], widths
    await shot(page, tmp_path, "list")


async def test_playback_never_scrolls_the_page(
    page: Page, served: Served, store: CallStore, tmp_path: Path  # noqa: F811
) -> None:
    call = await seed_call(store, tmp_path / "data")
    await page.goto(f"{served.url}/calls/{call['uuid']}")
    await page.wait_for_selector("body[data-ready='1']")
    await page.wait_for_function("() => document.getElementById('audio').readyState >= 1")
    assert await page.evaluate("window.scrollY") == 0
    # Not page.click: Playwright would scroll the button into view itself.
    await page.evaluate("document.getElementById('play').click()")
    await page.wait_for_selector("#transcript li.current", timeout=15_000)
    await page.wait_for_function(
        "() => document.getElementById('audio').currentTime > 0.8", timeout=15_000)
    assert await page.evaluate("window.scrollY") == 0
    top = await page.evaluate("document.getElementById('play').getBoundingClientRect().top")
    assert 0 <= top < WIDTHS[page.width_name][1]  # type: ignore[attr-defined]
    await shot(page, tmp_path, "playing")


async def test_playback_scrolls_the_transcript_box_to_the_line(
    page: Page, served: Served, store: CallStore, tmp_path: Path  # noqa: F811
) -> None:
    call = await seed_call(store, tmp_path / "data", LONG)
    await page.goto(f"{served.url}/calls/{call['uuid']}")
    await page.wait_for_selector("body[data-ready='1']")
    await page.wait_for_function("() => document.getElementById('audio').readyState >= 1")
    box = "document.getElementById('transcript')"
    assert await page.evaluate(f"{box}.scrollHeight > {box}.clientHeight")
    last = call["segments"][-1]
    await page.evaluate(f"""() => {{
        const a = document.getElementById('audio');
        a.currentTime = {last['start'] + 0.05};
        document.getElementById('play').click(); }}""")
    await page.wait_for_selector("#transcript li:last-child.current", timeout=15_000)
    assert await page.evaluate("window.scrollY") == 0
    inside = await page.evaluate(f"""() => {{
        const b = {box}.getBoundingClientRect();
        const n = document.querySelector('#transcript li:last-child').getBoundingClientRect();
        return n.top >= b.top - 1 && n.bottom <= b.bottom + 1; }}""")
    assert inside
    await shot(page, tmp_path, "transcript-end")


async def test_a_file_picked_during_page_start_is_validated(
    page: Page, served: Served, tmp_path: Path  # noqa: F811
) -> None:
    speech = tmp_path / "speech.wav"
    write_wav(speech, synth_speech("Please call me back tomorrow morning.", 8000), 8000)

    async def slow(route: Any) -> None:
        # The page's first request to the server, held as a slow network would: the user
        # picks the file meanwhile.
        await asyncio.sleep(1.5)
        await route.continue_()

    await page.route("**/api/uploads", slow)
    async with page.expect_request(lambda r: r.url.endswith("/api/uploads")):
        await page.goto(served.url + "/upload", wait_until="commit")
    await page.set_input_files("#file", str(speech))
    await page.wait_for_function(
        "() => ['accepted', 'rejected'].includes(document.body.dataset.verdict)",
        timeout=30_000)
    assert await page.evaluate("document.body.dataset.verdict") == "accepted"
    await shot(page, tmp_path, "upload-early-file")


async def test_upload_page_without_browser_whisper_says_so_without_a_404(
    page: Page, served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setattr(web.upload, "WEB_WHISPER_CONFIG", tmp_path / "absent" / "config.json",
                        raising=False)
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    await page.goto(served.url + "/upload")
    await page.wait_for_selector("body[data-ready='1']")
    await asyncio.sleep(0.5)  # a late probe would show up now
    assert [u for u in missing if "/models/" in u] == []
    errors = page.errors  # type: ignore[attr-defined]
    assert [e for e in errors if "404" in e] == [], (errors, missing)
    assert await page.evaluate("document.body.dataset.asr") == "off"
    assert "check off" in await page.inner_text("#asr-state")
    await shot(page, tmp_path, "upload-no-whisper")
