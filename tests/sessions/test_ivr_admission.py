"""Issue 16.6: eight IVR callers answer by voice at the same moment, real server, real
Piper prompts, real Whisper; every answer is heard and every caller takes the right branch.

Before deadline admission the STT queue held one utterance (⌊4 / (15 × 0.15)⌋) and five of
eight such answers were dropped: those callers heard "Sorry" and timed out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import REGISTRY

from sessions.ivr import IvrSession
from tests.helpers.speech_fixtures import silence, synth_speech
from tests.sessions.test_ivr import ivr_call, short_flow  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

CALLERS = 8
REASONS = ("deadline", "queue_bytes", "queue_full", "stopped")


def _dropped() -> float:
    """Utterances dropped so far, whatever the reason (either label scheme)."""
    total = REGISTRY.get_sample_value("audiosocket_stt_utterances_dropped_total") or 0.0
    for reason in REASONS:
        total += REGISTRY.get_sample_value(
            "audiosocket_stt_utterances_dropped_total", {"reason": reason}
        ) or 0.0
    return total


async def test_eight_callers_answer_at_once_and_none_is_dropped(start_server: Any) -> None:
    server = await start_server(IvrSession)
    answers = [("Sales, please.", "sales"), ("Support, please.", "support")]
    before = _dropped()
    # All callers wait out the same menu prompt and speak in the same 20 ms tick.
    calls = [
        ivr_call(server, pcm=silence(10.5) + synth_speech(said) + silence(0.5),
                 send_silence=True)
        for said, _ in (answers[i % 2] for i in range(CALLERS))
    ]
    done = await asyncio.gather(*calls)
    results = [call["ivr"]["result"] for _, call in done]
    wanted = [answers[i % 2][1] for i in range(CALLERS)]
    assert results == wanted, [call["ivr"] for _, call in done]
    for (_, call), word in zip(done, wanted, strict=True):
        # Heard the first time: nobody was asked again ("Sorry, I did not get that").
        assert word in call["ivr"]["variables"]["speech"][0].lower(), call["ivr"]
    assert _dropped() == before


async def test_an_answer_that_cannot_make_its_deadline_is_asked_again_at_once(
    start_server: Any, short_flow: dict[str, str]  # noqa: F811
) -> None:
    # A deadline no utterance can make: the answer is refused at admission, counted, and
    # the menu asks again right away (one attempt used) instead of waiting for its timeout.
    server = await start_server(IvrSession, **short_flow, **{"stt.answer_deadline_s": 0.001})
    inputs = {"kind": "speech", "outcome": "dropped"}
    before = REGISTRY.get_sample_value("audiosocket_ivr_inputs_total", inputs) or 0.0
    deadline_before = REGISTRY.get_sample_value(
        "audiosocket_stt_utterances_dropped_total", {"reason": "deadline"}) or 0.0
    audio = silence(2.0) + synth_speech("Yes.") + silence(1.0)
    _, call = await ivr_call(server, pcm=audio, send_silence=True)
    assert REGISTRY.get_sample_value("audiosocket_ivr_inputs_total", inputs) == before + 1
    assert REGISTRY.get_sample_value(
        "audiosocket_stt_utterances_dropped_total", {"reason": "deadline"}) == deadline_before + 1
    assert call["ivr"]["variables"]["speech"] == []
    assert call["ivr"]["result"] == "timed_out"  # the second attempt heard nothing
