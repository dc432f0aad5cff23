"""Speech-to-text for calls: deadline admission, a bounded queue and worker threads.

The decoding (the model cache, the short-window Whisper path) is
:mod:`helpers.speech.whisper`; the hallucination guards are :mod:`helpers.speech.stt_guards`;
this module queues utterances, runs them and counts what the guards reject.

Threading: :meth:`SttEngine.submit` never blocks; results come back through a callback that
runs **on a worker thread** (or, for an utterance refused at admission, on the thread that
called ``submit``). From asyncio, marshal it back to the loop::

    engine.submit(uuid, utt, lambda seg, out: loop.call_soon_threadsafe(handle, seg, out))

``transcribe`` returns an :class:`~helpers.speech.stt_result.SttResult`; the callback gets
the :class:`Segment` (None unless there is text) and an
:data:`~helpers.speech.stt_result.SttOutcome` (done, dropped or failed).

Words: with ``word_timestamps`` (default) the result carries Whisper's words, timed by
faster-whisper's cross-attention alignment (~10 % on top of the decode, docs/BENCHMARKS.md),
so a long utterance becomes sentence-sized lines (:meth:`Segment.lines`,
``helpers.speech.lines``) and the word-level guards can tell a quiet invented "Thank you."
from a caller's.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import structlog
from prometheus_client import Counter, Gauge, Histogram

from helpers.ai import AiSlots, ModelCache
from helpers.audio import dbfs, pcm_to_float, resample_float
from helpers.speech.lines import Word, line_text, make_lines
from helpers.speech.stt_guards import PHANTOM_PHRASES, cut_loop, guard_words, reject_reason
from helpers.speech.stt_result import SttDone, SttDropped, SttFailed, SttOutcome, SttResult
from helpers.speech.vad import Utterance, voiced_ms
from helpers.speech.whisper import (
    DEFAULT_SHORT_WINDOW_MIN_S,
    SAMPLE_RATE,
    Backend,
    RawResult,
    WhisperBackend,
    load_model,
)

# RawResult, WhisperBackend, load_model, PHANTOM_PHRASES, cut_loop and the result types are
# re-exported: the engine's callers name them here.
__all__ = [
    "PHANTOM_PHRASES",
    "RawResult",
    "Segment",
    "SttCallback",
    "SttDone",
    "SttDropped",
    "SttEngine",
    "SttFailed",
    "SttOutcome",
    "SttResult",
    "WhisperBackend",
    "Word",
    "cut_loop",
    "load_model",
]

log = structlog.get_logger("helpers.speech.stt")

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
    "not_running; remote STT (helpers.speech.remote_stt): pool_full (the shared stream is "
    "full), timeout (no answer by the deadline), no_workers (no STT worker alive)",
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
        """This utterance as sentence-sized lines (``helpers.speech.lines``), each timed by its
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


#: The submit callback: the final :class:`Segment` (None when dropped, failed or rejected)
#: and what became of the utterance.
SttCallback = Callable[[Segment | None, SttOutcome], None]


