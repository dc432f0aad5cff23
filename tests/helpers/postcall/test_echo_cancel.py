"""The line-echo canceller on synthetic signals (pure numpy; no FFmpeg, no models)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from helpers.audio import write_wav
from helpers.postcall.echo_cancel import AecSettings, EchoCanceller, LevelMeter, cancel_wav, main


def talker(seconds: float, rate: int, seed: int, f0: float) -> np.ndarray:
    """Speech-like: coloured noise plus harmonics, in 3-4 Hz syllables with pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    noise = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same")
    voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.random() * 6) / k for k in range(1, 6))
    env = np.clip(np.sin(2 * np.pi * (3 + rng.random()) * t), 0, None) ** 2
    env *= np.repeat(rng.random(n // rate + 1) > 0.2, rate)[:n]  # some whole-second pauses
    return 0.15 * env * (0.5 * noise + 0.5 * voiced)


def line_echo(ref: np.ndarray, rate: int, delay_ms: float, erl_db: float) -> np.ndarray:
    """A hybrid echo: bulk delay, a short dispersive response, ``erl_db`` below ``ref``."""
    d = int(delay_ms * rate / 1000)
    h = np.zeros(d + rate // 200)
    h[d] = 1.0
    tail = np.random.default_rng(7).standard_normal(h.size - d - 1)
    h[d + 1:] = 0.3 * tail * np.exp(-np.arange(tail.size) / (rate / 1000))
    echo = np.convolve(ref, h)[: ref.size]
    return echo * np.sqrt(np.mean(ref**2) / np.mean(echo**2)) * 10 ** (-erl_db / 20)


def run(aec: EchoCanceller, mic: np.ndarray, ref: np.ndarray, block: int = 1000) -> np.ndarray:
    parts = [aec.process(mic[i:i + block], ref[i:i + block]) for i in range(0, mic.size, block)]
    return np.concatenate([*parts, aec.flush()])


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(x**2) + 1e-20))


@pytest.mark.parametrize(("rate", "delay_ms", "erl_db"), [(8000, 120, 6), (8000, 20, 15),
                                                          (16000, 60, 10)])
def test_echo_only_is_reduced_by_20_db(rate: int, delay_ms: float, erl_db: float) -> None:
    ref = talker(24, rate, 1, 130)
    mic = line_echo(ref, rate, delay_ms, erl_db)
    mic += 1e-4 * np.random.default_rng(2).standard_normal(mic.size)
    out = run(EchoCanceller(rate), mic, ref)
    assert out.size == mic.size
    half = slice(mic.size // 2, None)  # after convergence (the file path warms up instead)
    erle = db(mic[half]) - db(out[half])
    assert erle >= 20, erle


def test_double_talk_keeps_the_caller() -> None:
    rate = 8000
    ref = talker(30, rate, 3, 120)
    near = np.zeros_like(ref)
    near[15 * rate:25 * rate] = talker(10, rate, 4, 210)  # talks over our prompts
    echo = line_echo(ref, rate, 60, 6)
    mic = echo + near
    out = run(EchoCanceller(rate), mic, ref)
    dt = slice(15 * rate, 25 * rate)
    # The caller's speech comes through nearly whole (the filter does not diverge or carve
    # it out), and the echo under it is reduced a lot more than the speech is.
    speech_loss = db(near[dt]) - db(out[dt])
    assert abs(speech_loss) < 3, speech_loss
    residual = out[dt] - near[dt]
    assert db(near[dt]) - db(residual) > db(near[dt]) - db(echo[dt]) + 8
    # And after the double talk, echo-only is still cancelled.
    after = slice(26 * rate, None)
    assert db(mic[after]) - db(out[after]) >= 20


def test_no_reference_passes_the_caller_through() -> None:
    rate = 8000
    near = talker(5, rate, 5, 150)
    out = run(EchoCanceller(rate), near, np.zeros_like(near))
    assert np.allclose(out, near, atol=1e-9)  # the record app: nothing to cancel, no change


def test_a_line_without_echo_is_left_alone() -> None:
    # A 4-wire digital line: our prompts and the caller overlap, but nothing leaks back.
    rate = 8000
    ref = talker(20, rate, 3, 120)
    mic = talker(20, rate, 4, 210) + 1e-3 * np.random.default_rng(0).standard_normal(ref.size)
    out = run(EchoCanceller(rate), mic, ref)
    assert db(mic) - db(out - mic) > 25  # what it changed is far below the caller


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("n", [0, 1, 37, 5000])
def test_any_length_any_rate(rate: int, n: int) -> None:
    aec = EchoCanceller(rate)
    x = talker(1, rate, 6, 140)[:n]
    out = run(aec, x, x, block=333)
    assert out.size == n and np.all(np.isfinite(out))


def test_silence_and_clipping_stay_finite_and_bounded() -> None:
    rate = 8000
    ref = np.clip(talker(24, rate, 8, 100) * 20, -1, 1)  # heavily clipped prompts
    ref[: 3 * rate] = 0.0  # the call opens in digital silence
    mic = line_echo(ref, rate, 40, 6)
    shout = slice(10 * rate, 11 * rate)  # the caller shouts: the leg clips at full scale
    mic[shout] = np.clip(mic[shout] + 8 * talker(1, rate, 9, 200), -1, 1)
    out = run(EchoCanceller(rate), mic, ref)
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) < 2.0
    assert np.all(out[: 3 * rate - 1000] == 0)
    # Clipped blocks are not learned from, so the filter is still good after the shout.
    after = slice(14 * rate, None)
    assert db(mic[after]) - db(out[after]) >= 20


def test_level_meter() -> None:
    m = LevelMeter(8000)
    assert m.active_dbfs() is None
    m.add(np.zeros(8000))
    assert m.active_dbfs() is None  # silence: no gain to compute
    t = np.arange(8000) / 8000
    m.add(0.1 * np.sqrt(2) * np.sin(2 * np.pi * 300 * t))  # -20 dBFS RMS
    assert m.active_dbfs() == pytest.approx(-20, abs=0.6)


def _stereo(path: Path, left: np.ndarray, right: np.ndarray, rate: int) -> Path:
    pcm = np.round(np.clip(np.stack((left, right), 1) * 32768, -32768, 32767)).astype("<i2")
    write_wav(path, pcm.tobytes(), rate, channels=2)
    return path


def test_cancel_wav_in_blocks_with_warm_start(tmp_path: Path) -> None:
    rate = 8000
    ref = talker(12, rate, 9, 125)
    mic = line_echo(ref, rate, 80, 10)
    src = _stereo(tmp_path / "in.wav", mic, ref, rate)
    stats = cancel_wav(src, tmp_path / "out.wav", AecSettings(warmup_s=12), block_s=0.3)
    with wave.open(str(tmp_path / "out.wav")) as wf:
        assert (wf.getnchannels(), wf.getframerate(), wf.getnframes()) == (2, rate, ref.size)
        out = np.frombuffer(wf.readframes(ref.size), "<i2").reshape(-1, 2) / 32768.0
    assert np.allclose(out[:, 1], ref, atol=1 / 32768)  # our leg untouched and aligned
    first = slice(0, 4 * rate)  # the warm start: the first prompt is cancelled too
    assert db(mic[first]) - db(out[first, 0]) >= 20
    assert stats["frames"] == ref.size and stats["channels"] == 2
    levels = stats["levels"]
    assert isinstance(levels, list) and levels[1] is not None
    # The caller leg was only echo: now too quiet to level (None) or far below our leg.
    assert levels[0] is None or levels[0] < levels[1] - 20


def test_cancel_wav_mono_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rate = 16000
    x = talker(2, rate, 10, 160)
    write_wav(tmp_path / "mono.wav", np.round(x * 32767).astype("<i2").tobytes(), rate)
    stats = cancel_wav(tmp_path / "mono.wav", tmp_path / "mono_out.wav")
    assert stats["channels"] == 1
    assert (tmp_path / "mono_out.wav").read_bytes() == (tmp_path / "mono.wav").read_bytes()
    (tmp_path / "text.wav").write_text("not a recording\n" * 20)
    assert main([str(tmp_path / "text.wav"), str(tmp_path / "x.wav")]) == 2
    assert "text.wav" in capsys.readouterr().err
