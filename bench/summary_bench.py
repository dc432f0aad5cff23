"""Summary latency: a 2-minute call (~280 words) through a Flan-T5-small-SHAPED model.

Prints figures; not a test. Usage (from the repository root):

    .venv/bin/python bench/summary_bench.py [--runs 5] [--threads 2] [--ct2]

No checkpoint can be downloaded here, so the model has flan-t5-small's shape (d_model 512,
d_ff 1024, 8+8 layers, 6 heads, d_kv 64, vocab 32128, gated-GELU) with RANDOM weights,
built offline in a temp dir. Latency of greedy decoding depends on the shape and on how
many tokens are generated, not on the weights' values; a random model never emits EOS, so
every run generates the full budget (96 summary + 20 title tokens): an upper bound for a
real model, which usually stops after 30-60 tokens.

Backends: transformers + torch (what :class:`helpers.summarize.T5Summarizer` runs), and with
``--ct2`` the same checkpoint converted to CTranslate2 int8, decoding the same number of
tokens, for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.summarize import T5Summarizer
from tests.helpers.tiny_t5 import build_tiny_t5

TRANSCRIPT = " ".join(
    [
        "Agent: Thank you for calling customer support, my name is Anna, how can I help you?",
        "Caller: Hi Anna, I am calling about my internet invoice for this month.",
        "I was charged twice for the same plan and the second charge is forty dollars.",
        "I noticed it yesterday when I checked my bank account and I would like a refund.",
        "Agent: I am sorry about that. Can you confirm your account number please?",
        "Caller: Yes, it is five five two nine one eight.",
        "Agent: Thank you. I can see the duplicate charge on the invoice from the third.",
        "It looks like the payment went through twice because of a billing system error.",
        "I will submit a refund request for the duplicate charge right now.",
        "The refund should arrive on your card within five business days.",
        "Caller: Great. While I have you, my internet connection keeps dropping every evening.",
        "It usually happens around eight and the router lights turn orange for a few minutes.",
        "Agent: Let me run a line test. I can see some errors on the line in the evenings.",
        "I will book a technician visit for Tuesday morning between nine and noon.",
        "They will check the line and replace the router free of charge if needed.",
        "Please restart the router before the visit and leave it connected.",
        "Caller: Tuesday morning works for me. Will I get a confirmation by email?",
        "Agent: Yes, you will get an email and a text message with the appointment details.",
        "Is there anything else I can help you with today?",
        "Caller: No, that is everything. Thank you for your help.",
        "Agent: You are welcome. Have a nice day and goodbye.",
    ]
)


def bench_torch(ckpt: Path, runs: int, threads: int) -> tuple[float, list[float], T5Summarizer]:
    t = time.perf_counter()
    s = T5Summarizer(ckpt, threads=threads)
    load = time.perf_counter() - t
    s.summarize(TRANSCRIPT)  # warm-up (first call allocates, JIT-selects kernels)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.summarize(TRANSCRIPT)
        times.append(time.perf_counter() - t)
    return load, times, s


def bench_ct2(ckpt: Path, out: Path, runs: int, threads: int, s: T5Summarizer) -> list[float]:
    import ctranslate2

    ctranslate2.converters.TransformersConverter(str(ckpt)).convert(
        str(out), quantization="int8", force=True
    )
    tr = ctranslate2.Translator(str(out), device="cpu", inter_threads=1,
                                intra_threads=threads)
    tok = s._tokenizer

    def gen(prompt: str, n: int) -> None:
        ids = tok(prompt, truncation=True, max_length=512)["input_ids"]
        tokens = tok.convert_ids_to_tokens(ids)
        tr.translate_batch([tokens], beam_size=1, max_decoding_length=n, min_decoding_length=n,
                           no_repeat_ngram_size=3)

    prompt = "Summarize this phone call: " + TRANSCRIPT
    gen(prompt, s.summary_tokens)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        gen(prompt, s.summary_tokens)
        gen("Write a short title for this phone call: " + "word " * 60, s.title_tokens)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ct2", action="store_true", help="also time CTranslate2 int8")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_tiny_t5(
            Path(tmp) / "flan-t5-small-shaped", d_model=512, d_ff=1024, num_layers=8,
            num_decoder_layers=8, num_heads=6, d_kv=64, vocab_size=32128,
            tokenizer_vocab=2000, tokenizer_text=TRANSCRIPT,
        )
        load, times, s = bench_torch(ckpt, args.runs, args.threads)
        n_tok = s._count("Summarize this phone call: " + TRANSCRIPT)
        print(f"transcript: {len(TRANSCRIPT.split())} words, {n_tok} input tokens "
              f"(test tokenizer; real T5's is ~1.3 tokens/word), "
              f"{s.summary_tokens}+{s.title_tokens} tokens generated")
        print(f"torch {s._torch.__version__}, threads={args.threads}: load {load:.2f} s; "
              f"summarize median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}) over {args.runs} runs; "
              f"generate calls per summary: {s.generate_calls // (args.runs + 1)}")
        if args.ct2:
            ct = bench_ct2(ckpt, Path(tmp) / "ct2", args.runs, args.threads, s)
            print(f"ctranslate2 int8, threads={args.threads}: summary+title median "
                  f"{statistics.median(ct):.3f} s (min {min(ct):.3f}, max {max(ct):.3f})")


if __name__ == "__main__":
    main()
