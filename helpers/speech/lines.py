"""Sentence-sized transcript lines from Whisper's word timestamps, and the word-level guards.

A VAD utterance of fluent speech runs for 15-25 s (it is only cut by a pause or at the
maximum length), so one line per utterance makes click-to-seek useless. Whisper's words,
each with its own start and end (cross-attention alignment, as faster-whisper's
``word_timestamps``), let us cut the utterance into lines that start where each sentence
starts:

1. sentence ends (``.``, ``?``, ``!``), as :func:`helpers.speech.text.sentence_ends` finds
   them (the same rules the summaries and the TTS use, so "a sentence" means one thing);
2. a line still longer than ``max_s`` seconds or ``max_words`` words is cut at its longest
   pause between two words (a comma adds a little), recursively.

The guards here act on words, where the timing tells real speech from invention:
:func:`collapse_loops` (a decoder loop inside one result), :func:`drop_repeated_lines`
(the same line twice in a row) and :func:`unsupported_edges` (a stock phrase such as
"Thank you." at the start or end of a result, over audio far quieter than the speech).
All pure functions; times are seconds from the start of the recognised audio unless an
``offset`` moves them onto the call's timeline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from helpers.speech import text as text_rules

__all__ = [
    "MAX_LINE_S",
    "MAX_LINE_WORDS",
    "Line",
    "Word",
    "align_words",
    "collapse_loops",
    "drop_repeated_lines",
    "line_text",
    "make_lines",
    "snap_onsets",
    "span_level",
    "split_words",
    "unsupported_edges",
]

MAX_LINE_S = 12.0
MAX_LINE_WORDS = 30
_MIN_PART_WORDS = 3  # a cut for length never leaves a stub shorter than this
_COMMA_BONUS_S = 0.15  # at equal pauses, cut after a comma rather than mid-phrase
_SENTENCE_END = (".", "?", "!")
# faster-whisper's defaults: punctuation Whisper emits as words of its own joins its neighbour.
_PREPEND = "\"'“¿([{-"
_APPEND = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class Word:
    """One recognised word: its text as Whisper spells it (leading space and attached
    punctuation included), start and end in seconds, and Whisper's probability for it."""

    text: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Line:
    """One transcript line built from words: times from its first and last word."""

    start: float
    end: float
    text: str
    confidence: float
    words: tuple[Word, ...]


def _norm(text: str) -> str:
    # One word's key: its normalised words run together ("well-known" -> "wellknown").
    return "".join(text_rules.words(text))


def line_text(words: Sequence[Word]) -> str:
    """The words joined as Whisper spelled them."""
    return re.sub(r"\s+", " ", "".join(w.text for w in words)).strip()


def _ends_sentence(word: Word) -> bool:
    return word.text.rstrip("\"')]}”’").endswith(_SENTENCE_END)


def _ends_clause(word: Word) -> bool:
    return word.text.rstrip("\"')]}”’").endswith((*_SENTENCE_END, ",", ";"))


def _sentences(words: Sequence[Word]) -> list[list[Word]]:
    """Words grouped by sentence: cut after a word that ends where a sentence does.

    A word ends a sentence when the joined text has a sentence end
    (:func:`helpers.speech.text.sentence_ends`) right after its last character and the word
    itself ends in sentence punctuation. Long unpunctuated runs are left to
    :func:`_cut_long`, which cuts them at pauses.
    """
    text = ""
    word_end: list[int] = []
    for w in words:
        text += w.text
        word_end.append(len(text.rstrip()))
    cuts = set(text_rules.sentence_ends(text))  # character offsets where a sentence ends
    out: list[list[Word]] = []
    cur: list[Word] = []
    for w, end in zip(words, word_end, strict=True):
        cur.append(w)
        if end in cuts and _ends_sentence(w):
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def _cut_long(words: list[Word], max_s: float, max_words: int) -> list[list[Word]]:
    """Cut ``words`` at the longest pause until every part fits ``max_s`` and ``max_words``."""
    if len(words) < 2 * _MIN_PART_WORDS or (
        len(words) <= max_words and words[-1].end - words[0].start <= max_s
    ):
        return [words]
    best, best_score = 0, -math.inf
    mid = len(words) / 2
    for i in range(_MIN_PART_WORDS, len(words) - _MIN_PART_WORDS + 1):
        gap = words[i].start - words[i - 1].end
        if words[i - 1].text.rstrip().endswith((",", ";", ":")):
            gap += _COMMA_BONUS_S
        # Equal pauses: the cut nearer the middle (fewer further cuts, even lines).
        score = gap - 1e-3 * abs(i - mid)
        if score > best_score:
            best, best_score = i, score
    return _cut_long(words[:best], max_s, max_words) + _cut_long(words[best:], max_s, max_words)


