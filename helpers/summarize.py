"""Call summaries: Flan-T5 on CPU when a checkpoint is installed, else a deterministic
extractive summariser that needs nothing.

(Over 600 lines on purpose: the three summarisers share one contract, prompts, chunking and
title rules, and splitting them would scatter that contract over several modules.)

Two Flan-T5 backends share the prompts, chunking and title logic: :class:`Ct2Summarizer`
(CTranslate2, int8; preferred, several times faster on CPU) for a directory converted by
:func:`convert_checkpoint` / ``audiosocket models convert``, and :class:`T5Summarizer`
(transformers + torch) for a plain checkpoint. transformers 5 has no ``summarization``
pipeline, so the torch backend drives ``model.generate`` itself. Long
transcripts are summarised map-reduce style: chunks that fit the encoder's input limit are
summarised one by one, then the joined chunk summaries are summarised again.

Every public call is blocking (inference takes hundreds of ms): run it in a thread or a
worker process, never on the event loop.

Why this module is ~800 lines: the summary contract (prompts, chunking, title rules) is
shared by three backends (extractive, torch, CTranslate2) plus checkpoint lookup and
conversion; splitting them would scatter one contract over several files.
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from helpers.ai import AiSlots, ModelCache
from helpers.titles import fallback_title, find_reason, is_small_talk

__all__ = [
    "CT2_SUFFIX",
    "TITLE_MAX_CHARS",
    "Ct2Summarizer",
    "ExtractiveSummarizer",
    "Summarizer",
    "Summary",
    "T5Summarizer",
    "cap_title",
    "convert_checkpoint",
    "fetch_model",
    "load_summarizer",
    "split_sentences",
]

log = structlog.get_logger(__name__)

TITLE_MAX_CHARS = 50
MAX_SENTENCES = 3
EMPTY_TITLE = "No speech"
EMPTY_TEXT = "No speech was transcribed on this call."

_REPO_ROOT = Path(__file__).resolve().parents[1]


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

_SENT_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)")
_SPEAKER_RE = re.compile(r"^\s*(?:\[[^\]]{0,20}\]\s*)?[A-Za-z][\w .'-]{0,20}:\s+", re.M)
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+")
_LONG_RUN_WORDS = 25  # unpunctuated speech is cut into pseudo-sentences of this many words


def _clean(transcript: str) -> str:
    """Drop speaker labels ("Caller: ...") and collapse whitespace."""
    text = _SPEAKER_RE.sub("", transcript)
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Split on sentence punctuation; cut long unpunctuated runs every 25 words.

    Speech-to-text output is sometimes one endless unpunctuated line; without the cut it
    would be a single "sentence" and neither summariser could choose anything.
    """
    out: list[str] = []
    for part in _SENT_RE.split(text.strip()):
        words = part.split()
        if not words:
            continue
        for i in range(0, len(words), _LONG_RUN_WORDS):
            out.append(" ".join(words[i : i + _LONG_RUN_WORDS]))
    return out


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


def _trim_sentences(text: str, limit: int = MAX_SENTENCES) -> str:
    sentences = split_sentences(re.sub(r"\s+", " ", text).strip())
    return " ".join(sentences[:limit]).strip()


