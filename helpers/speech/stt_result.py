"""What speech-to-text hands back: typed values instead of a string-keyed ``info`` dict.

:class:`SttResult` is one run of :meth:`helpers.speech.stt.SttEngine.transcribe` (the guards
applied); it is also what an ``audiosocket worker --stt`` sends back over NATS
(:func:`helpers.speech.remote_stt.encode_result`). The engine's submit callback gets an
:data:`SttOutcome`: :class:`SttDone` (a result, with the live engine's timing),
:class:`SttDropped` (never transcribed, and why) or :class:`SttFailed` (recognition raised).
Kept apart from :mod:`helpers.speech.stt` so consumers (the post-call loop, the wire codec)
can name the types without importing the engine and its model loader.
"""

from __future__ import annotations

from dataclasses import dataclass

from helpers.speech.lines import Word

__all__ = ["SttDone", "SttDropped", "SttFailed", "SttOutcome", "SttResult"]


@dataclass(frozen=True)
class SttResult:
    """One utterance recognised and judged by the hallucination guards.

    ``text`` is empty when a guard rejected it, ``rejected`` then naming the guard (``vad``,
    ``empty``, ``no_speech``, ``low_logprob``, ``phantom``, ``repetition``). The decoder's
    figures are None when Whisper did not run (the ``vad`` gate).
    """

    text: str
    confidence: float
    #: Seconds of audio.
    duration_s: float
    #: Level of the audio (``-inf`` for digital silence).
    dbfs: float
    #: Voiced audio the VAD found (or the caller's VAD measured), ms.
    voiced_ms: float
    #: Time to transcribe, guards included, ms.
    processing_ms: float
    rejected: str | None = None
    #: Whisper's words after the word-level guards, seconds from the start of the audio
    #: (empty when word timestamps are off or the result was rejected).
    words: tuple[Word, ...] = ()
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    tokens: int | None = None
    #: Which decoding path ran (``short`` / ``padded``).
    path: str | None = None
    #: Whisper's text before the guards.
    raw_text: str | None = None


@dataclass(frozen=True)
class SttDone:
    """A submitted utterance was transcribed (the result may still be a rejection)."""

    result: SttResult
    utterance_id: int
    #: Time in the engine's queue, ms.
    queue_wait_ms: float
    #: End of speech to the result, ms.
    latency_ms: float
    #: How far past its deadline the result came, ms (0: in time).
    late_ms: float
    #: The remote worker that answered (None: transcribed in this process).
    worker: str | None = None
    #: Publish to answer on the remote pool, ms (None: transcribed in this process).
    remote_ms: float | None = None


@dataclass(frozen=True)
class SttDropped:
    """A submitted utterance was never transcribed.

    ``reason``: ``deadline``, ``queue_bytes``, ``queue_full``, ``stopped``, ``not_running``;
    remote STT also ``pool_full``, ``timeout``, ``no_workers`` (the labels of
    ``audiosocket_stt_utterances_dropped_total``).
    """

    utterance_id: int
    reason: str


@dataclass(frozen=True)
class SttFailed:
    """Recognition of a submitted utterance raised (a broken model, an unreadable reply)."""

    utterance_id: int
    error: str
    #: The remote worker whose recognition raised (None: this process, or unknown).
    worker: str | None = None


#: What the engine's submit callback receives beside the :class:`~helpers.speech.stt.Segment`.
SttOutcome = SttDone | SttDropped | SttFailed
