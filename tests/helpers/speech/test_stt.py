"""STT engine: real tiny.en on Piper speech, guards, bounded queue, metrics."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from helpers import ai
from helpers.speech.stt import (
    RawResult,
    Segment,
    SttCallback,
    SttDone,
    SttDropped,
    SttEngine,
    SttOutcome,
    Word,
)
from helpers.speech.vad import Utterance, VadSegmenter
from tests.helpers.speech_fixtures import silence, synth_speech, wer

SENTENCES = [
    "Hello, I would like to check the balance of my account please.",
    "I need to speak with someone about my insurance claim.",
]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


#: Whisper loaded once for the whole file, as the server's model cache does per process.
MODELS = ai.ModelCache()


class FakeBackend:
    """Returns a fixed result, optionally slowly; counts calls."""

    def __init__(self, result: RawResult | None = None, delay: float = 0.0) -> None:
        self.result = result or RawResult("hello there", -0.2, 0.01, 3)
        self.delay = delay
        self.calls = 0
        self.release = threading.Event()
        self.release.set()

    def recognize(self, audio: np.ndarray) -> RawResult:
        self.calls += 1
        self.release.wait(10)
        if self.delay:
            time.sleep(self.delay)
        return self.result


def _speechlike(seconds: float = 1.0, rate: int = 8000, amp: float = 8000) -> bytes:
    """A harmonic tone with syllable-rate modulation: voiced for webrtcvad, no real words."""
    t = np.arange(int(seconds * rate)) / rate
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    x = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 700, 1100), 1))
    return (x * env * amp / 2).astype("<i2").tobytes()


def _utt(pcm: bytes, rate: int = 8000, start: float = 1.0) -> Utterance:
    return Utterance(pcm, rate, start, start + len(pcm) / 2 / rate, False, start, None)


# -- real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> SttEngine:
    return SttEngine(workers=1, models=MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("short_window", [True, False])
def test_transcribes_piper_at_8k(short_window: bool, engine: SttEngine) -> None:
    eng = engine if short_window else SttEngine(workers=1, short_window=False, models=MODELS)
    for text in SENTENCES:
        pcm = silence(0.3) + synth_speech(text, 8000) + silence(0.3)
        r = eng.transcribe(pcm, 8000)
        assert r.rejected is None, r
        assert wer(text, r.text) <= 0.20, (text, r.text)
        assert 0.3 < r.confidence <= 1.0
        assert r.path == ("short" if short_window else "padded")


@pytest.mark.slow
def test_real_model_silence_and_noise_rejected(engine: SttEngine) -> None:
    # Silence: the VAD gate stops it before Whisper.
    r = engine.transcribe(silence(2.0), 8000)
    assert r.text == "" and r.rejected == "vad" and r.avg_logprob is None
    # With the VAD gate off, Whisper itself sees silence and hiss: the other guards catch
    # what it invents (tiny.en says "I", "You" or "." here).
    ungated = SttEngine(workers=1, min_voiced_ms=0, models=MODELS)
    rng = np.random.default_rng(0)
    for amp in (0, 30, 300, 3000):
        noise = (rng.standard_normal(16000) * amp).astype("<i2").tobytes()
        r = ungated.transcribe(noise, 8000)
        assert r.text == "", (amp, r)
        assert r.rejected in {"empty", "no_speech", "low_logprob", "phantom"}


@pytest.mark.slow
def test_engine_end_to_end_with_vad(engine: SttEngine) -> None:
    a = synth_speech(SENTENCES[0], 8000)
    audio = silence(1.0) + a + silence(1.0)
    seg = VadSegmenter(8000)
    utts = [
        u for k, i in enumerate(range(0, len(audio), 320)) for u in seg.push(audio[i : i + 320], k)
    ]
    assert len(utts) == 1
    results: list[tuple[Segment | None, SttOutcome]] = []
    done = threading.Event()

    def cb(s: Segment | None, out: SttOutcome) -> None:
        results.append((s, out))
        done.set()

    engine.start()
    try:
        t_end = time.monotonic()
        assert engine.submit("call-1", utts[0], cb, speech_end_monotonic=t_end)
        assert done.wait(20)
    finally:
        engine.stop()
    s, out = results[0]
    assert s is not None and isinstance(out, SttDone) and out.result.text == s.text
    assert s.call_uuid == "call-1" and s.utterance_id == out.utterance_id >= 1
    assert wer(SENTENCES[0], s.text) <= 0.2
    assert s.start == utts[0].start and s.end == utts[0].end
    assert s.latency_ms == pytest.approx(out.latency_ms) and s.latency_ms > 0
    assert set(s.to_json()) == {"start", "end", "text", "confidence", "latency_ms"}
    assert engine.rtf > 0
    assert _metric("audiosocket_stt_latency_seconds_count") >= 1


# -- guards (fake model) ------------------------------------------------------------------


def _fake_engine(result: RawResult, **kw: Any) -> tuple[SttEngine, FakeBackend]:
    fake = FakeBackend(result)
    return SttEngine(backend=fake, **kw), fake


def test_vad_gate_rejects_before_whisper() -> None:
    eng, fake = _fake_engine(RawResult("thank you", -0.1, 0.0))
    before = _metric("audiosocket_stt_rejections_total", reason="vad")
    rng = np.random.default_rng(2)
    hiss = (rng.standard_normal(16000) * 20).astype("<i2").tobytes()
    r = eng.transcribe(hiss, 8000)
    assert (r.text, r.confidence, r.rejected) == ("", 0.0, "vad") and fake.calls == 0
    assert _metric("audiosocket_stt_rejections_total", reason="vad") == before + 1
    assert eng.stats.rejected["vad"] == 1
    # An utterance that says how much was voiced is trusted (no second VAD pass).
    assert eng.transcribe(_speechlike(), 8000, voiced=50.0).rejected == "vad"
    assert eng.transcribe(_speechlike(), 8000).text == "thank you" and fake.calls == 1


def test_no_speech_guard() -> None:
    eng, _ = _fake_engine(RawResult("I", -1.5, 0.9))
    assert eng.transcribe(_speechlike(), 8000).rejected == "no_speech"
    # High no_speech_prob alone is not enough when the decoder is confident.
    eng, _ = _fake_engine(RawResult("yes please", -0.3, 0.9))
    assert eng.transcribe(_speechlike(), 8000).text == "yes please"


def test_low_logprob_guard() -> None:
    eng, _ = _fake_engine(RawResult("the quick brown fox", -1.2, 0.1), logprob_threshold=-1.0)
    before = _metric("audiosocket_stt_rejections_total", reason="low_logprob")
    assert eng.transcribe(_speechlike(), 8000).rejected == "low_logprob"
    assert _metric("audiosocket_stt_rejections_total", reason="low_logprob") == before + 1
    eng, _ = _fake_engine(RawResult("the quick brown fox", -0.8, 0.1), logprob_threshold=-1.0)
    assert eng.transcribe(_speechlike(), 8000).text == "the quick brown fox"


@pytest.mark.parametrize("phrase", ["Thank you.", "Thanks for watching!", "you", "Bye."])
def test_phantom_guard_only_on_near_silence(phrase: str) -> None:
    eng, _ = _fake_engine(RawResult(phrase, -0.2, 0.1), phantom_rms_dbfs=-45.0)
    quiet = _speechlike(amp=350)  # about -50 dBFS
    # voiced= as the VAD segmenter reports it: isolates this guard from the VAD gate.
    r = eng.transcribe(quiet, 8000, voiced=1000.0)
    assert r.dbfs < -45 and r.rejected == "phantom" and r.text == ""
    # The same words at a normal level are a real answer.
    assert eng.transcribe(_speechlike(amp=8000), 8000).text == phrase


def test_repetition_and_empty_guards() -> None:
    eng, _ = _fake_engine(RawResult("one two " * 40, -0.2, 0.1))
    assert eng.transcribe(_speechlike(), 8000).rejected == "repetition"
    eng, _ = _fake_engine(RawResult(" . ", -0.2, 0.1))
    assert eng.transcribe(_speechlike(), 8000).rejected == "empty"


# -- queue -------------------------------------------------------------------------------


def test_capacity_and_rtf() -> None:
    eng = SttEngine(backend=FakeBackend(), rtf_estimate=0.15)
    assert eng.capacity == 0  # no count bound: deadlines admit (test_stt_admission)
    assert SttEngine(backend=FakeBackend(), queue_capacity=5).capacity == 5
    assert eng.rtf == pytest.approx(0.15) and eng.estimate(2.0) == pytest.approx(0.3)
    eng._note_rtf(0.3, 10.0)  # measured RTF 0.03
    assert eng.rtf == pytest.approx(0.03) and eng.estimate(2.0) == pytest.approx(0.06)


def test_full_queue_drops_oldest_and_never_blocks() -> None:
    fake = FakeBackend(delay=0.0)
    fake.release.clear()  # the worker holds its first job until released
    eng = SttEngine(backend=fake, workers=1, queue_capacity=2)
    results: dict[int, tuple[Segment | None, SttOutcome]] = {}
    lock = threading.Lock()

    def cb_for(i: int) -> SttCallback:
        def cb(s: Segment | None, out: SttOutcome) -> None:
            with lock:
                results[i] = (s, out)
        return cb

    fake.release.set()
    eng.start()  # warm-up call goes through
    fake.release.clear()
    before = _metric("audiosocket_stt_utterances_dropped_total", reason="queue_full")
    pcm = _speechlike(0.5)
    t0 = time.perf_counter()
    assert eng.submit("c", _utt(pcm), cb_for(0))
    deadline = time.monotonic() + 5
    while fake.calls < 2 and time.monotonic() < deadline:  # worker picked job 0 and waits
        time.sleep(0.005)
    worst = 0.0
    for i in range(1, 6):
        t = time.perf_counter()
        assert eng.submit("c", _utt(pcm), cb_for(i))
        worst = max(worst, time.perf_counter() - t)
    assert worst < 0.05, "submit must not block"
    assert time.perf_counter() - t0 < 1.0
    # Queue of 2 behind the busy worker: 1, 2, 3 were dropped (oldest first), 4 and 5 wait.
    assert eng.queue_depth == 2 and eng.stats.dropped == 3
    assert _metric("audiosocket_stt_utterances_dropped_total", reason="queue_full") == before + 3
    with lock:
        assert sorted(results) == [1, 2, 3]
        assert all(s is None and out == SttDropped(out.utterance_id, "queue_full")
                   for s, out in results.values())
    fake.release.set()
    deadline = time.monotonic() + 5
    while len(results) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    eng.stop()
    assert sorted(results) == [0, 1, 2, 3, 4, 5]
    for i in (0, 4, 5):
        s, out = results[i]
        assert s is not None and s.text == "hello there" and isinstance(out, SttDone)
    # Submitting to a stopped engine refuses at once and says so.
    got: list[SttOutcome] = []
    assert not eng.submit("c", _utt(pcm), lambda s, out: got.append(out))
    assert got == [SttDropped(-1, "not_running")]


def test_callback_errors_do_not_kill_workers() -> None:
    eng = SttEngine(backend=FakeBackend(), workers=1, queue_capacity=4)
    eng.start()
    ok = threading.Event()

    def bad(s: Segment | None, out: SttOutcome) -> None:
        raise RuntimeError("consumer bug")

    eng.submit("c", _utt(_speechlike()), bad)
    eng.submit("c", _utt(_speechlike()), lambda s, out: ok.set())
    assert ok.wait(5)
    eng.stop()


def test_ai_slots_are_what_the_engine_is_given() -> None:
    """The root hands one AiSlots to every engine; an engine given none has its own."""
    new = ai.AiSlots(3)
    eng = SttEngine(backend=FakeBackend(), workers=4, ai=new)
    assert eng.ai is new and eng._parallel() == 3
    for _ in range(3):
        assert new.acquire(blocking=False)
    assert not new.acquire(blocking=False)
    for _ in range(3):
        new.release()
    alone = SttEngine(backend=FakeBackend())
    assert alone.ai is not new and alone.ai.limit == ai.DEFAULT_AI_LIMIT
    with pytest.raises(ValueError):
        ai.AiSlots(0)


def test_model_cache_loads_each_key_once() -> None:
    cache = ai.ModelCache()
    loads: list[str] = []
    threads = [threading.Thread(target=lambda: cache.get("k", lambda: loads.append("k") or 1))
               for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(5)
    assert loads == ["k"] and cache.get("k", lambda: 2) == 1
    assert cache.first_time("x") and not cache.first_time("x")


def test_cut_loop_trims_decoder_loops() -> None:
    from helpers.speech.stt import cut_loop

    assert cut_loop("Yes, please. Yes, please. Yes,") == "Yes, please."
    assert cut_loop("I went to check my balance. I went to check my balance. I went") == (
        "I went to check my balance."
    )
    assert cut_loop("No no") == "No no"
    assert cut_loop("Hello there.") == "Hello there."
    assert cut_loop("") == ""


# -- words, lines and the word-level guards ------------------------------------------------


def _quieter(pcm: bytes, db: float) -> bytes:
    x = np.frombuffer(pcm, "<i2").astype(np.float64) * 10 ** (-db / 20)
    return np.round(x).astype("<i2").tobytes()


@pytest.mark.slow
def test_thank_you_said_clearly_survives_an_invented_one_does_not(engine: SttEngine) -> None:
    ask = synth_speech("I would like to change my delivery address.", 8000)
    thanks = synth_speech("Thank you.", 8000)
    # A caller's own "Thank you." at a normal level: alone and after a sentence.
    r = engine.transcribe(silence(0.3) + thanks + silence(0.3), 8000)
    assert r.rejected is None and wer("Thank you.", r.text) == 0, r
    r = engine.transcribe(ask + silence(0.5) + thanks, 8000)
    assert r.rejected is None and "thank you" in r.text.lower(), r
    assert [w.text.strip() for w in r.words][-2:] == ["Thank", "you."]
    # The same words 30 dB under the caller (a far-away TV, line crosstalk): Whisper writes
    # them, the tail guard takes them off because the audio there is not the caller's.
    before = _metric("audiosocket_stt_rejections_total", reason="phantom_edge")
    r = engine.transcribe(ask + silence(0.5) + _quieter(thanks, 30), 8000)
    assert r.raw_text is not None and "thank you" in r.raw_text.lower(), r  # Whisper did invent it
    assert "thank" not in r.text.lower() and wer(
        "I would like to change my delivery address.", r.text) <= 0.1, r.text
    assert _metric("audiosocket_stt_rejections_total", reason="phantom_edge") == before + 1
    # Alone and near-silent (-50 dBFS): the whole result goes.
    r = engine.transcribe(_quieter(thanks, 30), 8000, voiced=500.0)
    assert r.text == "" and r.rejected == "phantom" and "thank" in (r.raw_text or "").lower()


@pytest.mark.slow
def test_real_words_are_timed_on_the_audio(engine: SttEngine) -> None:
    first = synth_speech("Hello, I am calling about my order.", 8000)
    second = synth_speech("Could you please check what happened to it?", 8000)
    gap = 0.4
    r = engine.transcribe(silence(0.5) + first + silence(gap) + second, 8000)
    words = r.words
    assert [w.text for w in words] and "".join(w.text for w in words).strip() == r.text
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(w.end >= w.start for w in words)
    could = next(w for w in words if w.text.strip() == "Could")
    assert could.start == pytest.approx(0.5 + len(first) / 16000 + gap, abs=0.4)
    assert 0 < min(w.probability for w in words) <= 1


def test_word_guards_count_loops_and_repeated_lines() -> None:
    words = tuple(Word(f" {w}", i * 0.4, i * 0.4 + 0.3, 0.9) for i, w in enumerate(
        "I need a new card. I need a new card. Please.".split()))
    eng, _ = _fake_engine(RawResult("x", -0.2, 0.1, 12, "short", words, loop_words=3))
    before = {r: _metric("audiosocket_stt_rejections_total", reason=r)
              for r in ("loop", "repeated_line")}
    r = eng.transcribe(_speechlike(seconds=5.0), 8000)
    assert r.text == "I need a new card. Please." and r.rejected is None
    assert [w.text for w in r.words] == [" I", " need", " a", " new", " card.", " Please."]
    for reason in ("loop", "repeated_line"):
        assert _metric("audiosocket_stt_rejections_total", reason=reason) == before[reason] + 1
    assert eng.stats.rejected == {"loop": 1, "repeated_line": 1}


def test_phantom_alone_rejected_when_whisper_doubts_speech() -> None:
    # A stock phrase at a normal level, but Whisper's own no-speech estimate is high.
    eng, _ = _fake_engine(RawResult("Thank you. Thank you.", -0.3, 0.7))
    assert eng.transcribe(_speechlike(), 8000).rejected == "phantom"
    eng, _ = _fake_engine(RawResult("Thank you.", -0.3, 0.05))
    assert eng.transcribe(_speechlike(), 8000).text == "Thank you."


def test_a_mostly_looping_result_is_still_a_repetition() -> None:
    # The word-level collapse would leave "Beep Be"; the guard judges what was decoded.
    words = (Word(" Beep", 0.0, 0.3, 0.9), Word(" Be", 0.3, 0.4, 0.5))
    decoded = "Beep " * 30 + "Be"
    eng, _ = _fake_engine(RawResult("Beep Be", -0.3, 0.9, 31, "short", words, 29, decoded))
    assert eng.transcribe(_speechlike(), 8000).rejected == "repetition"