def _title_from_text(text: str) -> str:
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
    compressed to a phrase (:mod:`helpers.titles`); failing that, "Call about"
    the most frequent content-word phrase.
    """

    method = "extractive"
    model: str | None = None

    def summarize(self, transcript: str, ivr_path: list[str] | None = None) -> Summary:
        """Summarise one call by sentence extraction."""
        text = _clean(transcript)
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
            return Summary(title, _trim_sentences(text, 1), self.method, None)
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
        # compresses into one (helpers.titles).
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


# --------------------------------------------------------------------------- Flan-T5

#: What a CTranslate2 model directory holds (and a transformers checkpoint never does).
_CT2_WEIGHTS = "model.bin"
#: Suffix of the converted sibling of a checkpoint dir (``flan-t5-small`` -> ``flan-t5-small-ct2``).
CT2_SUFFIX = "-ct2"
#: Tokenizer files copied next to a converted model so it loads on its own. ``config.json``
#: is deliberately absent: the converter writes CTranslate2's own config under that name.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
    "added_tokens.json", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
)


def _default_threads() -> int:
    # Modest by default: the STT and TTS engines share these cores with us.
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class _Seq2SeqSummarizer:
    """What both Flan-T5 backends share: prompts, map-reduce chunking, the title pass and
    the :class:`Summary` contract.

    A backend calls ``super().__init__`` with a transformers tokenizer (both backends count
    and cut tokens with the checkpoint's own tokenizer, so chunking is identical) and
    implements :meth:`_infer`. :meth:`summarize` is thread-safe: one inference at a time per
    instance, and at most the shared AI slots across the process.
    """

    method = "flan-t5"
    #: Where the weights were loaded from (a directory, or a hub name from the HF cache).
    checkpoint: str
    threads: int

    #: Decoding is greedy with a no-repeat constraint: beams multiply CPU time for little
    #: gain on 1-3 sentence outputs, and small T5s loop without the constraint.
    summary_tokens = 96
    title_tokens = 20
    #: At least this many tokens per output (an immediate EOS would be an empty summary).
    #: The benchmark raises it to the budget so every backend decodes the same length.
    min_new_tokens = 2
    no_repeat_ngram_size = 3

    summary_prompt = "Summarize this phone call: "
    title_prompt = "Write a short title for this phone call: "

    def __init__(self, tokenizer: Any, model_name: str, max_input_tokens: int,
                 ai: AiSlots | None) -> None:
        # The server passes the process's AI slots (shared with Whisper); None (a script,
        # a test) gives this summariser slots of its own.
        self.ai = ai if ai is not None else AiSlots()
        self._tokenizer: Any = tokenizer
        self.model_name = model_name
        self.max_input_tokens = max_input_tokens
        self._lock = threading.Lock()
        #: How many inference calls ran (chunking makes it more than 2 per summary).
        self.generate_calls = 0
        # Never emit padding or <unk>: they decode to nothing and waste the output budget.
        self._suppress: list[int] = sorted(
            {i for i in (tokenizer.pad_token_id, tokenizer.unk_token_id) if i is not None}
            - {tokenizer.eos_token_id}
        )

    # -- backend hook

    def _infer(self, input_ids: list[int], max_new_tokens: int, min_new_tokens: int) -> list[int]:
        """Greedy-decode ``input_ids`` (already truncated, with EOS); return output ids."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Run one tiny inference so the first real summary does not pay the first-call
        cost (weights paged in from the mmap'd file, kernels and buffers set up): 3 s on a
        quiet machine with torch, once 57 s under load. :func:`load_summarizer` calls it,
        and the server loads the summariser at start-up."""
        ids = self._tokenizer(self.summary_prompt + "hello", truncation=True,
                              max_length=self.max_input_tokens)["input_ids"]
        with self._lock, self.ai:
            self._infer(ids, 2, 1)

    # -- token accounting

    def _count(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _chunks(self, text: str, budget: int) -> list[str]:
        """Pack whole sentences into chunks of at most ``budget`` tokens; a sentence that
        alone exceeds the budget is cut on token boundaries."""
        sentences = split_sentences(text)
        if not sentences:
            return []
        ids_per_sentence = self._tokenizer(sentences, add_special_tokens=False)["input_ids"]
        chunks: list[str] = []
        cur: list[str] = []
        cur_len = 0
        for sentence, ids in zip(sentences, ids_per_sentence, strict=True):
            n = len(ids)
            if n > budget:
                if cur:
                    chunks.append(" ".join(cur))
                    cur, cur_len = [], 0
                for i in range(0, n, budget):
                    chunks.append(
                        self._tokenizer.decode(ids[i : i + budget], skip_special_tokens=True)
                    )
                continue
            if cur and cur_len + n > budget:
                chunks.append(" ".join(cur))
                cur, cur_len = [], 0
            cur.append(sentence)
            cur_len += n
        if cur:
            chunks.append(" ".join(cur))
        return chunks

    # -- generation

    def _generate(self, prompt: str, max_new_tokens: int) -> str:
        ids: list[int] = self._tokenizer(
            prompt, truncation=True, max_length=self.max_input_tokens
        )["input_ids"]
        min_tokens = min(self.min_new_tokens, max_new_tokens)
        # The instance lock serialises this model; ``self.ai`` is the process-wide cap on
        # concurrent inference shared with Whisper (helpers.ai).
        with self._lock, self.ai:
            self.generate_calls += 1
            out = self._infer(ids, max_new_tokens, min_tokens)
        text: str = self._tokenizer.decode(out, skip_special_tokens=True)
        return text.strip()

    def _summarise_text(self, body: str, context: str, depth: int = 0) -> str:
        prefix = f"{self.summary_prompt}{context}"
        budget = max(16, self.max_input_tokens - self._count(prefix) - 2)
        chunks = self._chunks(body, budget)
        if len(chunks) <= 1 or depth >= 3:
            # depth cap: three map-reduce rounds cover ~budget^... far beyond any call;
            # past it the tokenizer's truncation keeps us inside the model's limit.
            return self._generate(prefix + (chunks[0] if chunks else body),
                                  self.summary_tokens)
        partials = [
            self._generate(prefix + chunk, self.summary_tokens) for chunk in chunks
        ]
        joined = " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in partials if p)
        return self._summarise_text(joined or body[:2000], context, depth + 1)

    def summarize(self, transcript: str, ivr_path: list[str] | None = None) -> Summary:
        """Summarise one call with the model: text first, then a title from that text."""
        body = _clean(transcript)
        if not body:
            return Summary(EMPTY_TITLE, EMPTY_TEXT, self.method, self.model_name)
        context = f"(menu path: {' > '.join(ivr_path)}) " if ivr_path else ""
        text = _trim_sentences(self._summarise_text(body, context))
        if not text:
            # A model that produced nothing usable: say so in the method, don't pretend.
            log.warning("flan-t5 produced an empty summary; using extractive",
                        model=self.model_name)
            return ExtractiveSummarizer().summarize(transcript, ivr_path)
        # Title from the summary: a short input (cheap), and title and text then agree.
        title = cap_title(self._generate(self.title_prompt + text, self.title_tokens))
        if not title:
            title = _title_from_text(text)
        return Summary(title, text, self.method, self.model_name)


class T5Summarizer(_Seq2SeqSummarizer):
    """Flan-T5 (or any seq2seq checkpoint) on CPU through transformers + torch.

    transformers 5 has no summarization pipeline, so this drives ``model.generate``
    directly. The model and tokenizer are loaded once, here; nothing is reloaded per call.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        max_input_tokens: int = 512,
        device: str = "cpu",
        threads: int | None = None,
        local_files_only: bool = True,
        name: str | None = None,
        ai: AiSlots | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.threads = threads or _default_threads()
        # Process-wide in torch; Whisper (CTranslate2) keeps its own pool, so only torch
        # work in this process is affected.
        torch.set_num_threads(self.threads)
        self.checkpoint = str(checkpoint)
        self.device = device
        self._torch = torch
        tokenizer = AutoTokenizer.from_pretrained(
            str(checkpoint), local_files_only=local_files_only
        )
        super().__init__(
            tokenizer,
            name or (Path(checkpoint).name if Path(checkpoint).is_dir() else str(checkpoint)),
            max_input_tokens, ai,
        )
        self._model: Any = AutoModelForSeq2SeqLM.from_pretrained(
            str(checkpoint), local_files_only=local_files_only
        )
        self._model.to(device)
        self._model.eval()

    def _infer(self, input_ids: list[int], max_new_tokens: int, min_new_tokens: int) -> list[int]:
        torch = self._torch
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min_new_tokens,
            "num_beams": 1,
            "do_sample": False,
            "use_cache": True,  # the default for T5, stated: without it decoding is O(n^2)
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }
        if self._suppress:
            kwargs["suppress_tokens"] = self._suppress
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs
            )
        result: list[int] = out[0].tolist()
        return result


