"""Waveform peaks for the portal's player, computed by streaming over a WAV.

The output is the small JSON the player draws from (a 1-hour call at 50 peaks/s is 180,000
pairs, about 1.5 MB of JSON), so the browser never downloads the audio just to draw it.
The WAV is read in fixed-size blocks: memory stays flat whatever the call's length.
"""

from __future__ import annotations

import contextlib
import json
import os
import wave
from pathlib import Path
from typing import Any

import numpy as np

from helpers.audio import samples_to_float

__all__ = ["PEAK_SCALE", "compute_peaks", "write_peaks"]

#: Peaks are ints in [-PEAK_SCALE, PEAK_SCALE]: 8 bits of resolution is more than a waveform
#: drawn a few dozen pixels high can show, and ints keep the JSON a third the size of floats.
PEAK_SCALE = 127

#: Frames read per block: ~1 s at 48 kHz, a few hundred kB of memory at most.
BLOCK_FRAMES = 1 << 16


def _to_mono_float(raw: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved PCM bytes to a mono float array in [-1, 1] (channels averaged)."""
    return samples_to_float(raw, width, channels)


def compute_peaks(wav_path: str | Path, peaks_per_second: int = 50) -> dict[str, Any]:
    """Min/max pairs of the mono mix of a PCM WAV, ``peaks_per_second`` buckets per second.

    Returns a JSON-able dict: ``rate``, ``duration`` (s), ``channels``, ``peaks_per_second``,
    ``bits`` (8: values are ints in -127..127), ``length`` (number of buckets) and ``data``,
    a list of ``[min, max]``. Bucket ``k`` covers frames ``[round(k·rate/pps),
    round((k+1)·rate/pps))`` so rates that are not a multiple of ``pps`` do not drift; the
    last bucket may be partial. Blocking (file I/O): call it off the event loop.
    """
    if peaks_per_second <= 0:
        raise ValueError("peaks_per_second must be positive")
    data: list[list[int]] = []
    with wave.open(str(wav_path), "rb") as wf:
        rate = wf.getframerate()
        channels = wf.getnchannels()
        width = wf.getsampwidth()
        nframes = wf.getnframes()
        if peaks_per_second > rate:
            raise ValueError("peaks_per_second cannot exceed the sample rate")
        carry = np.zeros(0, dtype=np.float32)
        carry_start = 0  # absolute frame index of carry[0]
        next_bucket = 0  # index of the first bucket not yet emitted
        while True:
            raw = wf.readframes(BLOCK_FRAMES)
            eof = len(raw) < width * channels  # wave returns b"" at the end
            block = carry if eof else np.concatenate((carry, _to_mono_float(raw, width,
                                                                             channels)))
            end = carry_start + block.size
            # Bucket boundaries (absolute frames) that fall inside what we hold.
            starts: list[int] = []
            k = next_bucket
            while True:
                b0 = round(k * rate / peaks_per_second)
                b1 = round((k + 1) * rate / peaks_per_second)
                if b0 >= end or (b1 > end and not eof):
                    break  # incomplete bucket: keep it for the next block
                starts.append(b0 - carry_start)
                k += 1
            if starts:
                idx = np.asarray(starts, dtype=np.intp)
                # reduceat's last segment runs to the end of its input: cut the input at
                # the end of the last complete bucket so the next bucket's frames stay out.
                stop = min(round(k * rate / peaks_per_second) - carry_start, block.size)
                mins = np.minimum.reduceat(block[:stop], idx)
                maxs = np.maximum.reduceat(block[:stop], idx)
                lo = np.clip(np.round(mins * PEAK_SCALE), -PEAK_SCALE, PEAK_SCALE).astype(int)
                hi = np.clip(np.round(maxs * PEAK_SCALE), -PEAK_SCALE, PEAK_SCALE).astype(int)
                data.extend([int(a), int(b)] for a, b in zip(lo, hi, strict=True))
                next_bucket = k
                consumed = stop
                carry = block[consumed:]
                carry_start += consumed
            else:
                carry = block
            if eof:
                break
    return {
        "rate": rate,
        "duration": round(nframes / rate, 3) if rate else 0.0,
        "channels": channels,
        "peaks_per_second": peaks_per_second,
        "bits": 8,
        "length": len(data),
        "data": data,
    }


def write_peaks(wav_path: str | Path, json_path: str | Path, peaks_per_second: int = 50) -> Path:
    """Compute peaks and write them as JSON atomically (temp file + ``os.replace``).

    A reader (the portal) sees either the old file or the complete new one, never half.
    Returns ``json_path``.
    """
    json_path = Path(json_path)
    peaks = compute_peaks(wav_path, peaks_per_second)
    tmp = json_path.with_name(f".{json_path.name}.partial")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(peaks, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, json_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return json_path
