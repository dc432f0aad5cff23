"""helpers.speech.loop: the VAD -> STT loop a live call and a recording share."""

from __future__ import annotations

import pytest

from helpers.speech.lines import Word
from helpers.speech.loop import SpeechLoop
from helpers.speech.stt_result import SttResult
from helpers.speech.vad import Utterance, VadSegmenter
from tests.helpers.speech_fixtures import silence, synth_speech


def test_audio_of_one_tick_reaches_the_vad_together(monkeypatch: pytest.MonkeyPatch) -> None:
    vad = VadSegmenter(8000)
    pushed: list[tuple[int, int]] = []
    monkeypatch.setattr(vad, "push", lambda pcm, tick: pushed.append((len(pcm), tick)) or [])
    loop = SpeechLoop(vad)
    loop.feed(b"\0" * 320, 1)
    loop.feed(b"\0" * 320, 1)  # a burst after a stall: one push, placed at its tick
    assert pushed == []
    loop.feed(b"\0" * 320, 2)
    assert pushed == [(640, 1)]
    loop.end_tick()
    loop.end_tick()  # nothing held: nothing pushed
    assert pushed == [(640, 1), (320, 2)]


class _Stt:
    def __init__(self, words: tuple[Word, ...]) -> None:
        self.words = words

    def transcribe(self, pcm: bytes, rate: int, *, voiced: float | None = None,
                   live: bool = False) -> SttResult:
        return SttResult("Hello there. Bye.", 0.9, duration_s=1.0, dbfs=-20.0, voiced_ms=800.0,
                         processing_ms=5.0, words=self.words)


def test_recognise_makes_lines_on_the_stream_timeline() -> None:
    utt = Utterance(pcm=bytes(16000), rate=8000, start=10.0, end=11.0, voiced_ms=800.0,
                    pcm_start=10.0)
    words = (Word(" Hello", 0.0, 0.3, 0.9), Word(" there.", 0.3, 0.5, 0.9),
             Word(" Bye.", 0.6, 0.9, 0.9))
    lines = SpeechLoop.recognise(_Stt(words), utt)
    assert [(ln.text, ln.start) for ln in lines] == [("Hello there.", 10.0), ("Bye.", 10.6)]
    whole = SpeechLoop.recognise(_Stt(()), utt)
    assert [(ln.text, ln.start, ln.end) for ln in whole] == [("Hello there. Bye.", 10.0, 11.0)]


@pytest.mark.slow
def test_a_recording_fed_whole_gives_the_live_utterances() -> None:
    pcm = silence(0.5) + synth_speech("Good morning, I need help with my bill.") + silence(1.0)
    whole = list(SpeechLoop(VadSegmenter(8000)).feed_all(pcm))
    live = SpeechLoop(VadSegmenter(8000))
    by_tick: list[Utterance] = []
    for tick, i in enumerate(range(0, len(pcm) - 319, 320)):
        by_tick += live.feed(pcm[i : i + 320], tick)
        by_tick += live.end_tick()
    by_tick += live.flush(len(pcm) // 320)
    assert len(whole) == 1
    assert [(u.start, u.end, u.pcm) for u in whole] == [(u.start, u.end, u.pcm) for u in by_tick]