class Ct2Summarizer(_Seq2SeqSummarizer):
    """Flan-T5 converted to CTranslate2 (see :func:`convert_checkpoint`), on CPU.

    Same prompts, chunking and contract as :class:`T5Summarizer`; decoding is CTranslate2's
    greedy search, which with int8 weights ran several times faster than torch on the same
    model (docs/BENCHMARKS.md). ``model`` in the summaries names the backend, e.g.
    ``"google/flan-t5-small (ctranslate2 int8)"``.

    The tokenizer is read from ``tokenizer_dir`` (default: ``model_dir``, where
    :func:`convert_checkpoint` copies it) with transformers, so ``transformers`` must be
    installed; torch is not needed at run time.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        tokenizer_dir: str | Path | None = None,
        compute_type: str = "int8",
        threads: int | None = None,
        max_input_tokens: int = 512,
        name: str | None = None,
        ai: AiSlots | None = None,
    ) -> None:
        import ctranslate2
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        if not _is_ct2(model_dir):
            raise ValueError(f"{model_dir} is not a CTranslate2 model directory (no model.bin)")
        self.threads = threads or _default_threads()
        self.checkpoint = str(model_dir)
        # inter_threads=1: calls are serialised per instance anyway (one model replica).
        self._translator: Any = ctranslate2.Translator(
            str(model_dir), device="cpu", compute_type=compute_type,
            inter_threads=1, intra_threads=self.threads,
        )
        #: What CTranslate2 actually runs: it falls back when the CPU lacks int8 support.
        self.compute_type: str = self._translator.compute_type
        tokenizer = AutoTokenizer.from_pretrained(
            str(tokenizer_dir or model_dir), local_files_only=True
        )
        base = name or _strip_ct2_suffix(model_dir.absolute().name)
        super().__init__(tokenizer, f"{base} (ctranslate2 {self.compute_type})",
                         max_input_tokens, ai)
        self._suppress_sequences = [
            [tok] for tok in tokenizer.convert_ids_to_tokens(self._suppress)
        ] or None

    def _infer(self, input_ids: list[int], max_new_tokens: int, min_new_tokens: int) -> list[int]:
        # CTranslate2 takes token strings; the source keeps T5's trailing </s>, and the
        # decoder start token comes from the converted model's config.
        source = self._tokenizer.convert_ids_to_tokens(input_ids)
        results = self._translator.translate_batch(
            [source],
            beam_size=1,
            max_decoding_length=max_new_tokens,
            min_decoding_length=min_new_tokens,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            suppress_sequences=self._suppress_sequences,
            max_input_length=self.max_input_tokens,
        )
        ids: list[int] = self._tokenizer.convert_tokens_to_ids(results[0].hypotheses[0])
        return ids


# --------------------------------------------------------------------------- loading

def _log_fallback_once(reason: str, checkpoint: str | None, seen: ModelCache) -> None:
    if not seen.first_time(("summary fallback",)):
        return
    log.warning("no Flan-T5 checkpoint installed; using extractive summaries",
                reason=reason, checkpoint=checkpoint)


def _log_choice_once(backend: str, summarizer: _Seq2SeqSummarizer, seen: ModelCache) -> None:
    """One info line per process and model: which backend serves summaries, from where."""
    if not seen.first_time(("summary backend", backend, summarizer.checkpoint)):
        return
    log.info("summary backend chosen", backend=backend, model=summarizer.model_name,
             path=summarizer.checkpoint)


def _default_search_dirs() -> list[Path]:
    dirs = [_REPO_ROOT / "models"]
    data_dir = os.environ.get("AUDIOSOCKET_DATA_DIR")
    if data_dir:
        dirs.insert(0, Path(data_dir) / "models")
    return dirs


def _is_ct2(path: Path) -> bool:
    """CTranslate2's layout: ``model.bin`` (its ``config.json`` is not a transformers one)."""
    return (path / _CT2_WEIGHTS).is_file()


