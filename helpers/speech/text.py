"""Text rules shared by speech and post-call work: one sentence splitter, one normaliser.

Sentences are cut for speaking (TTS, one sentence at a time), for lines of a transcript (a
line ends where a sentence does) and for summaries (sentences are what a summary picks).
Words are normalised for comparing what Whisper heard against phrases (phantom outputs,
repeated lines) and for the word error rate. Each of these used to carry its own rules; they
now differ only in the explicit options below.
"""

from __future__ import annotations

import re

__all__ = ["normalise", "sentence_ends", "split_sentences", "words"]

# Words that end in a period without ending a sentence ("Dr. Smith", "St. Louis").
_ABBREVIATIONS = frozenset(
    # Abbreviations that are also common words ("no", "sun", "wed") are left out on purpose:
    # "Press two for no. Goodbye." must stay two sentences.
    """mr mrs ms dr prof sr jr st mt ft vs etc approx dept inc ltd corp jan feb apr jun jul
    aug sep sept oct nov dec tue tues thu thur thurs e.g i.e a.m p.m u.s ave blvd""".split()
)
# A sentence end: . ! ? (or runs like "?!" / "..."), optional closing quotes or brackets,
# then whitespace. Requiring whitespace is what keeps "3.5", "example.com" and "1.30" whole.
_END_RE = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)")
_CLAUSE_RE = re.compile(r"[,;:](?=\s)")
# Anything but a letter, a digit or an apostrophe separates words.
_NOT_WORD_RE = re.compile(r"[^\w']+|_+")


def sentence_ends(text: str) -> list[int]:
    """Offsets in ``text`` just past each sentence end (punctuation and closing quotes).

    An end is sentence punctuation followed by whitespace; a single period after a common
    abbreviation is not one. The end of the text is not listed (it always ends the last).
    """
    ends: list[int] = []
    start = 0
    for m in _END_RE.finditer(text):
        before = text[start : m.start()].split()
        last = before[-1].lower().lstrip("(\"'") if before else ""
        if m.group() == "." and last in _ABBREVIATIONS:
            continue
        ends.append(m.end())
        start = m.end()
    return ends


def _cut_long(sentence: str, limit: int) -> list[str]:
    """Cut an over-long sentence at clause punctuation, as late as possible under ``limit``."""
    parts: list[str] = []
    rest = sentence
    while len(rest) > limit:
        cuts = [m.end() for m in _CLAUSE_RE.finditer(rest, 0, limit)]
        if not cuts:
            break  # no natural cut: keep it whole rather than break a word group
        parts.append(rest[: cuts[-1]].strip())
        rest = rest[cuts[-1] :].strip()
    if rest:
        parts.append(rest)
    return parts


def split_sentences(
    text: str, *, max_chars: int | None = None, max_words: int | None = None
) -> list[str]:
    """Split text into sentences, whitespace-normalised; empty text gives ``[]``.

    Boundaries: :func:`sentence_ends` and line breaks. Pieces without a letter or digit are
    dropped. Sentences longer than ``max_chars`` are further cut at a comma, semicolon or
    colon (for speaking); runs longer than ``max_words`` are cut every ``max_words`` words
    (speech-to-text output is sometimes one endless unpunctuated line, which a summary could
    not choose from otherwise).
    """
    sentences: list[str] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        start = 0
        for end in sentence_ends(line):
            sentences.append(line[start:end].strip())
            start = end
        sentences.append(line[start:].strip())
    out: list[str] = []
    for s in sentences:
        if not any(c.isalnum() for c in s):
            continue
        parts = _cut_long(s, max_chars) if max_chars is not None else [s]
        if max_words is None:
            out.extend(parts)
            continue
        for part in parts:
            ws = part.split()
            out.extend(" ".join(ws[i : i + max_words]) for i in range(0, len(ws), max_words))
    return out


def words(text: str) -> list[str]:
    """Lower-case words: letters, digits and apostrophes; anything else separates."""
    return _NOT_WORD_RE.sub(" ", text.lower()).split()


def normalise(text: str) -> str:
    """The words of ``text`` joined by single spaces (see :func:`words`)."""
    return " ".join(words(text))
