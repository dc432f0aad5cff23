"""G.711 μ-law, for the trap where ``Dial(AudioSocket/...)`` without ``c(slin)`` on a μ-law
caller sends kind 0x10 frames carrying 160-byte μ-law payloads.

Table-driven with numpy: ``audioop`` is deprecated and gone in Python 3.13.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ULAW_FRAME_BYTES", "lin2ulaw", "ulaw2lin"]

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
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


_DECODE = _decode_table()
_ENCODE = _encode_table()


def ulaw2lin(data: bytes) -> bytes:
    """μ-law bytes to int16 LE PCM (twice as long)."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def lin2ulaw(pcm: bytes) -> bytes:
    """int16 LE PCM to μ-law bytes (half as long)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32) + 32768
    return _ENCODE[samples].tobytes()
