"""A real portal stack for tests and screenshots: store, archives, peaks, an HTTP server.

``seed_call`` writes one finished call the way the post-call jobs would leave it (Piper
speech WAV, verified MP3 and M4A archives from FFmpeg, peaks, final transcript, summary,
IVR path) without loading Whisper or Flan-T5, so a test gets a complete call in about a
second. ``serve`` runs ``web.app.make_app`` on a free loopback port.
"""

from __future__ import annotations

import time
import uuid as uuid_mod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from audiosocket.config import Config
from audiosocket.root.app import Services
from helpers.audio import write_wav
from helpers.postcall.archive import archive_aac, archive_mp3
from helpers.postcall.peaks import write_peaks
from helpers.store.db import CallStore
from tests.helpers.speech_fixtures import silence, synth_speech
from web.app import make_app
from web.fastpath import fast_site

SENTENCES: tuple[str, ...] = (
    "Hello, I would like to check the status of my parcel.",
    "It was sent to Manchester last Tuesday.",
    "The tracking number starts with seven four two.",
)
RATE = 16000
GAP_S = 0.6


async def seed_call(
    store: CallStore, data_dir: Path, sentences: Sequence[str] = SENTENCES, *,
    call_uuid: str | None = None, started_at: float | None = None,
    summary: tuple[str, str, str] | None = ("Parcel status", "Asks where a parcel sent to "
                                            "Manchester is.", "extractive"),
) -> dict[str, Any]:
    """One finished call with speech, archives, peaks and a transcript; returns its facts."""
    cid = call_uuid or str(uuid_mod.uuid4())
    pcm = bytearray(silence(0.3, RATE))
    segments = []
    for text in sentences:
        start = len(pcm) / 2 / RATE
        speech = synth_speech(text, RATE)
        pcm += speech
        segments.append({"start": round(start, 3), "end": round(len(pcm) / 2 / RATE, 3),
                         "text": text, "confidence": 0.9, "latency_ms": 180.0})
        pcm += silence(GAP_S, RATE)
    duration = len(pcm) / 2 / RATE
    for folder in ("recordings", "archive", "peaks"):
        (data_dir / folder).mkdir(parents=True, exist_ok=True)
    wav = data_dir / "recordings" / f"{cid}.wav"
    write_wav(wav, bytes(pcm), RATE)
    mp3 = await archive_mp3(wav, data_dir / "archive" / f"{cid}.mp3")
    m4a = await archive_aac(wav, data_dir / "archive" / f"{cid}.m4a")
    peaks = write_peaks(wav, data_dir / "peaks" / f"{cid}.json")
    t0 = started_at if started_at is not None else time.time() - 3600
    store.call_started(cid, "ivr", RATE, "127.0.0.1:5000", t0, caller="+441610000000")
    store.call_ended(cid, t0 + duration, "remote_closed", int(duration * 50), 0)
    store.replace_final_transcript(cid, segments)
    if summary is not None:
        store.set_summary(cid, *summary)
    store.set_ivr(cid, ["welcome", "main_menu", "tracking"], {"choice": "2"}, "tracking")
    store.set_recording(cid, "wav", wav, wav.stat().st_size, duration)
    store.set_recording(cid, "mp3", mp3.path, mp3.bytes, mp3.duration)
    store.set_recording(cid, "m4a", m4a.path, m4a.bytes, m4a.duration)
    store.set_recording(cid, "peaks", peaks, peaks.stat().st_size, None)
    store.flush()
    return {"uuid": cid, "duration": duration, "segments": segments, "wav": wav}


class Served:
    """A running portal: ``url``, the ``runner`` and the ``app``."""

    def __init__(self, runner: web.AppRunner, app: web.Application, url: str) -> None:
        self.runner = runner
        self.app = app
        self.url = url

    async def close(self) -> None:
        """Stop serving."""
        await self.runner.cleanup()


async def serve(
    store: CallStore, data_dir: Path, *, jobs: Any = None, host: str = "127.0.0.1",
    token: str = "", max_upload_mb: int = 50, port: int = 0,
) -> Served:
    """Run the full app (portal, API, uploads) on ``host`` at a free port."""
    cfg = Config(data_dir=str(data_dir), host=host, http_port=1)
    cfg.web.token = token
    cfg.web.max_upload_mb = max_upload_mb
    app = make_app(cfg, Services(store=store, jobs=jobs))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # The production site: recordings' simple range requests take web/fastpath.py, so the
    # browser tests play and seek through it.
    site = fast_site(app, runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    return Served(runner, app, f"http://{bound[0]}:{bound[1]}")


def track_uploads(page: Any) -> list[Any]:
    """The POSTs a page makes to /api/uploads (to prove a rejected file never left it)."""
    uploads: list[Any] = []
    page.on("request", lambda r: uploads.append(r)
            if r.url.endswith("/api/uploads") and r.method == "POST" else None)
    return uploads
