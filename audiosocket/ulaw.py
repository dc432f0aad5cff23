"""G.711 μ-law, for the trap where ``Dial(AudioSocket/...)`` without ``c(slin)`` on a μ-law
caller sends kind 0x10 frames carrying 160-byte μ-law payloads.

Only inbound: Asterisk reads every 0x10 frame we send as signed linear, so replies stay slin.
Table-driven with numpy: ``audioop`` is deprecated and gone in Python 3.13.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ULAW_FRAME_BYTES", "lin2ulaw", "looks_like_ulaw", "ulaw2lin", "ulaw_odds"]

#: 20 ms of μ-law at 8 kHz: one byte a sample.
ULAW_FRAME_BYTES = 160

_BIAS = 0x84
_CLIP = 32635


def _decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign, -magnitude, magnitude).astype("<i2")


def _encode_table() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), _CLIP) + _BIAS
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    out: np.ndarray = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return out


_DECODE = _decode_table()
_ENCODE = _encode_table()


def ulaw2lin(data: bytes) -> bytes:
    """μ-law bytes to int16 LE PCM (twice as long)."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def lin2ulaw(pcm: bytes) -> bytes:
    """int16 LE PCM to μ-law bytes (half as long)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32) + 32768
    return _ENCODE[samples].tobytes()


_COMPAND = 127 / np.log(256.0)


def _roughness(pcm: np.ndarray) -> float:
    """How much one reading of the bytes jumps from sample to sample, plus a little of its
    level, on μ-law's own companded scale (-127..127) so quiet and loud audio weigh alike."""
    x = pcm.astype(np.float64)
    c = np.sign(x) * np.log1p(np.abs(x) * (255 / 32768)) * _COMPAND
    # The level term only breaks ties between two still readings: slin zeros read as μ-law
    # are a full-scale constant, μ-law silence (0xFF) read as slin is a constant -1.
    return float(np.abs(np.diff(c)).mean() + 0.05 * np.abs(c).mean())


def _byte_symmetry(payload: bytes) -> float:
    """How much the odd bytes move against the even ones: about 1 for μ-law (both are
    samples of one signal), far below for slin (its high byte moves little, its low byte a
    lot)."""
    b = np.frombuffer(payload, dtype=np.int8).astype(np.float64)
    return float(
        (np.abs(np.diff(b[1::2])).mean() + 0.5) / (np.abs(np.diff(b[0::2])).mean() + 0.5)
    )


def ulaw_odds(payload: bytes) -> float:
    """How much better kind-0x10 bytes read as μ-law than as signed linear: above 1 they
    are μ-law, below 1 slin; the further from 1, the surer.

    160 bytes is 20 ms of μ-law or 10 ms of slin, so size proves nothing; content does.
    Both readings are tested and the smoother one wins: read the wrong way, the bytes turn
    into near-random samples (slin's low bytes are noise to a μ-law reader; μ-law codes
    paired into slin samples jump by tens of thousands). Bytes whose high half barely moves
    are slin besides. Speech, noise and silence at any level score far from 1 even in one
    frame (tests/audiosocket/test_ulaw.py). Blind spot: near full-scale pure tones and
    loud white noise are ambiguous, and a loud tone above about 2.5 kHz reads as slin.
    """
    if len(payload) % 2:
        return float("inf")  # no slin has an odd length
    if len(payload) < 8:
        return 0.0
    as_slin = np.frombuffer(payload, dtype="<i2")
    as_ulaw = _DECODE[np.frombuffer(payload, dtype=np.uint8)]
    odds = (_roughness(as_slin) + 1e-6) / (_roughness(as_ulaw) + 1e-6)
    return odds * min(1.0, 2 * _byte_symmetry(payload))


def looks_like_ulaw(payload: bytes) -> bool:
    """The better reading of kind-0x10 bytes (see ``ulaw_odds``); ties go to slin, what
    ``AudioSocket()`` always sends."""
    return ulaw_odds(payload) > 1.0
