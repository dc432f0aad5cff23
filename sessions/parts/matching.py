"""Matching what a caller said to a menu's choices, tolerantly.

"sales", "sales please", "I want sales" and "Sails." all pick the choice with the word
"sales"; "two" or "press 2" picks the choice on key 2. Whisper's spelling of short words
varies, so single words also match at a small edit distance.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from sessions.parts.flow import Choice

__all__ = ["match_choice", "normalise"]

_NUMBERS = {
    "zero": "0", "oh": "0", "one": "1", "won": "1", "two": "2", "to": "2", "too": "2",
    "three": "3", "four": "4", "for": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "star": "*", "pound": "#", "hash": "#",
}
#: How close a heard word must be to a choice word (difflib ratio) to count.
FUZZY = 0.8


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation."""
    return re.findall(r"[a-z0-9*#']+", text.lower().replace("'", ""))


def _word_hits(heard: list[str], phrase: str) -> bool:
    target = normalise(phrase)
    if not target:
        return False
    n = len(target)
    for i in range(len(heard) - n + 1):
        window = heard[i : i + n]
        if window == target:
            return True
        if all(len(w) >= 4 and difflib.SequenceMatcher(None, w, t).ratio() >= FUZZY
               for w, t in zip(window, target, strict=True)):
            return True
    return False


def match_choice(text: str, choices: Sequence[Choice]) -> Choice | None:
    """The choice ``text`` names, or None. Words win over spoken digits; ambiguity is None."""
    heard = normalise(text)
    if not heard:
        return None
    by_words = [c for c in choices if any(_word_hits(heard, w) for w in c.words)]
    if len(by_words) == 1:
        return by_words[0]
    if len(by_words) > 1:
        return None
    # Spoken keys: "two", "press 2". Only for short answers (3 words), so "I have two questions
    # about sales" is not read as key 2 (words were checked first anyway).
    if len(heard) <= 3:
        keys = {_NUMBERS.get(w, w) for w in heard}
        by_key = [c for c in choices if c.key is not None and c.key in keys]
        if len(by_key) == 1:
            return by_key[0]
    return None
