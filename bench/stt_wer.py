"""WER of the STT engine on the bench corpus: short window vs padded, beam 1 vs 5, VAD modes.

Prints figures; not a pass/fail test. Configurations run side by side (interleaved per
utterance) so machine noise hits them alike. Guards are on, as in production: a rejected
utterance counts as an empty transcript.

    .venv/bin/python bench/stt_wer.py                    # all configs, whole corpus
    .venv/bin/python bench/stt_wer.py --stride 3 --vad-limit 42   # ~4 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import Item, build, word_errors  # noqa: E402

from helpers.speech.stt import SttEngine  # noqa: E402
from helpers.speech.vad import VadSegmenter  # noqa: E402

RATE = 8000


def _vad_utterances(pcm: bytes, aggressiveness: int) -> list[bytes]:
    """Run the call-side segmenter over lead-in + utterance + trailing silence."""
    audio = bytes(int(0.5 * RATE) * 2) + pcm + bytes(RATE * 2)
    seg = VadSegmenter(RATE, aggressiveness=aggressiveness)
    out = []
    for k, i in enumerate(range(0, len(audio), 320)):
        out += seg.push(audio[i : i + 320], k)
    last = seg.flush()
    if last is not None:
        out.append(last)
    return [u.pcm for u in out]


def _report(name: str, errs: int, words: int, times: list[float], rejected: int,
            by_noise: dict[str, list[int]]) -> None:
    noise = "  ".join(f"{k} {100 * e / max(1, n):5.1f}%" for k, (e, n) in sorted(by_noise.items()))
    med = statistics.median(times) * 1000 if times else float("nan")
    print(f"{name:<22} WER {100 * errs / max(1, words):5.1f}%   [{noise}]   "
          f"median {med:6.0f} ms/utt   rejected {rejected}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=0, help="first N utterances (0: all)")
    ap.add_argument("--stride", type=int, default=1, help="every Nth utterance")
    ap.add_argument("--vad-limit", type=int, default=42, help="utterances for the VAD sweep")
    ap.add_argument("--threads", type=int, default=2, help="CTranslate2 CPU threads")
    ap.add_argument("--no-padded-beam5", action="store_true", help="skip the slowest config")
    args = ap.parse_args()
    items: list[Item] = build()
    items = items[:: args.stride]
    if args.limit:
        items = items[: args.limit]
    configs: dict[str, SttEngine] = {
        "short beam1": SttEngine(workers=1, short_window=True, beam_size=1,
                                 cpu_threads=args.threads),
        "short-nopad beam1": SttEngine(workers=1, short_window=True, beam_size=1,
                                       short_window_min_s=0.0, cpu_threads=args.threads),
        "padded beam1": SttEngine(workers=1, short_window=False, beam_size=1,
                                  cpu_threads=args.threads),
        "short beam5": SttEngine(workers=1, short_window=True, beam_size=5,
                                 cpu_threads=args.threads),
    }
    if not args.no_padded_beam5:
        configs["padded beam5"] = SttEngine(workers=1, short_window=False, beam_size=5,
                                            cpu_threads=args.threads)
    for eng in configs.values():  # load + warm up outside the timing
        eng.transcribe(items[0].pcm(), RATE)
    acc = {k: [0, 0, [], 0, {}] for k in configs}
    t0 = time.time()
    examples: list[str] = []
    for it in items:
        pcm = it.pcm()
        for name, eng in configs.items():
            t = time.perf_counter()
            result = eng.transcribe(pcm, RATE)
            dt = time.perf_counter() - t
            e, n = word_errors(it.text, result.text)
            a = acc[name]
            a[0] += e
            a[1] += n
            a[2].append(dt)
            a[3] += result.rejected is not None
            a[4].setdefault(it.noise, [0, 0])
            a[4][it.noise][0] += e
            a[4][it.noise][1] += n
            if name == "short beam1" and e and len(examples) < 8:
                examples.append(f"  {it.id} [{it.noise}] ref: {it.text!r}  hyp: {result.text!r}")
    print(f"# {len(items)} utterances, 8 kHz, tiny.en int8, {args.threads} threads, "
          f"{time.time() - t0:.0f} s")
    for name, (e, n, times, rej, by_noise) in acc.items():
        _report(name, e, n, times, rej, by_noise)
    print("short beam1 errors (first 8):")
    print("\n".join(examples))

    # VAD aggressiveness: the segmenter in front of the short-window engine.
    eng = configs["short beam1"]
    vitems = items[: args.vad_limit]
    print(f"# VAD sweep: {len(vitems)} utterances, segmenter -> short beam1")
    for mode in (1, 2, 3):
        errs = words = missed = 0
        for it in vitems:
            pieces = _vad_utterances(it.pcm(), mode)
            missed += not pieces
            text = " ".join(eng.transcribe(p, RATE).text for p in pieces)
            e, n = word_errors(it.text, text)
            errs += e
            words += n
        print(f"vad aggressiveness {mode}: WER {100 * errs / max(1, words):5.1f}%   "
              f"no utterance found {missed}/{len(vitems)}")


if __name__ == "__main__":
    main()