@dataclass
class _Job:
    call_uuid: str
    utt: Utterance
    callback: SttCallback
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
        """Stop the workers; utterances still waiting get ``(None, SttDropped(.., "stopped"))``."""
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
        callback: SttCallback,
        speech_end_monotonic: float | None = None,
        deadline_s: float | None = None,
    ) -> bool:
        """Admit ``utt`` by its deadline; never blocks. Returns False (and calls back with
        ``(None, SttDropped(...))`` on this thread) when it is refused:
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
        self._safe_callback(job, None, SttDropped(job.utterance_id, reason))

    def _safe_callback(self, job: _Job, seg: Segment | None, outcome: SttOutcome) -> None:
        try:
            job.callback(seg, outcome)
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
            result = self.transcribe(job.utt.pcm, job.utt.rate,
                                     voiced=job.utt.voiced_ms, live=True)
        except Exception as exc:
            ERRORS.inc()
            log.exception("stt_failed", call_uuid=job.call_uuid)
            self._safe_callback(job, None, SttFailed(job.utterance_id, repr(exc)))
            return
        self._finish(job, result)

    def _finish(self, job: _Job, result: SttResult, *, worker: str | None = None,
                remote_ms: float | None = None) -> None:
        """Report ``transcribe``'s result for ``job`` as a :class:`Segment` on the call's
        timeline (None when a guard rejected it); also the remote engine's way back."""
        started = job.started
        done = time.monotonic()
        latency = done - job.speech_end
        LATENCY.observe(latency)
        outcome = SttDone(result, job.utterance_id,
                          queue_wait_ms=(started - job.enqueued) * 1000,
                          latency_ms=latency * 1000,
                          late_ms=max(0.0, done - job.deadline) * 1000,
                          worker=worker, remote_ms=remote_ms)
        seg = None
        if result.text:
            at = job.utt.pcm_start
            words = tuple(Word(w.text, at + w.start, at + w.end, w.probability)
                          for w in result.words)
            seg = Segment(job.call_uuid, job.utt.start, job.utt.end, result.text,
                          result.confidence, latency * 1000, job.utterance_id, words)
        self._safe_callback(job, seg, outcome)

    # -- recognition -------------------------------------------------------------------------

    def transcribe(
        self, pcm: bytes, rate: int, *, voiced: float | None = None, live: bool = False
    ) -> SttResult:
        """Transcribe int16 PCM synchronously (guards applied). The result's ``text`` is
        empty when a guard rejected it and ``rejected`` names the reason. Safe to call from
        several threads. ``live``: take the AI slot ahead of post-call work (the engine's
        workers do)."""
        t0 = time.perf_counter()
        audio_s = len(pcm) / 2 / rate if rate else 0.0
        level = float(dbfs(pcm))
        if voiced is None:
            voiced = voiced_ms(pcm, rate, self.vad_aggressiveness)
        # processing_ms is filled in when the result is complete (or rejected).
        result = SttResult("", 0.0, duration_s=audio_s, dbfs=level, voiced_ms=float(voiced),
                           processing_ms=0.0)
        if voiced < self.min_voiced_ms:
            return self._reject("vad", result, t0, audio_s)
        audio = resample_float(pcm_to_float(pcm), rate, SAMPLE_RATE)
        slots = self.ai
        with slots.live() if live else slots:
            raw = self.backend.recognize(audio)
        # float(): a backend may hand numpy scalars, which neither JSON nor equality after
        # the wire round trip treat as floats.
        result = replace(result, avg_logprob=float(raw.avg_logprob),
                         no_speech_prob=float(raw.no_speech_prob), tokens=int(raw.tokens),
                         path=raw.path, raw_text=raw.text)
        reason = self._guard(raw, level)
        if reason:
            return self._reject(reason, result, t0, audio_s)
        text = raw.text
        words: tuple[Word, ...] = ()
        if raw.words:
            words = tuple(self._guard_words(raw, audio))
            if not words:
                return self._reject("phantom", result, t0, audio_s)
            text = line_text(words)
        processing = time.perf_counter() - t0
        PROCESSING.observe(processing)
        UTTERANCES.inc()
        self.stats.done += 1
        self._note_rtf(processing, audio_s)
        conf = float(min(1.0, math.exp(raw.avg_logprob)))
        return replace(result, text=text, confidence=conf, words=words,
                       processing_ms=processing * 1000)

    def _guard(self, raw: RawResult, level: float) -> str | None:
        """The hallucination guards; the reason to reject ``raw``, or None to keep it."""
        return reject_reason(
            raw, level, no_speech_threshold=self.no_speech_threshold,
            logprob_threshold=self.logprob_threshold, phantom_rms_dbfs=self.phantom_rms_dbfs,
            phantom_no_speech=self.phantom_no_speech,
            compression_ratio_threshold=self.compression_ratio_threshold,
        )

    def _guard_words(self, raw: RawResult, audio: np.ndarray) -> list[Word]:
        """The word-level guards (``helpers.speech.stt_guards``); each removal counted."""
        words, reasons = guard_words(raw, audio, SAMPLE_RATE,
                                     phantom_rms_dbfs=self.phantom_rms_dbfs,
                                     edge_below_speech_db=self.edge_below_speech_db)
        for reason in reasons:
            self._count(reason)
        return words

    def _count(self, reason: str) -> None:
        REJECTED.labels(reason=reason).inc()
        with self._cond:
            self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1

    def _reject(
        self, reason: str, result: SttResult, t0: float, audio_s: float
    ) -> SttResult:
        processing = time.perf_counter() - t0
        self._count(reason)
        if reason != "vad":  # the VAD gate costs nothing; do not let it skew the RTF
            PROCESSING.observe(processing)
            self._note_rtf(processing, audio_s)
        log.info("stt_rejected", reason=reason, text=result.raw_text,
                 avg_logprob=result.avg_logprob, no_speech_prob=result.no_speech_prob,
                 dbfs=round(result.dbfs, 1) if math.isfinite(result.dbfs) else None)
        return replace(result, text="", confidence=0.0, rejected=reason,
                       processing_ms=processing * 1000)
