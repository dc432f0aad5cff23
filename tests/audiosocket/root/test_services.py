"""The shared engines load once, however many first users ask for them at the same time."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from audiosocket.config import load_config
from audiosocket.root.app import AppContext
from audiosocket.root.services import close_services, ensure_stt, ensure_tts


def _threads(prefix: str) -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(prefix)}


async def test_concurrent_first_uses_load_each_engine_once(tmp_path: Path) -> None:
    # The first post-call transcripts of a busy start each asked for Whisper at once: every
    # one loaded its own model and started its own workers, and all but one leaked.
    cfg = load_config(overrides={"data_dir": str(tmp_path), "stt.workers": 2}, environ={})
    ctx = AppContext(cfg)
    stt_before, tts_before = _threads("stt-"), _threads("tts-")
    try:
        stts = await asyncio.gather(*[ensure_stt(ctx) for _ in range(6)])
        ttss = await asyncio.gather(*[ensure_tts(ctx) for _ in range(6)])
        assert len({id(e) for e in stts}) == 1
        assert len({id(e) for e in ttss}) == 1
        assert stts[0] is ctx.services.stt and ttss[0] is ctx.services.tts
        assert len(_threads("stt-") - stt_before) == 2  # one engine's workers
        tts_threads = _threads("tts-") - tts_before
        assert len(tts_threads) == ttss[0].scheduler.workers
        # Later uses get the loaded engine at once.
        assert await ensure_stt(ctx) is stts[0]
    finally:
        await close_services(ctx)
