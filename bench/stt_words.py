"""What Whisper's word timestamps cost (issue 16.2): tiny.en with and without them.

Recognises a ~3 s and a ~15 s utterance of Piper speech (8 kHz, as from a call) with the
short-window backend, word timestamps off and on, interleaved (off, on, off, on, ...) so a
busy machine slows both alike; prints the median recognition time of each and the median
(and quartiles) of the paired extra time. Not a pass/fail test.

    .venv/bin/python bench/stt_words.py --runs 15 --threads 1
    .venv/bin/python bench/stt_words.py --wer 2      # WER and texts, every 2nd corpus item

``--wer N`` instead transcribes every Nth utterance of the bench corpus (``bench/corpus.py``)
through the engine (guards on) both ways and prints the WER of each and any text that
differs: the words are timed after the decode, so the text should not change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from helpers.audio import pcm_to_float, resample_float  # noqa: E402
from helpers.speech.stt import WhisperBackend  # noqa: E402
from tests.helpers.speech_fixtures import synth_speech  # noqa: E402

SHORT = ["Hello, I am calling about the order I placed last week."]
LONG = [
    "Hello, I am calling about the order I placed last week.",
    "It has not arrived yet and the tracking page shows nothing at all.",
    "Could you please check what happened to it?",
    "My order number is four five six seven.",
    "I would also like to change my delivery address.",
]


def _utterance(sentences: list[str]) -> np.ndarray:
    gap = bytes(int(0.15 * 8000) * 2)
    pcm = gap.join(synth_speech(s, 8000) for s in sentences)
    return resample_float(pcm_to_float(pcm), 8000, 16000)


def _wer(stride: int, threads: int) -> None:
    from corpus import build, word_errors

    from helpers.speech.stt import SttEngine

    engines = {key: SttEngine(workers=1, cpu_threads=threads, word_timestamps=key == "on")
               for key in ("off", "on")}
    errors = {"off": [0, 0], "on": [0, 0]}
    items = build()[::stride]
    for item in items:
        pcm, texts = item.pcm(), {}
        for key, engine in engines.items():
            texts[key] = engine.transcribe(pcm, 8000).text
            e, n = word_errors(item.text, texts[key])
            errors[key][0] += e
            errors[key][1] += n
        if texts["on"] != texts["off"]:
            print(f"{item.id}: without {texts['off']!r}, with {texts['on']!r}")
    print(f"{len(items)} utterances: WER without "
          f"{100 * errors['off'][0] / errors['off'][1]:.2f} %, with "
          f"{100 * errors['on'][0] / errors['on'][1]:.2f} %; rejections "
          f"{engines['off'].stats.rejected} / {engines['on'].stats.rejected}")


def main() -> None:
    """Run the comparison and print one row per utterance length."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 CPU threads")
    ap.add_argument("--wer", type=int, default=0, metavar="N",
                    help="WER on every Nth corpus utterance instead of timing")
    args = ap.parse_args()
    if args.wer:
        _wer(args.wer, args.threads)
        return
    off = WhisperBackend(cpu_threads=args.threads, word_timestamps=False)
    on = WhisperBackend(cpu_threads=args.threads, word_timestamps=True)
    off.recognize(np.zeros(16000, np.float32))  # CTranslate2's first-call allocations
    for name, audio in (("3 s", _utterance(SHORT)), ("15 s", _utterance(LONG))):
        times: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.runs):
            for key, backend in (("off", off), ("on", on)):
                t0 = time.perf_counter()
                res = backend.recognize(audio)
                times[key].append((time.perf_counter() - t0) * 1000)
        a, b = statistics.median(times["off"]), statistics.median(times["on"])
        # Each "on" run against the "off" run just before it: load changes cancel out.
        extra = sorted(y - x for x, y in zip(times["off"], times["on"], strict=True))
        q = statistics.quantiles(extra, n=4)
        print(f"{name} ({audio.size / 16000:.1f} s, {len(res.words)} words): "
              f"without {a:.0f} ms, with {b:.0f} ms; paired extra {statistics.median(extra):+.0f}"
              f" ms (IQR {q[0]:+.0f}..{q[2]:+.0f}), median of {args.runs}")


if __name__ == "__main__":
    main()
