"""Archive jobs against the real FFmpeg binary, on WAV files synthesised in tmp_path."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers.audio import pcm_to_float, write_wav
from helpers.ffmpeg import FFmpegError, decode_to_pcm, ffmpeg_binary
from helpers.postcall import archive
from helpers.postcall.archive import (
    ArchiveSettings,
    ArchiveVerifyError,
    FFmpegCap,
    archive_aac,
    archive_mp3,
    probe_duration,
    verify_archive,
)

RATE = 8000


def speechlike(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Stereo float array: syllable-rate AM-modulated harmonics, different per leg."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    left = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420), 1))
    right = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((210, 420, 630), 1))
    env_l = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) * (rng.random(t.size) * 0.1 + 0.9)
    env_r = 0.5 * (1 + np.cos(2 * np.pi * 3 * t))
    return np.stack([0.2 * left * env_l, 0.2 * right * env_r], axis=1)


def write_stereo(path: Path, data: np.ndarray, rate: int = RATE) -> Path:
    pcm = np.clip(data * 32767, -32768, 32767).astype("<i2").tobytes()
    write_wav(path, pcm, rate, channels=2)
    return path


@pytest.fixture
def cap() -> FFmpegCap:
    """The cap the server would share between archive calls (2, as configured by default);
    a call given none makes its own."""
    return FFmpegCap(2)


@pytest.fixture
def call_wav(tmp_path: Path) -> Path:
    return write_stereo(tmp_path / "call.wav", speechlike(3.0))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial" in p.name)


async def test_both_archives_decode_to_the_wav_duration(call_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    aac, mp3 = await asyncio.gather(
        archive_aac(call_wav, out / "call.m4a"), archive_mp3(call_wav, out / "call.mp3")
    )
    for res, name in ((aac, "call.m4a"), (mp3, "call.mp3")):
        assert res.path == out / name and res.path.is_file()
        assert res.bytes == res.path.stat().st_size > 1000
        assert abs(res.duration - 3.0) <= 0.1
        assert res.seconds > 0
        assert abs(await verify_archive(call_wav, res.path) - 3.0) <= 0.1
    assert leftovers(out) == []
    # Stereo is kept in both (left caller, right us).
    for res in (aac, mp3):
        proc = await asyncio.to_thread(
            subprocess.run, [ffmpeg_binary(), "-hide_banner", "-i", str(res.path)],
            capture_output=True, text=True, check=False)
        assert "stereo" in proc.stderr


async def test_probe_duration_without_ffprobe(call_wav: Path) -> None:
    assert abs(await probe_duration(call_wav) - 3.0) < 0.02


async def test_verify_rejects_wrong_duration(call_wav: Path, tmp_path: Path) -> None:
    other = write_stereo(tmp_path / "short.wav", speechlike(2.5))
    res = await archive_mp3(other, tmp_path / "short.mp3")
    with pytest.raises(ArchiveVerifyError, match="decodes to"):
        await verify_archive(call_wav, res.path)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all" * 100)
    with pytest.raises(ArchiveVerifyError, match="not decodable"):
        await verify_archive(call_wav, junk)


@pytest.fixture
def spy_commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every child the archive module runs (FFmpeg and the echo canceller), in order."""
    commands: list[list[str]] = []
    real_run = archive._run_ffmpeg

    async def spy(cmd: list[str], **kw: object) -> bytes:
        commands.append(cmd)
        return await real_run(cmd, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(archive, "_run_ffmpeg", spy)
    return commands


def _filters(commands: list[list[str]]) -> list[str]:
    return [c[c.index("-filter_complex") + 1] for c in commands if "-filter_complex" in c]


def _lag_corr(a: np.ndarray, b: np.ndarray, lag: int) -> float:
    """Normalised correlation of ``a`` with ``b`` delayed by ``lag`` samples."""
    x, y = a[lag:], b[: b.size - lag]
    return float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y) + 1e-20))


