"""Build T5 checkpoints with RANDOM weights, offline, for tests and benchmarks.

The tokenizer is a SentencePiece unigram model trained here on a small call-centre corpus and
wrapped as a (tokenizers-backed) ``T5Tokenizer``; the model is a ``T5ForConditionalGeneration``
from a ``T5Config``. Both are ``save_pretrained`` into one directory, so
``AutoTokenizer.from_pretrained(dir)`` / ``AutoModelForSeq2SeqLM.from_pretrained(dir)`` load
them like a real checkpoint. The outputs are gibberish: tests check the contract, not quality.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

_WORDS = """
hello thank you for calling customer support my name is anna how can i help you today
i am calling about my invoice the refund was not processed and i was charged twice for the
same order last month could you check my account number please it is five five two nine
let me look that up for you i can see the duplicate charge on your card i will submit a
refund request now it should arrive within five business days is there anything else
yes i also want to change my delivery address to the new apartment on main street
no problem the address has been updated your next parcel will go there the technician
will visit on tuesday morning between nine and noon the internet connection keeps dropping
every evening we will replace the router free of charge please restart it before the visit
i would like to cancel my subscription and speak to a manager about the late fee billing
payment appointment schedule password reset email phone mobile plan upgrade contract
""".split()


def _corpus(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        k = rng.randint(6, 18)
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(k)).capitalize() + ".")
    return "\n".join(lines)


def build_tokenizer(dest: Path, vocab_size: int = 400, extra_text: str = "") -> object:
    """Train a SentencePiece unigram model and return a ``T5Tokenizer`` built from it.

    ``extra_text`` is added to the training corpus (a benchmark passes its transcript so
    its words become whole pieces, giving real-T5-like token counts).
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        extra = "\n".join([extra_text] * 20) if extra_text else ""
        corpus.write_text(_corpus() + "\n" + extra, encoding="utf-8")
        prefix = str(Path(tmp) / "spiece")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=prefix, vocab_size=vocab_size,
            model_type="unigram", hard_vocab_limit=False, character_coverage=1.0,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        vocab = [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]
    # transformers 5's T5Tokenizer takes the (piece, score) list directly (it is a
    # tokenizers Unigram model now); a few sentinels keep it shaped like T5's.
    tok = T5Tokenizer(vocab=vocab, extra_ids=4)
    tok.save_pretrained(str(dest))
    return tok


def build_tiny_t5(
    dest: str | Path,
    *,
    d_model: int = 32,
    d_ff: int = 64,
    num_layers: int = 2,
    num_decoder_layers: int | None = None,
    num_heads: int = 2,
    d_kv: int | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    tokenizer_vocab: int = 400,
    tokenizer_text: str = "",
) -> Path:
    """Write a random-weight T5 checkpoint (tokenizer + model) to ``dest``; return it.

    ``vocab_size`` defaults to the tokenizer's size; a larger one (32128 for a
    flan-t5-small-shaped model) only widens the embedding and LM head, as in the real model.
    """
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(dest, tokenizer_vocab, tokenizer_text)
    n_tok = len(tok)  # type: ignore[arg-type]
    config = T5Config(  # type: ignore[call-arg]  # stubs omit PretrainedConfig kwargs
        vocab_size=max(vocab_size or n_tok, n_tok),
        d_model=d_model,
        d_ff=d_ff,
        d_kv=d_kv or d_model // num_heads,
        num_layers=num_layers,
        num_decoder_layers=num_decoder_layers or num_layers,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu",  # as in Flan-T5 (T5 v1.1)
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():
        # T5's init makes a random model emit the same token forever; wider random logits
        # give varied (still meaningless) words, so decoded output is non-empty text.
        model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(str(dest))
    return dest


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    print(build_tiny_t5(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()))
