"""The hallucination guards of speech-to-text: what Whisper invents, and how it is told.

Text guards judge a whole result (:func:`reject_reason`); word guards remove words of a kept
result (:func:`guard_words`, the word-level logic itself in ``helpers.speech.lines``). Each
sits next to the figure it checks; :class:`helpers.speech.stt.SttEngine` counts what they
reject by reason.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

from helpers.speech import text as text_rules
from helpers.speech.lines import (
    Word,
    drop_repeated_lines,
    snap_onsets,
    span_level,
    split_words,
    unsupported_edges,
)

if TYPE_CHECKING:
    from helpers.speech.whisper import RawResult

__all__ = ["PHANTOM_PHRASES", "cut_loop", "guard_words", "reject_reason"]

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


def _compression_ratio(text: str) -> float:
    raw = text.encode()
    return len(raw) / max(1, len(zlib.compress(raw)))


def reject_reason(
    raw: RawResult, level: float, *, no_speech_threshold: float, logprob_threshold: float,
    phantom_rms_dbfs: float, phantom_no_speech: float, compression_ratio_threshold: float,
) -> str | None:
    """The text guards; the reason to reject ``raw`` (``level``: the audio's dBFS), or None
    to keep it."""
    norm = text_rules.normalise(raw.text)
    if not norm:
        return "empty"
    if raw.no_speech_prob > no_speech_threshold and raw.avg_logprob < logprob_threshold:
        return "no_speech"
    if raw.avg_logprob < logprob_threshold:
        return "low_logprob"
    # A stock phrase alone is an invention when the audio is near-silent or Whisper
    # itself doubts there was speech (a clear "Thank you." scores ~0.02).
    if text_rules.normalise(cut_loop(raw.text)) in PHANTOM_PHRASES and (
        level < phantom_rms_dbfs or raw.no_speech_prob >= phantom_no_speech
    ):
        return "phantom"
    if _compression_ratio(raw.decoded or raw.text) > compression_ratio_threshold:
        return "repetition"
    return None


def guard_words(
    raw: RawResult, audio: np.ndarray, sample_rate: int, *, phantom_rms_dbfs: float,
    edge_below_speech_db: float,
) -> tuple[list[Word], list[str]]:
    """The word-level guards: the words kept, and one reason per kind of removal
    (``loop``, ``phantom_edge``, ``repeated_line``)."""
    reasons: list[str] = []
    if raw.loop_words:
        reasons.append("loop")
    words, cut = unsupported_edges(
        raw.words, PHANTOM_PHRASES, span_level(audio, sample_rate),
        floor_dbfs=phantom_rms_dbfs,
        below_speech_db=edge_below_speech_db,
    )
    if cut:
        reasons.append("phantom_edge")
    lines, repeated = drop_repeated_lines(split_words(words))
    if repeated:
        reasons.append("repeated_line")
    return snap_onsets([w for line in lines for w in line], audio, sample_rate), reasons