def _legs(path: Path) -> np.ndarray:
    proc = subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(path), "-ac", "2",
         "-ar", str(RATE), "-f", "s16le", "-"], capture_output=True, check=True)
    return np.frombuffer(proc.stdout, "<i2").reshape(-1, 2) / 32768.0


async def test_mp3_listening_copy_cancels_the_line_echo(
    tmp_path: Path, spy_commands: list[list[str]]
) -> None:
    # A call: our prompts (Piper) on the right; on the left the caller (Piper, slower) and
    # the line echo of our prompts 60 ms later, 8 dB down, through G.711-like noise.
    from tests.helpers.speech_fixtures import synth_speech

    ours = pcm_to_float(synth_speech(
        "Welcome to the demo line. Press one or say sales, press two or say support. "
        "Thank you, please hold while I look up your account.")).astype(np.float64)
    caller = pcm_to_float(synth_speech(
        "Hi, I am calling about the invoice from last week.", length_scale=1.1))
    n = ours.size + caller.size + RATE
    right = np.zeros(n)
    right[: ours.size] = 0.5 * ours
    lag = int(0.060 * RATE)
    echo = np.zeros(n)
    echo[lag:] = 0.4 * right[: n - lag]
    echo[lag + 1:] += 0.1 * right[: n - lag - 1]
    left = echo + 1e-3 * np.random.default_rng(3).standard_normal(n)
    c0 = ours.size + RATE // 2
    left[c0: c0 + caller.size] += 0.4 * caller
    src = write_stereo(tmp_path / "call.wav", np.stack([left, right], axis=1))

    res = await archive_mp3(src, tmp_path / "call.mp3")
    assert abs(res.duration - n / RATE) <= 0.1
    # The canceller ran as a child (not in this process), then FFmpeg denoised and levelled.
    assert any("echo_cancel.py" in " ".join(c) for c in spy_commands)
    (graph,) = _filters(spy_commands)
    assert "afftdn" in graph and "alimiter" in graph and "volume" in graph
    assert "aecho" not in graph
    assert leftovers(tmp_path) == []  # the cleaned intermediate WAV is gone

    mp3 = _legs(res.path)[: n]
    echo_only = slice(lag + RATE // 4, ours.size)
    speech = slice(c0, c0 + caller.size)
    assert _lag_corr(left, right, lag) > 0.3  # the recording: the echo is plain to see
    assert abs(_lag_corr(mp3[:, 0], mp3[:, 1], lag)) < 0.05  # the copy: gone

    def ratio_db(x: np.ndarray) -> float:  # echo relative to the caller's own speech
        return float(10 * np.log10(np.mean(x[echo_only] ** 2) / np.mean(x[speech] ** 2)))

    assert ratio_db(left) - ratio_db(mp3[:, 0]) >= 20
    # The caller's words are still there, at a listening level (levelled to -20 dBFS).
    assert -26 < 10 * np.log10(np.mean(mp3[speech, 0] ** 2)) < -14


async def test_aac_is_never_filtered(call_wav: Path, tmp_path: Path,
                                     spy_commands: list[list[str]]) -> None:
    await archive_aac(call_wav, tmp_path / "call.m4a")
    assert _filters(spy_commands) == []
    assert not any("-af" in c or "echo_cancel.py" in " ".join(c) for c in spy_commands)


async def test_aecho_is_only_an_explicit_option(
    tmp_path: Path, spy_commands: list[list[str]]
) -> None:
    # A tone burst at 1.0-1.2 s in silence. With a 300 ms echo there is sound at 1.3-1.5 s;
    # without it that window is silent (MP3's 72 ms granule smearing at 8 kHz does not reach).
    t = np.arange(3 * RATE) / RATE
    burst = np.where((t >= 1.0) & (t < 1.2), 0.5 * np.sin(2 * np.pi * 500 * t), 0.0)
    src = write_stereo(tmp_path / "burst.wav", np.stack([burst, burst], axis=1))

    await archive_mp3(src, tmp_path / "explicit.mp3", ArchiveSettings(listen_filter="aecho"))
    (graph,) = _filters(spy_commands)
    for part in ("aecho=", "in_gain=0.8", "out_gain=0.88", "delays=60", "decays=0.4"):
        assert part in graph

    echoed = await archive_mp3(src, tmp_path / "echo.mp3",
                               ArchiveSettings(listen_filter="aecho", aecho="0.8:0.9:300:0.5"))
    plain = await archive_mp3(src, tmp_path / "plain.mp3", ArchiveSettings(listen_filter="none"))

    def window_rms(path: Path) -> float:
        x = pcm_to_float(decode_to_pcm(path, RATE))
        seg = x[int(1.33 * RATE): int(1.47 * RATE)]
        return float(np.sqrt(np.mean(seg * seg)))

    assert window_rms(echoed.path) > 0.05
    assert window_rms(plain.path) < 0.01
    with pytest.raises(ValueError, match="listen_filter"):
        await archive_mp3(src, tmp_path / "x.mp3", ArchiveSettings(listen_filter="echo"))


async def test_listening_copy_of_odd_recordings(tmp_path: Path) -> None:
    # Mono (nothing to cancel against), a silent recording, a 30 ms call, 48 kHz, and an
    # 8-bit WAV the canceller refuses: each still gets a listening copy of the right length.
    rng = np.random.default_rng(5)
    cases: dict[str, tuple[bytes, int, int]] = {
        "mono": (((rng.standard_normal(RATE) * 2000).astype("<i2")).tobytes(), RATE, 1),
        "silent": (bytes(4 * RATE * 2), RATE, 2),
        "short": (((rng.standard_normal(480) * 2000).astype("<i2")).tobytes(), RATE, 2),
        "wide": (((rng.standard_normal(48000 * 2) * 2000).astype("<i2")).tobytes(), 48000, 2),
    }
    for name, (pcm, rate, ch) in cases.items():
        write_wav(tmp_path / f"{name}.wav", pcm, rate, channels=ch)
    import wave

    with wave.open(str(tmp_path / "u8.wav"), "wb") as wf:
        wf.setnchannels(2)
        wf.setsampwidth(1)
        wf.setframerate(RATE)
        wf.writeframes(bytes(rng.integers(100, 156, 2 * RATE, dtype=np.uint8)))
    skipped = archive.LISTEN_COPIES.labels(filter="aec_skipped")
    cleaned = archive.LISTEN_COPIES.labels(filter="aec")
    before = (skipped._value.get(), cleaned._value.get())
    for name in [*cases, "u8"]:
        src = tmp_path / f"{name}.wav"
        res = await archive_mp3(src, tmp_path / f"{name}.mp3")
        assert res.path.is_file() and abs(res.duration - archive.wav_duration(src)) <= 0.1
    assert leftovers(tmp_path) == []
    # Only the 8-bit file fell back (denoised, not cancelled), and that is counted.
    assert (skipped._value.get(), cleaned._value.get()) == (before[0] + 1, before[1] + 4)


async def _wait_for_pid(cap: FFmpegCap, limit_s: float = 10.0) -> int:
    for _ in range(int(limit_s / 0.005)):
        pids = cap.running_pids()
        if pids:
            return pids[0]
        await asyncio.sleep(0.005)
    raise AssertionError("ffmpeg never started")


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 20 minutes of 8 kHz stereo noise: long enough that the encode is still running when
    # we kill it (AAC runs a few hundred times real time here).
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(20 * 60 * RATE * 2) * 3000).astype("<i2").tobytes()
    path = tmp_path_factory.mktemp("long") / "long.wav"
    write_wav(path, pcm, RATE, channels=2)
    return path


