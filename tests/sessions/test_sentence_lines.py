"""Fluent speech becomes sentence-sized lines (issue 16.2), live and after the call.

A software caller speaks eight sentences in one breath (23 s, 150 ms between sentences, far
under the VAD's 600 ms end of speech) to the real ``transcribe`` app; the bundled Whisper's
word timestamps cut each utterance into lines. We know where each sentence starts in what
was sent, so each line's start is checked against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audiosocket.caller import place_call
from helpers.postcall.jobs import PostCallJobs
from sessions.transcribe import TranscribeSession
from tests.helpers.speech_fixtures import silence, synth_speech, wer
from tests.helpers.store.api_view import aapi_call, await_transcript

pytestmark = pytest.mark.slow

SENTENCES = [
    "Hello, I am calling about the order I placed last week.",
    "It has not arrived yet and the tracking page shows nothing at all.",
    "Could you please check what happened to it?",
    "My order number is four five six seven.",
    "I would also like to change my delivery address to my office.",
    "The new address is twelve Station Road in Cambridge.",
    "Please call me back this afternoon if you can.",
    "Thank you very much for your help.",
]
LEAD_S = 0.5
GAP_S = 0.15


def _fluent_speech() -> tuple[bytes, list[float]]:
    """The sentences back to back, and where each one's first sound is (s from the start)."""
    parts, onsets, pos = [silence(LEAD_S)], [], LEAD_S
    for text in SENTENCES:
        pcm = synth_speech(text)
        x = np.frombuffer(pcm, "<i2").astype(np.float64)
        frames = x[: len(x) // 160 * 160].reshape(-1, 160)
        level = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) / 32768 + 1e-9)
        onsets.append(pos + int(np.argmax(level > -40)) * 0.02)  # Piper's lead-in is silent
        parts += [pcm, silence(GAP_S)]
        pos += len(pcm) / 16000 + GAP_S
    return b"".join(parts), onsets


def _check_lines(lines: list[dict[str, Any]], truth: list[float], what: str) -> None:
    """Every sentence has a line starting within 0.5 s of it; every line fits 12 s."""
    assert len(lines) >= len(SENTENCES) - 1, (what, lines)
    assert all(ln["end"] - ln["start"] <= 12.5 for ln in lines), (what, lines)
    starts = [ln["start"] for ln in lines]
    assert starts == sorted(starts), (what, lines)
    for i, t in enumerate(truth):
        nearest = min(starts, key=lambda s: abs(s - t))
        assert abs(nearest - t) <= 0.5, (what, i, t, lines)
    text = " ".join(ln["text"] for ln in lines)
    assert wer(" ".join(SENTENCES), text) <= 0.25, (what, text)
    assert all(0 < ln["confidence"] <= 1 for ln in lines), (what, lines)


async def test_fluent_speech_gives_sentence_lines_live_and_after_the_call(
    start_server: Any, tmp_path: Path
) -> None:
    server = await start_server(TranscribeSession)
    store, stt = server.ctx.services.store, server.ctx.services.stt
    audio, onsets = _fluent_speech()
    assert len(audio) / 16000 > 20  # one fluent 20+ s stretch
    result = await place_call("127.0.0.1", server.port, pcm=audio, linger=0.3)
    # Where each sentence really started on the call: when its first frame was sent (a busy
    # machine sends late, and the server's timeline follows what arrived).
    truth = [result.sent_at[round(t / 0.02)] for t in onsets]

    call = await await_transcript(store, result.uuid, len(SENTENCES) - 1, timeout=30, every=0.3)
    assert call is not None and call["ended_at"]
    print("live", [(ln["start"], ln["end"], ln["text"]) for ln in call["transcript"]])
    # The VAD cuts the 23 s at its 15 s maximum (mid-sentence, so one line may start
    # there too); every line is still sentence-sized and every sentence has its line.
    _check_lines(call["transcript"], truth, "live")

    # After the call: the post-call transcript step on the recording, as the job runs it.
    (wav,) = (server.ctx.data_dir / "recordings").glob("*.wav")

    async def engine() -> Any:
        return stt

    # The files root the recording rows are relative to (the server's shared directory).
    jobs = PostCallJobs(store, server.ctx.shared_dir, stt=engine)
    await jobs.asubmit(result.uuid, wav)
    await store.aflush()  # the recording row is a queued write; the step reads it
    await jobs._step_transcript(result.uuid)
    await store.aflush()
    final = await aapi_call(store, result.uuid)
    assert final is not None
    print("final", [(ln["start"], ln["end"], ln["text"]) for ln in final["transcript"]])
    print("truth", [round(t, 2) for t in truth])
    _check_lines(final["transcript"], truth, "post-call")
