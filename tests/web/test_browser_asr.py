"""The upload page's browser Whisper (transformers.js) in real headless Chromium.

Needs the vendored transformers.js (scripts/web-assets.sh) and the model that
``audiosocket models build-web`` writes to web/static/models/whisper-tiny.en; skipped with
the reason otherwise. One page load serves both checks, so the ~150 MB model is read once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.audio import write_wav
from tests.helpers.speech_fixtures import synth_speech
from tests.web import test_browser as _tb
from tests.web.portal_fixtures import track_uploads

# The browser, page (which fails on any CSP violation or script error), served portal and
# store fixtures of test_browser.py, shared by name.
browser, page, served, store = _tb.browser, _tb.page, _tb.served, _tb.store
VENDOR = _tb.VENDOR

STATIC = VENDOR.parent
MODEL = STATIC / "models" / "whisper-tiny.en"
HAVE_ASR = (VENDOR / "transformers" / "transformers.min.js").exists() and all(
    (MODEL / f).exists() for f in ("config.json", "tokenizer.json", "onnx/encoder_model.onnx",
                                   "onnx/decoder_model_merged.onnx"))

pytestmark = [
    *_tb.pytestmark,
    pytest.mark.skipif(not HAVE_ASR, reason="browser Whisper not installed: run "
                       "scripts/web-assets.sh and `audiosocket models build-web`"),
]

TEXT = "Hello, I am calling about my broken washing machine."


async def _verdict(page: Any, path: Path, timeout_ms: int = 120_000) -> str:
    await page.set_input_files("#file", str(path))
    await page.wait_for_function(
        "() => ['accepted', 'rejected'].includes(document.body.dataset.verdict)",
        timeout=timeout_ms)
    return str(await page.evaluate("document.body.dataset.verdict"))


async def test_upload_page_transcribes_and_checks_keywords(
    page: Any, served: Any, tmp_path: Path
) -> None:
    uploads = track_uploads(page)
    await page.goto(served.url + "/upload")
    await page.wait_for_selector("body[data-ready='1']")
    assert await page.evaluate("document.body.dataset.asr") == "whisper"
    assert "Whisper" in await page.inner_text("#asr-state")
    assert await page.is_visible("#keywords")

    speech = tmp_path / "speech.wav"
    write_wav(speech, synth_speech(TEXT, 16000), 16000)

    # Off-topic: the user expects an invoice call; nothing is sent.
    await page.fill("#keywords", "invoice, refund")
    started = time.monotonic()
    assert await _verdict(page, speech) == "rejected"
    first = time.monotonic() - started
    assert await page.locator("#checks li.fail[data-check='keywords']").count() == 1
    transcript = (await page.inner_text("#transcript")).lower()
    assert "washing machine" in transcript, transcript
    assert await page.is_disabled("#send")
    await page.locator("#send").click(force=True)
    await asyncio.sleep(0.2)
    assert uploads == []

    # On topic (a phrase and a word, case and punctuation ignored): accepted, uploadable.
    await page.fill("#keywords", "Washing Machine, refund")
    await page.locator("#keywords").dispatch_event("change")
    started = time.monotonic()
    await page.wait_for_function(
        "() => document.querySelector(\"#checks li[data-check='keywords']\")"
        " && document.body.dataset.verdict === 'accepted'", timeout=120_000)
    second = time.monotonic() - started
    detail = await page.inner_text("#checks li[data-check='keywords']")
    assert "washing machine" in detail
    transcript_line = await page.inner_text("#checks li[data-check='transcript']")
    assert "Whisper tiny.en" in transcript_line
    assert not await page.is_disabled("#send")
    print(f"\nbrowser Whisper: first file {first:.1f} s (load + transcribe), "
          f"second {second:.1f} s; {transcript_line}")
