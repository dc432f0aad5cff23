"""Call summaries: the contract, the transcript's sentences and the extractive summariser.

:class:`ExtractiveSummarizer` is deterministic and needs nothing; the Flan-T5 backends that
replace it when a checkpoint is installed are in :mod:`helpers.postcall.flan_t5`, and
finding, choosing, converting and fetching their models in
:mod:`helpers.postcall.summary_models` (``load_summarizer``). All of them return the same
:class:`Summary`, with the title rules of :mod:`helpers.postcall.titles`.

Every public call is blocking (inference takes hundreds of ms): run it in a thread or a
worker process, never on the event loop.
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

from helpers.postcall.titles import fallback_title, find_reason, is_small_talk
from helpers.speech import text as text_rules

__all__ = [
    "EMPTY_TEXT",
    "EMPTY_TITLE",
    "TITLE_MAX_CHARS",
    "ExtractiveSummarizer",
    "Summarizer",
    "Summary",
    "cap_title",
    "clean_transcript",
    "split_sentences",
    "title_from_text",
    "trim_sentences",
]

log = structlog.get_logger(__name__)

TITLE_MAX_CHARS = 50
MAX_SENTENCES = 3
EMPTY_TITLE = "No speech"
EMPTY_TEXT = "No speech was transcribed on this call."



@dataclass(frozen=True)
class Summary:
    """A call's summary: a title of at most 50 characters and 1-3 sentences of text.

    ``method`` is ``"flan-t5"`` (then ``model`` names the checkpoint, plus the backend when it
    is not torch: ``"google/flan-t5-small (ctranslate2 int8)"``) or ``"extractive"``
    (``model`` is None).
    """

    title: str
    text: str
    method: str
    model: str | None


@runtime_checkable
class Summarizer(Protocol):
    """Anything that turns a transcript (and the IVR menu path taken) into a Summary."""

    def summarize(self, transcript: str, ivr_path: list[str] | None = None) -> Summary:
        """Summarise one call. Blocking."""
        ...


# --------------------------------------------------------------------------- text helpers

_SPEAKER_RE = re.compile(r"^\s*(?:\[[^\]]{0,20}\]\s*)?[A-Za-z][\w .'-]{0,20}:\s+", re.M)
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+")
_LONG_RUN_WORDS = 25  # unpunctuated speech is cut into pseudo-sentences of this many words


def clean_transcript(transcript: str) -> str:
    """Drop speaker labels ("Caller: ...") and collapse whitespace."""
    text = _SPEAKER_RE.sub("", transcript)
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Sentences of a transcript; long unpunctuated runs cut every 25 words.

    Speech-to-text output is sometimes one endless unpunctuated line; without the cut it
    would be a single "sentence" and neither summariser could choose anything.
    """
    return text_rules.split_sentences(text, max_words=_LONG_RUN_WORDS)


def cap_title(title: str, limit: int = TITLE_MAX_CHARS) -> str:
    """Tidy a generated title and cut it to ``limit`` characters at a word boundary."""
    t = re.sub(r"\s+", " ", title).strip()
    t = re.sub(r"^(?:title|subject)\s*[:\-]\s*", "", t, flags=re.I)
    t = t.strip(" \"'`“”‘’")
    if len(t) > limit:
        cut = t[: limit + 1]
        space = cut.rfind(" ")
        t = cut[:space] if space > 0 else t[:limit]
    t = t.rstrip(" ,;:-.")
    return t[:1].upper() + t[1:]


def trim_sentences(text: str, limit: int = MAX_SENTENCES) -> str:
    sentences = split_sentences(re.sub(r"\s+", " ", text).strip())
    return " ".join(sentences[:limit]).strip()


def title_from_text(text: str) -> str:
    first = split_sentences(text)[:1]
    return cap_title(first[0] if first else text)


# --------------------------------------------------------------------------- extractive

