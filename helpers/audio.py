"""PCM utilities shared by every engine: conversion, resampling, WAV I/O, levels.

All PCM in this project is signed 16-bit little-endian mono ``bytes`` unless a name says
otherwise (``float32`` arrays are in [-1, 1]).
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import soxr

from helpers.ffmpeg import decode_to_pcm

__all__ = [
    "dbfs",
    "float_to_pcm",
    "pcm_to_float",
    "read_audio",
    "read_wav",
    "resample_float",
    "resample_pcm",
    "rms",
    "samples_to_float",
    "wav_bytes",
    "write_wav",
]


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """int16 LE bytes to float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm(samples: np.ndarray) -> bytes:
    """float in [-1, 1] to int16 LE bytes, clipped rather than wrapped."""
    clipped = np.clip(samples * 32768.0, -32768, 32767)
    return np.round(clipped).astype("<i2").tobytes()


def resample_float(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample float32 mono with soxr (high quality, phase-linear enough for speech)."""
    if src_rate == dst_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    out: np.ndarray = soxr.resample(samples, src_rate, dst_rate, quality="HQ")
    return out.astype(np.float32)


def resample_pcm(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    """Resample int16 LE mono bytes."""
    if src_rate == dst_rate or not pcm:
        return pcm
    data = np.frombuffer(pcm, dtype="<i2")
    out = soxr.resample(data, src_rate, dst_rate, quality="HQ")
    return np.asarray(out, dtype="<i2").tobytes()


def rms(pcm: bytes) -> float:
    """Root-mean-square level of int16 PCM, on the int16 scale."""
    if len(pcm) < 2:
        return 0.0
    data = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(data * data)))


def dbfs(pcm: bytes) -> float:
    """Level in dB relative to full scale; -inf for digital silence."""
    level = rms(pcm)
    if level <= 0:
        return float("-inf")
    return float(20 * np.log10(level / 32768.0))


def samples_to_float(raw: bytes, width: int, channels: int = 1) -> np.ndarray:
    """Interleaved little-endian PCM of 8/16/24/32 bits to mono float32 in [-1, 1]
    (channels averaged)."""
    if width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 4:
        data = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(
            np.float32
        )
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints & 0x800000, ints - 0x1000000, ints)
        data = ints.astype(np.float32) / 8388608.0
    else:
        raise ValueError(f"unsupported sample width {width}")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data


def read_wav(path: str | Path, rate: int | None = None) -> tuple[bytes, int]:
    """Read a PCM WAV (any rate, 8/16/32-bit, any channel count) as mono int16.

    Channels are averaged. With ``rate`` the audio is resampled to it.
    Returns ``(pcm, rate)``.
    """
    with wave.open(str(path), "rb") as wf:
        channels = wf.getnchannels()
        width = wf.getsampwidth()
        src_rate = wf.getframerate()
        raw = wf.readframes(wf.getnframes())
    try:
        data = samples_to_float(raw, width, channels)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if rate is not None and rate != src_rate:
        data = resample_float(data, src_rate, rate)
        src_rate = rate
    return float_to_pcm(data), src_rate


def read_audio(path: str | Path, rate: int) -> bytes:
    """Read any audio file as mono int16 at ``rate``: WAV natively, the rest through FFmpeg."""
    path = Path(path)
    if path.suffix.lower() == ".wav":
        try:
            return read_wav(path, rate)[0]
        except (wave.Error, ValueError, EOFError):
            pass  # e.g. a float or A-law WAV: let FFmpeg have it
    return decode_to_pcm(path, rate)


def wav_bytes(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    """A complete WAV file in memory."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes(pcm)
    return buf.getvalue()


def write_wav(path: str | Path, pcm: bytes, rate: int, channels: int = 1) -> None:
    """Write int16 PCM (interleaved when ``channels`` > 1) as a WAV file."""
    Path(path).write_bytes(wav_bytes(pcm, rate, channels))
