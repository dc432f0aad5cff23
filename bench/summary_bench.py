"""Summary latency: a 2-minute call (~280 words) through a Flan-T5-small-SHAPED model,
transformers + torch vs CTranslate2 int8, side by side in one run.

Prints figures; not a test. Usage (from the repository root):

    .venv/bin/python bench/summary_bench.py [--runs 3] [--threads 2]

No checkpoint can be downloaded here, so the model has flan-t5-small's shape (d_model 512,
d_ff 1024, 8+8 layers, 6 heads, d_kv 64, vocab 32128, gated-GELU) with RANDOM weights,
built offline in a temp dir. Latency of greedy decoding depends on the shape and on how
many tokens are generated, not on the weights' values. Both backends are forced to decode
the full budget (96 summary + 20 title tokens, ``min_new_tokens`` raised to the budget) so
they do the same work: an upper bound for a real model, which usually stops after 30-60
summary tokens.

What is timed is the real thing: :class:`helpers.postcall.flan_t5.T5Summarizer` and
:class:`helpers.postcall.flan_t5.Ct2Summarizer` ``.summarize()`` on the same checkpoint (the
CTranslate2 one converted by :func:`helpers.postcall.summary_models.convert_checkpoint`), each
warmed up once, then timed ``--runs`` times each, one backend after the other (the load average is
printed before each block). Each summary's time is also split into model inference
(``_infer``: the text pass, then the title pass) and the rest (tokenising, chunking,
decoding text), to show where it goes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.postcall.flan_t5 import Ct2Summarizer, T5Summarizer
from helpers.postcall.summary_models import convert_checkpoint
from tests.helpers.postcall.tiny_t5 import build_tiny_t5

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


def loadavg() -> str:
    """``/proc/loadavg`` (1, 5, 15-minute load): the context every figure needs here."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def timed_infer(s: Any) -> list[float]:
    """Wrap ``s._infer`` so each inference call's duration is recorded in the returned list."""
    record: list[float] = []
    inner = s._infer

    def wrapper(*args: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(*args)
        finally:
            record.append(time.perf_counter() - t)

    s._infer = wrapper
    return record


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"loadavg before: {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_tiny_t5(
            Path(tmp) / "flan-t5-small-shaped", d_model=512, d_ff=1024, num_layers=8,
            num_decoder_layers=8, num_heads=6, d_kv=64, vocab_size=32128,
            tokenizer_vocab=2000, tokenizer_text=TRANSCRIPT,
        )
        t = time.perf_counter()
        torch_s = T5Summarizer(ckpt, threads=args.threads)
        torch_load = time.perf_counter() - t
        t = time.perf_counter()
        ct2_dir = convert_checkpoint(ckpt, Path(tmp) / "flan-t5-small-shaped-ct2", "int8")
        convert = time.perf_counter() - t
        t = time.perf_counter()
        ct2_s = Ct2Summarizer(ct2_dir, threads=args.threads)
        ct2_load = time.perf_counter() - t
        backends: dict[str, Any] = {"torch": torch_s, "ct2": ct2_s}
        infer: dict[str, list[float]] = {}
        warm: dict[str, float] = {}
        for key, s in backends.items():
            # Same work for both: decode the whole budget (a random model rarely stops).
            s.min_new_tokens = max(s.summary_tokens, s.title_tokens)
            infer[key] = timed_infer(s)
            t = time.perf_counter()
            s.summarize(TRANSCRIPT)  # warm-up: first call pages weights in, picks kernels
            warm[key] = time.perf_counter() - t
        totals: dict[str, list[float]] = {k: [] for k in backends}
        overhead: dict[str, list[float]] = {k: [] for k in backends}
        passes: dict[str, list[list[float]]] = {k: [] for k in backends}
        calls_before = {k: s.generate_calls for k, s in backends.items()}
        # One backend's runs back to back, not interleaved: interleaving made torch ~30%
        # slower right after a CTranslate2 call (two OpenMP pools on 2 cores), which would
        # flatter CTranslate2. loadavg is printed between the blocks instead.
        for key, s in backends.items():
            print(f"loadavg before {key} runs: {loadavg()}", flush=True)
            for _ in range(args.runs):
                n_before = len(infer[key])
                t = time.perf_counter()
                s.summarize(TRANSCRIPT)
                total = time.perf_counter() - t
                totals[key].append(total)
                overhead[key].append(total - sum(infer[key][n_before:]))
                passes[key].append(infer[key][n_before:])
        n_tok = torch_s._count(torch_s.summary_prompt + TRANSCRIPT)
        print(f"loadavg after:  {loadavg()}")
        print(f"transcript: {len(TRANSCRIPT.split())} words, {n_tok} input tokens "
              f"(test tokenizer; real T5's is ~1.3 tokens/word), "
              f"{torch_s.summary_tokens}+{torch_s.title_tokens} tokens decoded per summary")
        import ctranslate2
        import torch

        print(f"torch {torch.__version__} / ctranslate2 {ctranslate2.__version__} "
              f"({ct2_s.compute_type}), threads={args.threads}, {args.runs} runs each")
        print(f"load: torch {torch_load:.2f} s; convert {convert:.2f} s + ct2 load "
              f"{ct2_load:.2f} s; warm-up call: torch {warm['torch']:.2f} s, "
              f"ct2 {warm['ct2']:.2f} s")
        print(f"{'backend':<8} {'summarize median':<36} {'non-inference':<9} "
              f"{'text pass':<10} {'title pass':<10} calls")
        for key, s in backends.items():
            calls = (s.generate_calls - calls_before[key]) // args.runs
            text_pass = statistics.median(p[0] for p in passes[key])
            title_pass = statistics.median(p[-1] for p in passes[key])
            print(f"{key:<8} {fmt(totals[key]):<36} {statistics.median(overhead[key]):.3f} s   "
                  f"{text_pass:.3f} s    {title_pass:.3f} s    {calls}")
        ratio = statistics.median(totals["torch"]) / statistics.median(totals["ct2"])
        print(f"ct2 int8 is {ratio:.1f}x faster than torch; target <= 1.5 s: "
              f"torch {'met' if statistics.median(totals['torch']) <= 1.5 else 'NOT met'}, "
              f"ct2 {'met' if statistics.median(totals['ct2']) <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