def _is_checkpoint(path: Path) -> bool:
    """A transformers checkpoint: ``config.json`` and not a CTranslate2 dir."""
    return (path / "config.json").is_file() and not _is_ct2(path)


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "spiece.model"))


def _ct2_sibling(path: Path) -> Path | None:
    p = path.absolute()  # not resolve(): the sibling sits next to the configured name
    return p.with_name(p.name + CT2_SUFFIX) if p.name else None


def _strip_ct2_suffix(name: str) -> str:
    return name[: -len(CT2_SUFFIX)] if name.endswith(CT2_SUFFIX) else name


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else is meant as a filesystem path."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
            or Path(name).is_absolute())


@dataclass(frozen=True)
class _Candidate:
    backend: str  # "ctranslate2" or "torch"
    path: Path
    label: str | None  # the name summaries report; None: the directory's name
    tokenizer_dir: Path | None = None


def _candidates_at(path: Path, label: str | None) -> list[_Candidate]:
    """What can serve ``path``: itself if it is a CTranslate2 dir; else its ``-ct2``
    sibling (if converted) and then itself as a transformers checkpoint."""
    if _is_ct2(path):
        return [_Candidate("ctranslate2", path, label)]
    out: list[_Candidate] = []
    sibling = _ct2_sibling(path)
    if sibling is not None and _is_ct2(sibling):
        # A sibling converted by hand may lack the tokenizer: read it from the source.
        tok = path if not _has_tokenizer(sibling) and _has_tokenizer(path) else None
        out.append(_Candidate("ctranslate2", sibling, label or path.absolute().name, tok))
    if _is_checkpoint(path):
        out.append(_Candidate("torch", path, label))
    return out