def split_words(
    words: Sequence[Word], max_s: float = MAX_LINE_S, max_words: int = MAX_LINE_WORDS
) -> list[list[Word]]:
    """Group words into sentence-sized lines (see the module docstring)."""
    out: list[list[Word]] = []
    for sentence in _sentences(words):
        out.extend(_cut_long(sentence, max_s, max_words))
    return out


def _confidence(words: Sequence[Word]) -> float:
    """Geometric mean of the word probabilities: on the scale of ``exp(avg_logprob)``."""
    logs = [math.log(max(w.probability, 1e-6)) for w in words]
    return float(math.exp(sum(logs) / len(logs))) if logs else 0.0


def make_lines(
    words: Sequence[Word],
    offset: float = 0.0,
    *,
    max_s: float = MAX_LINE_S,
    max_words: int = MAX_LINE_WORDS,
    clamp: tuple[float, float] | None = None,
) -> list[Line]:
    """Sentence-sized lines of ``words``, their times moved by ``offset`` (the call time of
    the audio's first sample) and, with ``clamp``, kept inside ``(lo, hi)``."""
    lines = []
    said: list[list[str]] = []
    for group in split_words(words, max_s, max_words):
        text = line_text(group)
        if not text:
            continue
        start, end = offset + group[0].start, offset + group[-1].end
        key = [k for k in (_norm(w.text) for w in group) if k]
        if clamp is not None and start >= clamp[1] and any(
            key == earlier[: len(key)] for earlier in said
        ):
            # Whisper repeating the utterance's start in the padding after the speech: the
            # words lie past its end and say again what a line before them said (seen on
            # a fresh machine's Piper rendering: "...my order. I would like to check the").
            continue
        said.append(key)
        if clamp is not None:
            start = min(max(start, clamp[0]), clamp[1])
            end = min(max(end, start), clamp[1])
        lines.append(Line(start, end, text, _confidence(group), tuple(group)))
    return lines


