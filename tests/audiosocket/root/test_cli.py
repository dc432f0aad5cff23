"""The console script as a user runs it: serve, call, SIGTERM, kill -9 and restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent / "audiosocket"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 90.0) -> None:  # a loaded machine starts slowly
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} never opened")


def serve(tmp_path: Path, app: str, port: int, http_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AUDIOSOCKET_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [str(BIN), "serve", "--app", app, "--port", str(port), "--http-port", str(http_port),
         "--data-dir", str(tmp_path / "var")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )
    wait_port(port)
    return proc


def write_tone(path: Path, seconds: float, rate: int = 16000, channels: int = 2) -> None:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 500 * t) * 32767).astype("<i2")
    data = np.repeat(mono, channels)
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes(data.tobytes())


def test_serve_echo_call_metrics_and_sigterm(tmp_path: Path) -> None:
    port, http = free_port(), free_port()
    proc = serve(tmp_path, "echo", port, http)
    try:
        wav = tmp_path / "in.wav"
        write_tone(wav, 1.0, rate=16000, channels=2)  # converted to the call rate by `call`
        out = tmp_path / "out.wav"
        res = subprocess.run(
            [str(BIN), "call", str(wav), "--port", str(port), "--linger", "0.3",
             "--out", str(out)],
            capture_output=True, text=True, timeout=30,
        )
        assert res.returncode == 0, res.stderr
        call_uuid = res.stdout.strip()
        assert len(call_uuid) == 36
        with wave.open(str(out), "rb") as wf:
            assert wf.getframerate() == 8000
            assert wf.getnframes() >= 0.9 * 8000
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics").read().decode()
        assert 'audiosocket_calls_ended_total{reason="remote_closed"} 1.0' in metrics
        assert "audiosocket_tick_lateness_seconds_bucket" in metrics
        health = urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz").read()
        assert b"ok" in health
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    log = proc.stdout.read().decode() if proc.stdout else ""
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "stopped" in events


def test_kill_9_while_recording_then_restart_repairs(tmp_path: Path) -> None:
    port = free_port()
    proc = serve(tmp_path, "record", port, 0)
    caller = subprocess.Popen(
        [str(BIN), "call", "--port", str(port), "--silence", "--linger", "30"],
        stdout=subprocess.PIPE, text=True,
    )
    assert caller.stdout is not None
    call_uuid = caller.stdout.readline().strip()
    started = time.monotonic()
    wav = tmp_path / "var" / "recordings" / f"{call_uuid}.wav"
    # The file grows while the call is live. It trails the call by at most a block
    # (media_block_s, 2 s by default) plus the recorder's flush and hold (1.5 s); a fixed
    # sleep before the kill made the test depend on where the call's block fell in the
    # clock's 2 s cycle (and on a busy machine, on how soon the call started).
    want = 44 + 4 * 8000 * 2.4
    size = 0
    while time.monotonic() - started < 30:
        size = wav.stat().st_size if wav.exists() else 0
        if size >= want:
            break
        time.sleep(0.05)
    trail = time.monotonic() - started - (size - 44) / (4 * 8000)
    assert size >= want, size
    # 3.5 s by design; the rest is slack for a loaded machine (a recording written only at
    # hang-up would trail by the whole 30 s).
    assert trail < 3.5 + 4.0, trail
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    caller.wait(timeout=10)
    # Nothing that was on disk before the kill is lost.
    assert wav.stat().st_size >= size
    proc2 = serve(tmp_path, "record", port, 0)
    try:
        with wave.open(str(wav), "rb") as wf:
            frames = wf.getnframes()
        assert frames * 4 + 44 == wav.stat().st_size
    finally:
        proc2.send_signal(signal.SIGTERM)
        try:
            code = proc2.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc2.kill()  # never leave a hung server behind for the rest of the suite
            raise
        assert code == 0


def test_sigterm_as_soon_as_the_port_opens_is_a_graceful_stop(tmp_path: Path) -> None:
    # Start-up goes on after the AudioSocket port opens (the web app, the collector
    # freeze); a SIGTERM then must not kill the process with the default action.
    proc = serve(tmp_path, "echo", free_port(), free_port())
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0


@pytest.mark.parametrize("flag", ["--port=0", "--log-format=xml"])
def test_bad_settings_exit_2_with_message(tmp_path: Path, flag: str) -> None:
    res = subprocess.run([str(BIN), "serve", flag], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path)
    assert res.returncode == 2
    assert "audiosocket" in res.stderr


def test_call_exits_1_when_the_server_answers_nothing(tmp_path: Path) -> None:
    # A hung server: the kernel still accepts the connection, nothing ever comes back.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        res = subprocess.run(
            [str(BIN), "call", "--port", str(port), "--silence", "--linger", "30",
             "--answer-timeout", "1.5"],
            capture_output=True, text=True, timeout=60,
        )
    assert res.returncode == 1, res.stderr
    assert "sent nothing" in res.stderr
    assert time.monotonic() - started < 20  # gave up at the timeout, not after the linger