def _find_candidates(name: str, as_path: bool,
                     search_dirs: Sequence[Path] | None) -> list[_Candidate]:
    """Every local directory that can serve ``name``, CTranslate2 ones first."""
    found: list[_Candidate] = []
    if as_path:
        found += _candidates_at(Path(name).expanduser(), None)
    else:
        base = name.rsplit("/", 1)[-1]
        for d in search_dirs if search_dirs is not None else _default_search_dirs():
            for sub in (d / name, d / name.replace("/", "--"), d / base):
                found += _candidates_at(sub, name)
        found += _candidates_at(Path(name), None)  # a relative dir that looks like a hub id
    unique: dict[tuple[str, Path], _Candidate] = {}
    for c in found:
        unique.setdefault((c.backend, c.path.absolute()), c)
    # Stable sort: CTranslate2 wins wherever it is; search-dir order breaks ties.
    return sorted(unique.values(), key=lambda c: c.backend != "ctranslate2")


def load_summarizer(
    checkpoint: str | Path | None,
    *,
    search_dirs: Sequence[Path] | None = None,
    threads: int | None = None,
    ai: AiSlots | None = None,
    models: ModelCache | None = None,
) -> Summarizer:
    """The best summariser available offline for ``checkpoint``.

    Where it looks:

    * an existing directory: loaded as is (a CTranslate2 dir, i.e. one with ``model.bin``, or
      a transformers checkpoint with ``config.json``);
    * a hub name (``google/flan-t5-small``): first looked for under the ``models/`` dirs
      (``$AUDIOSOCKET_DATA_DIR/models``, then the repo's ``models/``) as ``models/<org>/<name>``,
      ``models/<org>--<name>`` or ``models/<name>``; then in the Hugging Face cache with
      ``local_files_only=True`` (these machines cannot download).

    Which backend: a CTranslate2 model is preferred, either the directory itself or the
    ``<dir>-ct2`` sibling written by ``audiosocket models convert`` (:class:`Ct2Summarizer`,
    several times faster on CPU); else transformers + torch (:class:`T5Summarizer`). The
    choice is logged once ("summary backend chosen").

    ``None``, a missing path, or a name found nowhere (or that fails to load) gives an
    :class:`ExtractiveSummarizer`, after logging "no Flan-T5 checkpoint installed; using
    extractive summaries" once per process.

    The server passes the process's AI slots (``ai``) and model cache (``models``, which
    also remembers what was logged); None gives each call its own (a script, a test).
    """
    seen = models if models is not None else ModelCache()
    if checkpoint is None:
        _log_fallback_once("no checkpoint configured", None, seen)
        return ExtractiveSummarizer()
    name = str(checkpoint)
    as_path = isinstance(checkpoint, Path) or _looks_like_path(name)
    for c in _find_candidates(name, as_path, search_dirs):
        loaded: _Seq2SeqSummarizer
        try:
            if c.backend == "ctranslate2":
                loaded = Ct2Summarizer(c.path, tokenizer_dir=c.tokenizer_dir, threads=threads,
                                       name=c.label, ai=ai)
            else:
                loaded = T5Summarizer(c.path, threads=threads, name=c.label, ai=ai)
            loaded.warm_up()  # also proves the model runs before we commit to it
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            # RuntimeError: CTranslate2's "unsupported model"; ImportError: no transformers.
            log.warning("could not load summariser checkpoint", path=str(c.path),
                        backend=c.backend, error=str(exc))
            continue
        _log_choice_once(c.backend, loaded, seen)
        return loaded
    if not as_path:
        try:
            loaded = T5Summarizer(name, threads=threads, local_files_only=True, ai=ai)
            loaded.warm_up()
        except (OSError, ValueError, RuntimeError, ImportError):
            pass  # not in the local Hugging Face cache either
        else:
            _log_choice_once("torch", loaded, seen)
            return loaded
    _log_fallback_once("checkpoint not found locally", name, seen)
    return ExtractiveSummarizer()


