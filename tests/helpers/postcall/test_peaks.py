"""Waveform peaks: shape, values, and that the WAV is streamed in blocks."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from helpers.audio import write_wav
from helpers.postcall import peaks
from helpers.postcall.peaks import compute_peaks, write_peaks


def stereo_wav(path: Path, left: np.ndarray, right: np.ndarray, rate: int) -> Path:
    data = np.stack([left, right], axis=1)
    write_wav(path, np.clip(data * 32767, -32768, 32767).astype("<i2").tobytes(), rate, 2)
    return path


def reference(left: np.ndarray, right: np.ndarray, rate: int, pps: int) -> list[list[int]]:
    """Whole-file computation to compare the streaming one against."""
    q_l = np.clip(left * 32767, -32768, 32767).astype(np.int16) / 32768.0
    q_r = np.clip(right * 32767, -32768, 32767).astype(np.int16) / 32768.0
    mono = (q_l + q_r) / 2
    out = []
    k = 0
    while round(k * rate / pps) < mono.size:
        seg = mono[round(k * rate / pps): round((k + 1) * rate / pps)]
        out.append([int(np.clip(np.round(seg.min() * 127), -127, 127)),
                    int(np.clip(np.round(seg.max() * 127), -127, 127))])
        k += 1
    return out


def test_shape_and_values(tmp_path: Path) -> None:
    rate = 8000
    t = np.arange(int(2.5 * rate)) / rate
    loud = np.where(t < 1.0, 0.9 * np.sin(2 * np.pi * 200 * t), 0.0)
    path = stereo_wav(tmp_path / "a.wav", loud, loud, rate)
    p = compute_peaks(path)
    assert p["rate"] == rate and p["channels"] == 2 and p["peaks_per_second"] == 50
    assert p["duration"] == 2.5
    assert p["length"] == len(p["data"]) == 125
    assert all(-127 <= lo <= hi <= 127 for lo, hi in p["data"])
    assert all(isinstance(v, int) for pair in p["data"] for v in pair)
    first, last = p["data"][10], p["data"][-1]
    assert first[0] <= -110 and first[1] >= 110  # 0.9 full scale -> ~114
    assert last == [0, 0]
    json.dumps(p)  # JSON-able


def test_mono_mix_cancels_opposite_legs(tmp_path: Path) -> None:
    rate = 8000
    x = 0.5 * np.sin(2 * np.pi * 300 * np.arange(rate) / rate)
    p = compute_peaks(stereo_wav(tmp_path / "b.wav", x, -x, rate))
    assert all(abs(lo) <= 1 and abs(hi) <= 1 for lo, hi in p["data"])


@pytest.mark.parametrize(("rate", "pps", "block"), [(8000, 50, 1000), (8000, 30, 777),
                                                     (22050, 50, 4096), (16000, 7, 65536)])
def test_streaming_matches_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int, pps: int, block: int
) -> None:
    rng = np.random.default_rng(rate + pps)
    n = int(3.3 * rate) + 13  # a partial last bucket
    left = rng.uniform(-0.8, 0.8, n) * np.linspace(0, 1, n)
    right = rng.uniform(-0.3, 0.3, n)
    path = stereo_wav(tmp_path / "c.wav", left, right, rate)

    reads: list[int] = []
    real = wave.Wave_read.readframes

    def spy(self: wave.Wave_read, nframes: int) -> bytes:
        reads.append(nframes)
        return real(self, nframes)

    monkeypatch.setattr(peaks, "BLOCK_FRAMES", block)
    monkeypatch.setattr(wave.Wave_read, "readframes", spy)
    p = compute_peaks(path, pps)
    assert p["data"] == reference(left, right, rate, pps)
    assert p["length"] == len(p["data"]) == int(np.ceil(n * pps / rate))
    assert reads and max(reads) == block  # never the whole file at once
    assert len(reads) >= n // block


def test_write_peaks_is_atomic_json(tmp_path: Path) -> None:
    rate = 8000
    x = 0.2 * np.ones(rate)
    src = stereo_wav(tmp_path / "d.wav", x, x, rate)
    out = tmp_path / "d.peaks.json"
    out.write_text("old")
    assert write_peaks(src, out) == out
    loaded = json.loads(out.read_text())
    assert loaded["length"] == 50 and loaded["data"][0] == [25, 25]
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_rejects_bad_rate(tmp_path: Path) -> None:
    x = np.zeros(100)
    with pytest.raises(ValueError):
        compute_peaks(stereo_wav(tmp_path / "e.wav", x, x, 8000), 0)
