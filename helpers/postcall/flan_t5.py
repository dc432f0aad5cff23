"""Flan-T5 summaries on CPU: CTranslate2 (int8, preferred) or transformers + torch.

Two backends share the prompts, chunking and title logic in :class:`Seq2SeqSummarizer`:
:class:`Ct2Summarizer` (CTranslate2, int8; several times faster on CPU) for a directory
converted by :func:`helpers.postcall.summary_models.convert_checkpoint` / ``audiosocket
models convert``, and :class:`T5Summarizer` (transformers + torch) for a plain checkpoint.
transformers 5 has no ``summarization`` pipeline, so the torch backend drives
``model.generate`` itself. Long transcripts are summarised map-reduce style: chunks that fit
the encoder's input limit are summarised one by one, then the joined chunk summaries are
summarised again. Blocking, like every summariser.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import structlog

from helpers.ai import AiSlots
from helpers.postcall.summarize import (
    EMPTY_TEXT,
    EMPTY_TITLE,
    ExtractiveSummarizer,
    Summary,
    cap_title,
    clean_transcript,
    split_sentences,
    title_from_text,
    trim_sentences,
)

__all__ = [
    "CT2_SUFFIX", "Ct2Summarizer", "Seq2SeqSummarizer", "T5Summarizer", "is_ct2",
    "strip_ct2_suffix",
]

log = structlog.get_logger("helpers.postcall.summarize")

#: What a CTranslate2 model directory holds (and a transformers checkpoint never does).
CT2_WEIGHTS = "model.bin"
#: Suffix of the converted sibling of a checkpoint dir (``flan-t5-small`` -> ``flan-t5-small-ct2``).
CT2_SUFFIX = "-ct2"


def is_ct2(path: Path) -> bool:
    """CTranslate2's layout: ``model.bin`` (its ``config.json`` is not a transformers one)."""
    return (path / CT2_WEIGHTS).is_file()


def strip_ct2_suffix(name: str) -> str:
    """A converted model's name without the ``-ct2`` suffix (the checkpoint it came from)."""
    return name[: -len(CT2_SUFFIX)] if name.endswith(CT2_SUFFIX) else name


def _default_threads() -> int:
    # Modest by default: the STT and TTS engines share these cores with us.
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class Seq2SeqSummarizer:
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
        body = clean_transcript(transcript)
        if not body:
            return Summary(EMPTY_TITLE, EMPTY_TEXT, self.method, self.model_name)
        context = f"(menu path: {' > '.join(ivr_path)}) " if ivr_path else ""
        text = trim_sentences(self._summarise_text(body, context))
        if not text:
            # A model that produced nothing usable: say so in the method, don't pretend.
            log.warning("flan-t5 produced an empty summary; using extractive",
                        model=self.model_name)
            return ExtractiveSummarizer().summarize(transcript, ivr_path)
        # Title from the summary: a short input (cheap), and title and text then agree.
        title = cap_title(self._generate(self.title_prompt + text, self.title_tokens))
        if not title:
            title = title_from_text(text)
        return Summary(title, text, self.method, self.model_name)


class T5Summarizer(Seq2SeqSummarizer):
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


class Ct2Summarizer(Seq2SeqSummarizer):
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
        if not is_ct2(model_dir):
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
        base = name or strip_ct2_suffix(model_dir.absolute().name)
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
