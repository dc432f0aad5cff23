"""Word error rate, for tests and benchmarks of speech recognition."""

from __future__ import annotations

from helpers.speech.text import words

__all__ = ["wer", "word_errors", "words"]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(Levenshtein distance over words, reference word count)."""
    ref, hyp = words(reference), words(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate; 1.0 for any words against an empty reference."""
    errors, n = word_errors(reference, hypothesis)
    if not n:
        return float(bool(words(hypothesis)))
    return errors / n