async def test_killed_ffmpeg_leaves_no_file(long_wav: Path, tmp_path: Path,
                                            cap: FFmpegCap) -> None:
    out = tmp_path / "out"
    dst = out / "long.m4a"
    task = asyncio.create_task(archive_aac(long_wav, dst, cap=cap))
    pid = await _wait_for_pid(cap)
    partial = out / ".long.partial.m4a"
    for _ in range(1000):  # up to 5 s
        if partial.exists():
            break
        await asyncio.sleep(0.005)
    assert partial.exists(), "FFmpeg should be writing to the hidden partial name"
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(FFmpegError, match="SIGKILL"):
        await task
    assert not dst.exists()
    assert leftovers(out) == []
    assert cap.running_pids() == []


async def test_cancelled_archive_kills_ffmpeg(long_wav: Path, tmp_path: Path,
                                              cap: FFmpegCap) -> None:
    dst = tmp_path / "long.mp3"
    # The first child of the default listening copy is the echo canceller: cancelling
    # kills it and removes its half-written WAV as it would FFmpeg and its partial.
    task = asyncio.create_task(archive_mp3(long_wav, dst, cap=cap))
    pid = await _wait_for_pid(cap)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cap.running_pids() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie or orphan
    assert not dst.exists() and leftovers(tmp_path) == []