# --------------------------------------------------------------------------- models


def convert_checkpoint(
    src: str | Path,
    dst: str | Path | None = None,
    quantization: str = "int8",
    *,
    search_dirs: Sequence[Path] | None = None,
) -> Path:
    """Convert a transformers checkpoint to CTranslate2 in ``dst``; return ``dst``.

    ``src`` is a checkpoint directory or a hub name installed under a ``models/`` dir (as
    :func:`load_summarizer` finds it). ``dst`` defaults to ``<src>-ct2``, the sibling that
    :func:`load_summarizer` prefers. The tokenizer files are copied next to the converted
    weights so the directory is self-contained. Works offline (needs torch + transformers at
    conversion time only). Raises ``RuntimeError`` with a readable message on failure.
    """
    name = str(src)
    as_path = isinstance(src, Path) or _looks_like_path(name)
    sources = [c.path for c in _find_candidates(name, as_path, search_dirs)
               if c.backend == "torch"]
    if not sources:
        raise RuntimeError(f"no transformers checkpoint (a directory with config.json and no "
                           f"model.bin) found for {name!r}")
    src_path = sources[0]
    if dst is None:
        sibling = _ct2_sibling(src_path)
        if sibling is None:
            raise RuntimeError(f"cannot derive an output directory from {src_path}; pass one")
        dst_path = sibling
    else:
        dst_path = Path(dst).expanduser()
    # The converter's force=True deletes dst first: never let that hit the source or an
    # unrelated non-empty directory (e.g. `--dest models`).
    if dst_path.absolute() == src_path.absolute():
        raise RuntimeError("the output directory must differ from the checkpoint")
    if dst_path.is_dir() and any(dst_path.iterdir()) and not _is_ct2(dst_path):
        raise RuntimeError(f"{dst_path} exists and is not a CTranslate2 model; refusing to "
                           f"overwrite it")
    from ctranslate2.converters import TransformersConverter

    try:
        TransformersConverter(str(src_path)).convert(
            str(dst_path), quantization=quantization, force=True
        )
    except Exception as exc:  # the converter raises ValueError, OSError, RuntimeError...
        raise RuntimeError(f"could not convert {src_path} to CTranslate2 "
                           f"({type(exc).__name__}: {exc})") from exc
    for fname in _TOKENIZER_FILES:
        if (src_path / fname).is_file():
            shutil.copy2(src_path / fname, dst_path / fname)
    return dst_path


def fetch_model(name: str, dest: Path) -> Path:
    """Download a hub checkpoint (e.g. ``google/flan-t5-small``) to ``dest/<name>``.

    For machines with internet access; ``load_summarizer(name)`` then finds it when ``dest``
    is a searched ``models/`` dir. Only the files inference needs are fetched (safetensors
    weights, config, tokenizer), not the TF/Flax duplicates. Raises ``RuntimeError`` with a
    clear message when the hub cannot be reached.
    """
    from huggingface_hub import snapshot_download

    target = Path(dest) / name.rsplit("/", 1)[-1]
    target.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(
            repo_id=name,
            local_dir=str(target),
            allow_patterns=["*.json", "*.safetensors", "spiece.model", "*.txt"],
        )
    except Exception as exc:  # the hub raises many types: offline, 404, auth, HTTP errors
        raise RuntimeError(
            f"could not download {name!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{exc}). This machine may be offline: copy the checkpoint directory into "
            f"{target} by other means, or set the summary model to a local path."
        ) from exc
    if not _is_checkpoint(target):
        raise RuntimeError(f"{name!r} downloaded to {target} but has no config.json")
    return target
