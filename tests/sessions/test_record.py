"""The record app over a real socket: one time-aligned stereo WAV per call."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np

from audiosocket.caller import place_call
from helpers.recorder import shared_writer
from sessions.record import RecordSession, recording_path


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
        import asyncio

        await asyncio.sleep(0.02)
    shared_writer().flush()
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
