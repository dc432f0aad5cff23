"""Titles that read: the reason for the call as a short phrase, without a model.

Used by the extractive summariser (Flan-T5 writes its own titles where weights exist).
Rule-based on purpose: deterministic, instant, no dependencies, and good enough for the
way callers state their business. Two steps:

1. **Find the reason sentence.** Callers say why they call in stock phrases: "I'm calling
   about/because/to ...", "I need to ...", "I'd like to ...", "my X is/has ...", "problem
   with ...", "I haven't received ...", "could you ...". Each cue has a tier (explicit
   "calling about" beats "I need"); the earliest sentence of the best tier wins. Agent
   lines ("how can I help", "can I have your account number") and greetings are skipped.
2. **Compress it** into a noun phrase or short clause: drop fillers and possessives
   ("my", "your"), turn "I want to cancel" into "Cancel ...", "my internet has been down"
   into "Internet down", cut at the first clause boundary (comma, "and I", "but", "so"),
   drop a dangling stop word at the end, capitalise the first letter, and cut to 50
   characters on a word boundary.

Without a cue the best-scored sentence is compressed the same way; a title is never a
comma-joined keyword list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["compress", "fallback_title", "find_reason", "is_small_talk", "reason_title"]

TITLE_MAX_CHARS = 50

# Fillers that carry nothing in a title; removed as whole words ("I'd like to" keeps its
# "like": the cue has been matched before this runs, but "would like" stays readable).
_FILLERS = re.compile(
    r"\b(?:um+|uh+|erm|hmm+|(?<!'d )(?<!would )like|just|actually|basically|really|"
    r"kind of|sort of|you know|please|so|well|yeah|yes|okay|ok|oh|still|also|currently|"
    r"now|again|very)\b[,]?\s*",
    re.I,
)
_POSSESSIVE = re.compile(r"\b(?:my|our|your)\s+", re.I)
_ARTICLE = re.compile(r"\b(?:the|a|an)\s+(?=\w)", re.I)  # headline style
_GREETING = re.compile(
    r"^(?:(?:hi|hello|hey|yes|yeah|yep|okay|ok|so|um+|uh+|well|good (?:morning|afternoon|"
    r"evening))(?: there)?[,.!]?\s+)+",
    re.I,
)

# Sentences that are the agent, an IVR prompt or small talk, never the caller's reason.
_SKIP = re.compile(
    r"how (?:can|may) (?:i|we) help|thank(?:s| you) for (?:calling|reporting|holding)|"
    r"can i have your|may i have|could i have your|can you confirm your|what is (?:the|your)|"
    r"anything else|let me (?:check|see|look)|\bi'?m (?:very |so |really )?sorry\b|"
    r"\bi apologi[sz]e|is it working|\bdid you get\b|under what name|would .* work\b|"
    r"can you hear",
    re.I,
)

# Subjects of "my X is ..." that are identification, not a reason ("my name is Anna").
_ID_SUBJECTS = frozenset(
    "name number email e-mail address phone zip postcode birthday account number "
    "date of birth".split()
)

_SUBJECT_BREAK = re.compile(r"\b(?:because|and|but|so|which|if|when|i|we|you|it)\b")

_AUX_AFTER_SUBJECT = re.compile(
    r"^(?P<subj>[\w' -]{2,40}?)\s+(?:has been|have been|had been|'s been|is|are|was|were|"
    r"has|have)\s+(?!not\b|n't)(?P<rest>.+)$",
    re.I,
)

_NP = r"(?P<rest>.+)"
_I = r"\b(?:i|we)\s?"  # "\s?": "I'd like" has no space before "'d"
_SUBJ_VERB = (
    r"(?:is|are|was|were|has|have|had|isn't|aren't|wasn't|hasn't|haven't|keeps|kept|"
    r"won't|doesn't|didn't|did not|does not|never|stopped|broke|went|got|arrived|"
    r"seems|shows|says)"
)

# (tier, pattern, builder): lower tier wins. The builder gets the match and returns the raw
# phrase to compress.
Cue = tuple[int, re.Pattern[str], Callable[[re.Match[str]], str]]


def _rest(m: re.Match[str]) -> str:
    return m.group("rest")


def _noun_rest(m: re.Match[str]) -> str:
    """"I have a question about my autopay" -> "question about my autopay"."""
    return f"{m.group('noun')} {m.group('prep')} {m.group('rest')}"


def _not_received(m: re.Match[str]) -> str:
    return f"{m.group('rest')} not received"


def _wrong(m: re.Match[str]) -> str:
    return f"wrong {m.group('rest')} {m.group('verb')}"


def _whole(m: re.Match[str]) -> str:
    return m.group(0)


_CUES: list[Cue] = [
    (0, re.compile(r"\b(?:the )?reason (?:i'?m|i am|for) (?:calling|my call|the call) is\s+"
                   r"(?:that\s+|because\s+|about\s+|to\s+)?" + _NP, re.I), _rest),
    (0, re.compile(r"\bcalling (?:you )?(?:about|regarding|because|in regards? to|"
                   r"with regards? to|to|for)\s+" + _NP, re.I), _rest),
    (1, re.compile(r"\b(?P<noun>question|problem|issue|query|complaint|trouble)\s+"
                   r"(?P<prep>about|with|regarding|on)\s+" + _NP, re.I), _noun_rest),
    (1, re.compile(_I + r"(?:need|want|would like|'d like|wanted|was hoping|were hoping|"
                   r"am trying|'m trying|have to|need you|want you)\s+to\s+" + _NP, re.I),
     _rest),
    (1, re.compile(r"\b(?:is it possible|would it be possible) to\s+" + _NP, re.I), _rest),
    (1, re.compile(_I + r"(?:still |yet )?(?:haven't|have not|never|didn't|did not) "
                   r"(?:yet )?(?:received|got|gotten|get|receive)\s+" + _NP, re.I),
     _not_received),
    (1, re.compile(_I + r"(?:was|were|have been|'ve been|got) (?P<rest>(?:charged|billed|"
                   r"overcharged|double[- ]charged|cut off|disconnected)\b.*)", re.I), _rest),
    (1, re.compile(_I + r"(?P<rest>(?:tried|attempted) to .+)", re.I), _rest),
    (1, re.compile(r"\b(?P<verb>received|got|sent|delivered)\s+(?:me\s+|us\s+)?(?:the|a)\s+"
                   r"wrong\s+(?P<rest>[\w-]+)", re.I), _wrong),
    (2, re.compile(_I + r"(?:need|want|would like|'d like)\s+(?:a|an|the|some|my|"
                   r"our)\s+" + _NP, re.I), _rest),
    (2, re.compile(r"\b(?:my|our|the)\s+(?P<subj>[\w' -]{2,40}?)\s+" + _SUBJ_VERB +
                   r"\b.*", re.I), _whole),
    (2, re.compile(r"\b(?:[A-Z][a-z]+|he|she) (?:is|was|has been|'s) (?:off |feeling )?"
                   r"(?:sick|ill|unwell|not well|absent)\b.*"), _whole),
    (2, re.compile(_I + r"(?:think |just )?(?:have |'ve )?(?P<rest>(?:lost|broke|damaged|"
                   r"dropped|cracked)\b.*)", re.I), _rest),
    (3, re.compile(r"\b(?:could|can|would|will) you (?:please )?" + _NP, re.I), _rest),
    (3, re.compile(_I + r"(?:think |just )?(?:have |'ve )?(?P<rest>(?:received|ordered|"
                   r"returned|moved|paid|bought|booked|had)\b.*)", re.I), _rest),
    (3, re.compile(r"\bthere(?:'s| is| are) (?P<rest>.+)", re.I), _rest),
]

# Where a clause ends: punctuation, a conjunction starting a new clause ("and I", "but"),
# a relative clause ("the quote you sent me") or a question tagged on ("can you ...").
_CLAUSE_CUT = re.compile(
    r"\s*(?:[,;:.!?]|\s(?:and|but|so|because|cause|which|who|if|when|as|though|although|"
    r"then|or)\s+(?:i|i'm|i've|we|we're|it|it's|they|he|she|you|there|the|that|this|"
    r"nothing|nobody|no one)\b|\s(?:but|so|because|which|though|although)\b|"
    r"\s(?:can you|could you|and can|and could)\b|"
    r"\s(?:it|they|he|she) (?:says|said|shows|keeps|won't|doesn't|didn't|can't)\b|"
    r"\s(?:that |which )?(?:you|they) (?:sent|gave|quoted|told|said|promised|mentioned)\b)",
    re.I,
)
# Where a sentence splits into clauses before the cue search ("I received my order today
# but the lamp arrived damaged": the second clause is the reason).
_CLAUSE_SPLIT = re.compile(
    r"[,;]\s+|\s+but\s+|\s+and\s+(?=(?:i|we|it|the|my|our|nobody|no one)\b)", re.I
)
_TRAILING_STOP = re.compile(
    r"(?:\s+(?:a|an|the|to|for|of|and|or|with|on|in|at|by|from|that|my|our|your|is|are|was|"
    r"it|its|me|us|i|this|some|about|so|but|if|as|like|since|what|when|which|who))+$",
    re.I,
)
_LEADING_PRONOUN = re.compile(r"^(?:i|we|i'm|we're|i've|we've|i am|we are)\s+", re.I)
_LEADING_ARTICLE = re.compile(
    r"^(?:the|a|an|that|this|it's|its|it is|to|because|about|regarding)\s+", re.I
)
# "let you know (that) your prescription is ready" -> "your prescription is ready";
# "know the options to renew" -> "the options to renew".
_LEADING_TELL = re.compile(
    r"^(?:let (?:you|me|us) know|tell (?:you|me|us)|inform you|know|find out|ask|learn|hear)"
    r"(?:\s+(?:that|about|if|whether))?\s+",
    re.I,
)
_VERB_OBJECT_ME = re.compile(r"^(\w+) (?:me|us) (?=(?:a|an|the|some|\w+)\b)", re.I)
_NEGATIONS = (
    (re.compile(r"\b(?:isn't|is not|aren't|are not)\b", re.I), "not"),
    (re.compile(r"\b(?:hasn't|has not|haven't|have not)\s+(?:been\s+)?", re.I), "not "),
)


def _cut_words(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut on a word boundary."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1]
    space = cut.rfind(" ")
    return cut[:space] if space > 0 else text[:limit]


def compress(phrase: str, limit: int = TITLE_MAX_CHARS) -> str:
    """Squeeze a clause into a title: no fillers, possessives or pronoun start, the first
    clause only, no dangling stop word, first letter capitalised, ``limit`` chars at most.
    Returns "" when nothing worth a title is left."""
    t = re.sub(r"\s+", " ", phrase).strip(" \"'`")
    t = _GREETING.sub("", t)
    t = _LEADING_TELL.sub("", t)  # before the fillers take "you know" out of "let you know"
    t = _FILLERS.sub("", t)
    t = re.sub(r"\s+", " ", t).strip()
    for _ in range(2):  # "because I was charged": the cue's rest may itself start with "I"
        t = _LEADING_PRONOUN.sub("", t)
        t = _LEADING_TELL.sub("", t)
        t = _LEADING_ARTICLE.sub("", t)
        m = re.match(r"(?:was|were|have been|'ve been|had)\s+(.+)$", t, re.I)
        if m:
            t = m.group(1)
    # Cut at the first clause boundary that leaves at least two words before it.
    for m in _CLAUSE_CUT.finditer(t):
        if len(t[: m.start()].split()) >= 2:
            t = t[: m.start()]
            break
    # Unpunctuated speech repeats itself: stop where the opening words come round again.
    words = t.split(" ")
    if len(words) >= 4:
        again = t.lower().find(" " + " ".join(words[:2]).lower() + " ", 1)
        if again > 0:
            t = t[:again]
    t = _POSSESSIVE.sub("", t)
    t = _VERB_OBJECT_ME.sub(r"\1 ", t)  # "send me a new card" -> "send a new card"
    t = _ARTICLE.sub("", t)
    m = _AUX_AFTER_SUBJECT.match(t)
    if m and len(m.group("subj").split()) <= 4:
        t = f"{m.group('subj')} {m.group('rest')}"  # "internet has been down" -> "internet down"
    for pattern, repl in _NEGATIONS:
        t = pattern.sub(repl, t)
    t = re.sub(r"\s+", " ", t).strip(" ,;:-.?!")
    t = _cut_words(t, limit)
    t = _TRAILING_STOP.sub("", t).strip(" ,;:-.?!")
    if len(t) < 3 or not re.search(r"[A-Za-z]{3}", t):
        return ""
    return t[:1].upper() + t[1:]


def _bad_subject(m: re.Match[str]) -> bool:
    """ "my name is ..." (identification), or a "subject" that runs over a clause boundary
    ("the tickets because the show was ...")."""
    subj = m.groupdict().get("subj")
    if subj is None:
        return False
    subj = subj.lower().strip()
    return subj in _ID_SUBJECTS or bool(_SUBJECT_BREAK.search(subj))


def find_reason(sentences: Sequence[str],
                limit: int = TITLE_MAX_CHARS) -> tuple[int, str] | None:
    """The sentence that states why the caller called, as (index, title), or None.

    The earliest sentence with a cue of the best tier wins ("I'm calling about" beats "I
    need", which beats "can you"); agent lines and greetings are never it."""
    best: tuple[int, int, str] | None = None  # (tier, sentence index, title)
    for i, sentence in enumerate(sentences):
        if _SKIP.search(sentence):
            continue
        for tier, pattern, build in _CUES:
            if best is not None and tier >= best[0]:
                break  # cues are sorted by tier: nothing better in this sentence
            title = _first_match(pattern, build, sentence, limit)
            if title:
                best = (tier, i, title)
                break
    return None if best is None else (best[1], best[2])


def is_small_talk(sentence: str) -> bool:
    """An agent line, greeting or sign-off: never the point of the call."""
    if _SKIP.search(sentence):
        return True
    rest = _GREETING.sub("", sentence.strip() + " ").strip(" ,.!?")
    return not rest or bool(re.fullmatch(
        r"(?:(?:this is|it's|my name is|speaking|calling|thank you|thanks|bye|goodbye|"
        r"great|perfect|sure|of course|no problem)\b[^.?!]*|[^.?!]*\bspeaking)", rest, re.I))


def reason_title(sentences: Sequence[str], ranked: Sequence[int] = (),
                 limit: int = TITLE_MAX_CHARS) -> str:
    """A title naming the reason for the call, or "" when none can be made.

    ``sentences`` are the call's sentences in order; ``ranked`` their indices best first
    (the extractive scores), used when no sentence states a reason in a recognised way:
    then the first that compresses to two words or more is the title.
    """
    found = find_reason(sentences, limit)
    return found[1] if found is not None else fallback_title(sentences, ranked, limit)


def fallback_title(sentences: Sequence[str], ranked: Sequence[int] = (),
                   limit: int = TITLE_MAX_CHARS) -> str:
    """No sentence states a reason: the best-ranked one that compresses to two words or
    more, or "" if none does."""
    for i in list(ranked) + list(range(len(sentences))):
        if _SKIP.search(sentences[i]):
            continue
        for clause in _CLAUSE_SPLIT.split(sentences[i]):
            title = compress(_GREETING.sub("", clause.strip()), limit)
            if len(title.split()) >= 2:
                return title
    return ""


def _first_match(pattern: re.Pattern[str], build: Callable[[re.Match[str]], str],
                 sentence: str, limit: int) -> str:
    """The title from the first clause of ``sentence`` where ``pattern`` makes one."""
    for clause in _CLAUSE_SPLIT.split(sentence):
        # Without its full stop: builders append words ("my refund" + " not received").
        for m in pattern.finditer(clause.rstrip(" .!?")):
            if _bad_subject(m):
                continue
            title = compress(build(m), limit)
            if len(title.split()) >= 2:
                return title
    return ""