def collapse_loops(words: Sequence[Word]) -> tuple[list[Word], int]:
    """Keep one copy of each decoder loop; returns ``(kept words, words removed)``.

    A loop is an n-gram repeated back to back. At the end of a result (where a loop runs
    until the decode is cut off, often mid-copy) two repeated words are enough, as in
    :func:`helpers.speech.stt_guards.cut_loop`; inside a result it takes three copies of a
    phrase and at least four repeated words, or a phrase of four or more words said twice,
    so a caller's "no, no, no" or "very very" stays.
    """
    norm = [_norm(w.text) for w in words]
    n = len(norm)
    keep: list[Word] = []
    i = 0
    while i < n:
        cut = None
        for p in range(1, (n - i) // 2 + 1):
            j = i + p
            while j < n and norm[j] == norm[j - p]:
                j += 1
            rep = j - (i + p)
            copies = 1 + rep // p
            at_end = j == n
            if (at_end and rep >= max(2, min(p, 3))) or (
                rep >= p and ((copies >= 3 and rep >= 4) or p >= 4)
            ):
                cut = (p, j)
                break
        if cut is None:
            keep.append(words[i])
            i += 1
        else:
            keep.extend(words[i : i + cut[0]])
            i = cut[1]
    return keep, n - len(keep)


def drop_repeated_lines(lines: Sequence[Sequence[Word]]) -> tuple[list[list[Word]], int]:
    """Drop a line of two or more words that repeats the line before it word for word
    (Whisper's "Thank you. Thank you."); a one-word "Hello? Hello?" is speech and stays."""
    out: list[list[Word]] = []
    dropped = 0
    prev: list[str] | None = None
    for line in lines:
        key = [_norm(w.text) for w in line if _norm(w.text)]
        if prev is not None and len(key) >= 2 and key == prev:
            dropped += 1
            continue
        out.append(list(line))
        prev = key
    return out, dropped


def unsupported_edges(
    words: Sequence[Word],
    phrases: frozenset[str],
    level: Callable[[float, float], float],
    *,
    floor_dbfs: float,
    below_speech_db: float,
) -> tuple[list[Word], int]:
    """Drop stock phrases (``phrases``, normalised) at the start or end of a result whose
    audio does not carry them; returns ``(kept words, words removed)``.

    ``level(start, end)`` is the dBFS of the audio between two word times. A phrase is
    unsupported when its stretch is quieter than ``floor_dbfs`` or ``below_speech_db`` under
    the level of the words that stay: Whisper's "Thank you." on a quiet tail, never a
    caller's clear one. The phrase must be a sentence or clause of its own, and a result
    made of the phrase alone is left to the whole-result guard.
    """
    kept = list(words)
    removed = 0
    for side in ("end", "start"):
        for k in range(min(len(kept) - 1, 6), 0, -1):
            edge = kept[-k:] if side == "end" else kept[:k]
            rest = kept[:-k] if side == "end" else kept[k:]
            # Only a whole sentence (or comma phrase): "you" in "can I ask you" is no edge.
            if not _ends_clause(rest[-1] if side == "end" else edge[-1]):
                continue
            if " ".join(_norm(w.text) for w in edge if _norm(w.text)) not in phrases:
                continue
            speech = level(rest[0].start, rest[-1].end)
            here = level(edge[0].start, edge[-1].end)
            if here < floor_dbfs or here < speech - below_speech_db:
                kept = rest
                removed += k
            break
    return kept, removed


def align_words(
    model: Any, tokenizer: Any, tokens: list[int], encoder_output: Any, frames: int
) -> tuple[list[Word], int]:
    """Timed words for the decoded ``tokens`` of one utterance; ``(words, loop words cut)``.

    Decoder loops go first (aligning a loop would smear it over the audio), then
    faster-whisper's cross-attention alignment (the DTW behind its ``word_timestamps``)
    over the ``frames`` mel frames that hold audio. ``model`` is the ``WhisperModel``.
    """
    from faster_whisper.transcribe import merge_punctuations

    names, groups = tokenizer.split_to_word_tokens([*tokens, tokenizer.eot])
    draft = [Word(n, float(i), float(i), 1.0) for i, n in enumerate(names[:-1])]
    kept, looped = collapse_loops(draft)
    kept_tokens = [t for w in kept for t in groups[int(w.start)]]
    if not kept_tokens:
        return [], looped
    timed = model.find_alignment(tokenizer, [kept_tokens], encoder_output, max(1, frames))[0]
    merge_punctuations(timed, _PREPEND, _APPEND)
    return [Word(str(w["word"]), float(w["start"]), float(w["end"]), float(w["probability"]))
            for w in timed if w["word"]], looped


def span_level(audio: np.ndarray, rate: int) -> Callable[[float, float], float]:
    """``level(start, end)``: the dBFS of float ``audio`` between two word times."""

    def level(start: float, end: float) -> float:
        # At least 100 ms: a word the alignment squeezed to nothing still has a level.
        a, b = int(start * rate), int(max(end, start + 0.1) * rate)
        part = audio[max(0, a) : max(a + 1, b)]
        power = float(np.mean(np.square(part, dtype=np.float64))) if part.size else 0.0
        return 10 * math.log10(power) if power > 0 else -math.inf

    return level


def snap_onsets(
    words: Sequence[Word],
    audio: np.ndarray,
    rate: int,
    *,
    below_speech_db: float = 30.0,
    floor_dbfs: float = -55.0,
) -> list[Word]:
    """Each word's start moved past silence the alignment put in front of it.

    Whisper's alignment tends to start a word that follows a pause at the start of that
    pause (seen: a sentence after the VAD's 15 s cut began 0.5 s early, on the silence
    before it), so a line seeking there plays silence first. A word whose first 10 ms is
    quiet (more than ``below_speech_db`` under the utterance's speech level, and under
    ``floor_dbfs`` at least) starts at its first loud 10 ms instead, never later than 50 ms
    before its end. Soft onsets (an "s", an "f") stay above that threshold.
    """
    hop = max(1, rate // 100)
    n = len(audio) // hop
    if n == 0 or not words:
        return list(words)
    frames = np.asarray(audio[: n * hop], dtype=np.float64).reshape(n, hop)
    db = 10 * np.log10(np.mean(np.square(frames), axis=1) + 1e-12)
    threshold = max(floor_dbfs, float(np.percentile(db, 90)) - below_speech_db)
    loud = db > threshold
    out: list[Word] = []
    for w in words:
        a = int(w.start * 100)
        b = min(n, int(max(w.start, w.end - 0.05) * 100))
        onset = _onset(loud[a:b]) if 0 <= a < b else None
        out.append(replace(w, start=(a + onset) / 100) if onset else w)
    return out


#: A quiet run this long inside a word's span is a pause, not a stop consonant's closure.
_PAUSE_FRAMES = 12


def _onset(loud: np.ndarray) -> int | None:
    """Where speech starts in a word's span (10 ms frames): after its leading quiet, or after
    the last pause in it (a word aligned over the tail of the sentence before, which a
    VAD cut left at the start of the audio); None when it starts at once or never."""
    found = np.flatnonzero(loud)
    if not found.size:
        return None
    start = int(found[0])
    run = 0
    for i in range(start, len(loud)):
        if loud[i]:
            if run >= _PAUSE_FRAMES:
                start = i
            run = 0
        else:
            run += 1
    return start or None
