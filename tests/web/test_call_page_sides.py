"""The call page shows both sides of the conversation and plays voicemail (issue 16, points
3 and 4), in real headless Chromium at a desktop and a phone width, against the real portal
(Range-serving included). Screenshots are kept in ``tests/artifacts/`` (gitignored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from tests.web.test_browser_edges import WIDTHS, page, shot  # noqa: F401 - fixture

try:
    from playwright.async_api import Page
except ImportError:  # pragma: no cover - depends on the dev extras
    pass

MESSAGE = "Hi, it is Anna again. The parcel still has not arrived, please call me back."


async def seed_two_sided_call(store: CallStore, data_dir: Path) -> dict[str, Any]:  # noqa: F811
    """A finished IVR call: the caller's final transcript, server lines between its lines
    (one cut short) and a voicemail message with its transcript."""
    call = await seed_call(store, data_dir)
    cid, segs = call["uuid"], call["segments"]
    server = [
        (0.0, 0.3, "Welcome to the parcel line.", False),
        (segs[0]["end"] + 0.05, segs[1]["start"] - 0.05, "Which city was it sent to?", True),
        (segs[2]["end"] + 0.05, segs[2]["end"] + 0.5, "Please leave a message.", False),
    ]
    for start, end, text, cut in server:
        store.add_segment(cid, start, end, text, None, None, speaker="server",
                          interrupted=cut)
    rel = f"messages/{cid}-message.wav"
    (data_dir / "messages").mkdir(exist_ok=True)
    write_wav(data_dir / rel, synth_speech(MESSAGE, 8000), 8000)
    store.save_message(cid, "message", rel, 4.5, start=segs[2]["end"] + 0.6,
                       stopped_by="terminator", transcript=MESSAGE)
    store.flush()
    return {**call, "server": server, "message_url": f"/api/calls/{cid}/messages/message.wav"}


async def test_call_page_shows_both_sides_and_plays_voicemail(
    page: Page, served: Served, store: CallStore, tmp_path: Path  # noqa: F811
) -> None:
    call = await seed_two_sided_call(store, tmp_path / "data")
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status)
            if r.url.endswith(call["message_url"]) else None)
    await page.goto(f"{served.url}/calls/{call['uuid']}")
    await page.wait_for_selector("body[data-ready='1']")

    # Both sides, interleaved by time, labelled, and visibly distinct.
    rows = await page.eval_on_selector_all("#transcript li", """items => items.map(li => ({
        speaker: li.dataset.speaker, who: li.querySelector('.who').textContent,
        text: li.querySelector('.text').textContent, start: Number(li.dataset.start),
        bg: getComputedStyle(li).backgroundColor,
        colour: getComputedStyle(li.querySelector('.who')).color}))""")
    assert [r["speaker"] for r in rows] == [
        "server", "caller", "server", "caller", "caller", "server"]
    assert {r["who"] for r in rows if r["speaker"] == "server"} == {"System"}
    assert {r["who"] for r in rows if r["speaker"] == "caller"} == {"Caller"}
    assert [r["start"] for r in rows] == sorted(r["start"] for r in rows)
    assert "cut short" in rows[2]["text"] and "cut short" not in rows[0]["text"]
    assert rows[0]["bg"] != rows[1]["bg"] and rows[0]["colour"] != rows[1]["colour"]

    # Any line seeks, a server line as well as a caller's.
    await page.wait_for_function("() => document.getElementById('audio').readyState >= 1")
    target = call["server"][1][0]
    await page.evaluate("document.querySelectorAll('#transcript li')[2].click()")
    await page.wait_for_function(
        f"() => Math.abs(document.getElementById('audio').currentTime - {target}) < 0.6")

    # The voicemail player loads the message through a 206 and knows its length; its
    # transcript is beside it on a desktop and below it on a phone.
    player = page.locator("#voicemail audio.message-audio")
    await player.wait_for()
    await page.wait_for_function("""() => {
        const a = document.querySelector('#voicemail audio');
        return a.readyState >= 1 && a.duration > 0; }""", timeout=15_000)
    duration = await player.evaluate("a => a.duration")
    assert abs(duration - len(synth_speech(MESSAGE, 8000)) / 2 / 8000) < 0.2
    assert 206 in statuses, statuses
    assert MESSAGE in await page.inner_text("#voicemail .message-text")
    boxes = await page.evaluate("""() => ({
        player: document.querySelector('.message-player').getBoundingClientRect().toJSON(),
        text: document.querySelector('.message-transcript').getBoundingClientRect().toJSON(),
        viewport: window.innerWidth, page: document.documentElement.scrollWidth})""")
    if page.width_name == "desktop":  # type: ignore[attr-defined]
        assert boxes["text"]["left"] >= boxes["player"]["right"] - 1, boxes
        assert abs(boxes["text"]["top"] - boxes["player"]["top"]) < 2, boxes
    else:
        assert boxes["text"]["top"] >= boxes["player"]["bottom"] - 1, boxes
    assert boxes["page"] <= boxes["viewport"] == WIDTHS[page.width_name][0]  # type: ignore[attr-defined]
    errors = page.errors  # type: ignore[attr-defined]
    assert not [e for e in errors if "Content Security Policy" in e or "Uncaught" in e], errors
    await shot(page, tmp_path, "call-sides")