async def test_timeout_kills_and_cleans(long_wav: Path, tmp_path: Path,
                                        cap: FFmpegCap) -> None:
    dst = tmp_path / "long.m4a"
    with pytest.raises(FFmpegError, match="timed out"):
        await archive_aac(long_wav, dst, ArchiveSettings(timeout_s=0.2), cap=cap)
    assert not dst.exists() and leftovers(tmp_path) == []
    assert cap.running_pids() == []


async def test_failure_captures_stderr(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is a text file, not a recording\n" * 50)
    dst = tmp_path / "notes.m4a"
    with pytest.raises(FFmpegError) as info:
        await archive_aac(bogus, dst)
    assert info.value.stderr  # FFmpeg's own explanation is kept
    assert len(info.value.stderr) <= 4096
    assert "Invalid data" in info.value.stderr or "notes.wav" in info.value.stderr
    assert not dst.exists() and leftovers(tmp_path) == []


async def test_semaphore_caps_concurrent_ffmpeg(tmp_path: Path, cap: FFmpegCap) -> None:
    src = write_stereo(tmp_path / "mid.wav", speechlike(20.0))
    samples: list[int] = []
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            samples.append(cap.stats()[0])
            await asyncio.sleep(0.002)

    sampling = asyncio.create_task(sampler())
    jobs = [
        (archive_aac if i % 2 else archive_mp3)(
            src, tmp_path / f"c{i}.{'m4a' if i % 2 else 'mp3'}", cap=cap)
        for i in range(6)
    ]
    results = await asyncio.gather(*jobs)
    stop.set()
    await sampling
    assert len(results) == 6 and all(r.path.is_file() for r in results)
    assert max(samples) <= 2
    running, max_seen = cap.stats()
    assert running == 0
    assert max_seen == 2  # the cap was reached, and never exceeded
    assert archive.FFMPEG_PROCESSES._value.get() == 0


def test_cap_holds_across_event_loops_in_threads(tmp_path: Path, cap: FFmpegCap) -> None:
    src = write_stereo(tmp_path / "mid.wav", speechlike(30.0))
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        async def main() -> None:
            await asyncio.gather(*(archive_mp3(src, tmp_path / f"t{n}_{i}.mp3", cap=cap)
                                   for i in range(3)))
        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    assert len(list(tmp_path.glob("t*.mp3"))) == 6
    assert cap.stats() == (0, 2)


async def test_limit_one_serialises(call_wav: Path, tmp_path: Path) -> None:
    cap = FFmpegCap(1)
    await asyncio.gather(*(archive_mp3(call_wav, tmp_path / f"s{i}.mp3", cap=cap)
                           for i in range(3)))
    assert cap.stats() == (0, 1)
    cap.reset_max()
    assert cap.stats() == (0, 0)


def test_listen_filter_setting() -> None:
    from audiosocket.config import ConfigError, load_config

    assert load_config(environ={}).postcall.listen_filter == "aec"
    env = {"AUDIOSOCKET_POSTCALL__LISTEN_FILTER": "aecho"}
    assert load_config(environ=env).postcall.listen_filter == "aecho"
    with pytest.raises(ConfigError, match="listen_filter"):
        load_config(environ={"AUDIOSOCKET_POSTCALL__LISTEN_FILTER": "cancel"})