_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be because
    been before being below between both but by can can't cannot could couldn't did didn't do
    does doesn't doing don't down during each few for from further had hadn't has hasn't have
    haven't having he he'd he'll he's her here here's hers herself him himself his how how's i
    i'd i'll i'm i've if in into is isn't it it's its itself let's me more most mustn't my
    myself no nor not of off on once only or other ought our ours ourselves out over own same
    shan't she she'd she'll she's should shouldn't so some such than that that's the their
    theirs them themselves then there there's these they they'd they'll they're they've this
    those through to too under until up very was wasn't we we'd we'll we're we've were weren't
    what what's when when's where where's which while who who's whom why why's will with won't
    would wouldn't you you'd you'll you're you've your yours yourself yourselves
    yes yeah yep no nope ok okay oh uh um umm hmm ah er like just really well right sure so
    hi hello hey bye goodbye thanks thank please sorry alright gonna wanna got get go going
    know think see say said tell want need would could one two also actually maybe still
    thing things something anything way lot bit today now then there here""".split()
)


def _content_words(sentence: str) -> list[str]:
    return [
        w for w in (m.lower() for m in _WORD_RE.findall(sentence))
        if w not in _STOPWORDS and len(w) > 2 and not w.isdigit()
    ]


class ExtractiveSummarizer:
    """Picks the call's key sentences; needs no model and is deterministic.

    Sentences are scored by how frequent their content words are across the whole call
    (normalised by sqrt(length), so long rambling sentences do not win by size alone), with a
    bonus for the opening fifth, where callers usually say why they call. Up to three are
    kept, in call order. The title is the sentence that states the reason for the call,
    compressed to a phrase (:mod:`helpers.postcall.titles`); failing that, "Call about"
    the most frequent content-word phrase.
    """

    method = "extractive"
    model: str | None = None

    def summarize(self, transcript: str, ivr_path: list[str] | None = None) -> Summary:
        """Summarise one call by sentence extraction."""
        text = clean_transcript(transcript)
        sentences = split_sentences(text)
        if not sentences:
            if ivr_path:
                # A keys-only IVR call: the path is all there is to say, and it is a lot.
                steps = " > ".join(re.sub(r"[_\-]+", " ", p) for p in ivr_path)
                return Summary(cap_title(f"IVR: {_ivr_title(ivr_path)}"),
                               f"No speech was transcribed; the call went {steps}.",
                               self.method, None)
            return Summary(EMPTY_TITLE, EMPTY_TEXT, self.method, None)
        words_per_sentence = [_content_words(s) for s in sentences]
        freq = collections.Counter(w for ws in words_per_sentence for w in ws)
        if not freq:
            title = cap_title(_ivr_title(ivr_path) or "Short call")
            return Summary(title, trim_sentences(text, 1), self.method, None)
        top = max(freq.values())
        n = len(sentences)
        reason = find_reason(sentences)
        scored: list[tuple[float, int]] = []
        for i, ws in enumerate(words_per_sentence):
            if not ws:
                scored.append((0.0, i))
                continue
            score = sum(freq[w] / top for w in set(ws)) / math.sqrt(len(ws))
            if len(ws) < 3:
                score *= 0.5  # "Hi, this is Anna." is rarely the point of the call
            if i < max(1, n // 5):
                score *= 1.2
            if is_small_talk(sentences[i]):
                score *= 0.3  # "Thank you for calling, how can I help?"
            if reason is not None and i == reason[0]:
                score += 10.0  # the sentence the title comes from: always in the text
            scored.append((score, i))
        keep = 1 if n <= 3 else 2 if n <= 12 else MAX_SENTENCES
        # Highest score first; ties go to the earlier sentence, so output is deterministic.
        ranked = [i for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))]
        chosen = sorted(ranked[:keep])
        summary_text = " ".join(sentences[i] for i in chosen)
        # The reason for the call as a phrase; the key-phrase title only when no sentence
        # compresses into one (helpers.postcall.titles).
        title = (reason[1] if reason is not None else fallback_title(sentences, ranked)) \
            or self._title(words_per_sentence, freq, ivr_path)
        return Summary(title, summary_text, self.method, None)

    @staticmethod
    def _title(
        words_per_sentence: list[list[str]],
        freq: collections.Counter[str],
        ivr_path: list[str] | None,
    ) -> str:
        # Key phrases: adjacent content-word pairs said at least twice, then single words.
        bigrams: collections.Counter[tuple[str, str]] = collections.Counter()
        first_seen: dict[Any, int] = {}
        pos = 0
        for ws in words_per_sentence:
            for j, w in enumerate(ws):
                first_seen.setdefault(w, pos)
                pos += 1
                if j + 1 < len(ws) and ws[j + 1] != w:
                    bg = (w, ws[j + 1])
                    bigrams[bg] += 1
                    first_seen.setdefault(bg, pos)
        phrases: list[str] = []
        used: set[str] = set()
        for (a, b), c in sorted(
            bigrams.items(), key=lambda kv: (-kv[1] * (freq[kv[0][0]] + freq[kv[0][1]]),
                                             first_seen[kv[0]])
        ):
            if c < 2 or len(phrases) >= 2:
                break
            if a in used or b in used:
                continue
            phrases.append(f"{a} {b}")
            used.update((a, b))
        for w, _c in sorted(freq.items(), key=lambda kv: (-kv[1], first_seen[kv[0]])):
            if len(phrases) >= 3:
                break
            if w not in used:
                phrases.append(w)
                used.add(w)
        # One phrase that reads ("Call about parcel delivery"), never a comma-joined list.
        title = f"Call about {phrases[0]}" if phrases else ""
        return cap_title(title or _ivr_title(ivr_path) or "Call")


def _ivr_title(ivr_path: list[str] | None) -> str:
    if not ivr_path:
        return ""
    return re.sub(r"[_\-]+", " ", ivr_path[-1]).strip()
