"""Process life: the watchdog, the signal thread and the hard shutdown deadline.

The end-to-end tests run the real console script with an app that blocks the event loop on
purpose (``freeze_app.py``), as a buggy app or a deadlock inside a library would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import wave
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from audiosocket.lifecycle import EXIT_FORCED, EXIT_STUCK, EXIT_WATCHDOG, Watchdog
from tests.audiosocket.root.test_cli import BIN, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.audiosocket.freeze_app:FreezeOnNine"


def test_watchdog_logs_stacks_once_per_stall_then_exits() -> None:
    exits: list[int] = []
    loop = asyncio.new_event_loop()
    try:
        with capture_logs() as logs:
            dog = Watchdog(loop, stall_s=0.3, exit_s=1.2, interval_s=0.05, exit=exits.append)

            async def main() -> None:
                dog.start()
                await asyncio.sleep(0.2)
                time.sleep(0.7)  # noqa: ASYNC251 - a stall past stall_s, short of exit_s
                await asyncio.sleep(0.3)
                time.sleep(1.6)  # noqa: ASYNC251 - past exit_s
                await asyncio.sleep(0.1)
                dog.stop()

            loop.run_until_complete(main())
    finally:
        loop.close()
    stalls = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert len(stalls) == 2
    assert "time.sleep(0.7)" in stalls[0]["stacks"]  # the stack says where the loop was
    assert "Thread watchdog" in stalls[0]["stacks"]
    assert any(e["event"] == "event_loop_recovered" for e in logs)
    assert exits == [EXIT_WATCHDOG]
    assert dog.stalls == 2 and dog.longest_s > 1.2


def test_watchdog_stays_quiet_on_a_healthy_loop() -> None:
    exits: list[int] = []
    loop = asyncio.new_event_loop()
    try:
        with capture_logs() as logs:
            dog = Watchdog(loop, stall_s=0.5, exit_s=1.0, interval_s=0.05, exit=exits.append)

            async def main() -> None:
                dog.start()
                for _ in range(30):
                    time.sleep(0.02)  # noqa: ASYNC251 - busy, but it turns every 20 ms
                    await asyncio.sleep(0.02)
                dog.stop()

            loop.run_until_complete(main())
    finally:
        loop.close()
    assert [e for e in logs if e["event"] == "event_loop_stalled"] == []
    assert exits == []


def _serve(tmp_path: Path, port: int, app: str = APP, **env: str) -> subprocess.Popen[bytes]:
    full = {**os.environ, "AUDIOSOCKET_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT),
            "AUDIOSOCKET_POSTCALL__ENABLED": "false", **env}
    proc = subprocess.Popen(
        [str(BIN), "serve", "--app", app, "--port", str(port), "--http-port", "0",
         "--data-dir", str(tmp_path / "var")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full, cwd=tmp_path,
    )
    wait_port(port)
    return proc


def _call(port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN), "call", "--port", str(port), "--silence", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _events(output: bytes) -> list[dict[str, Any]]:
    out = []
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _wait(proc: subprocess.Popen[Any], timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running after {timeout} s") from None
    return code, time.monotonic() - started


def test_a_frozen_loop_is_dumped_and_exits_and_a_restart_serves_again(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(tmp_path, port, AUDIOSOCKET_WATCHDOG_STALL_S="1",
                  AUDIOSOCKET_WATCHDOG_EXIT_S="4")
    # The freeze comes 3 s in: the record app writes what is older than 0.5 s every second,
    # so at least a second of the call is on disk when the loop stops.
    caller = _call(port, "--dtmf", "9", "--dtmf-delay", "3.0", "--linger", "30",
                   "--max-seconds", "20")
    assert caller.stdout is not None
    frozen_uuid = caller.stdout.readline().strip()
    code, _ = _wait(proc, 30)
    caller.kill()
    caller.wait()
    assert code == EXIT_WATCHDOG
    assert proc.stdout is not None
    events = _events(proc.stdout.read())
    names = [e["event"] for e in events]
    # A busy machine may stall the loop for a second elsewhere too (each stall is logged
    # once); the freeze's own report must say where the loop is stuck.
    stalls = [e for e in events if e["event"] == "event_loop_stalled"]
    assert any("freeze_app.py" in e["stacks"] and "time.sleep" in e["stacks"] for e in stalls)
    assert len(stalls) <= 3
    assert "watchdog_exit" in names
    # What a supervisor (asterisk/audiosocket.service, Restart=on-failure) does next: start
    # it again. The recording of the frozen call is repaired and new calls are served.
    proc2 = _serve(tmp_path, port)
    try:
        wav = tmp_path / "var" / "recordings" / f"{frozen_uuid}.wav"
        with wave.open(str(wav), "rb") as wf:
            assert wf.getnframes() * 4 + 44 == wav.stat().st_size  # header fixed
            assert wf.getnframes() >= 8000 * 0.5  # the audio before the freeze is kept
        again = _call(port, "--linger", "0.5", "--max-seconds", "3")
        _, err = again.communicate(timeout=30)
        assert again.returncode == 0, err
        assert "received" in err
    finally:
        proc2.send_signal(signal.SIGTERM)
        code2, _ = _wait(proc2, 30)
    assert code2 == 0


def test_sigterm_while_frozen_ends_by_the_deadline(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(tmp_path, port, AUDIOSOCKET_WATCHDOG_EXIT_S="0",
                  AUDIOSOCKET_SHUTDOWN_GRACE_S="1")
    caller = _call(port, "--dtmf", "9", "--dtmf-delay", "0.5", "--linger", "30")
    time.sleep(2.0)  # frozen by now
    proc.send_signal(signal.SIGTERM)
    code, took = _wait(proc, 30)
    caller.kill()
    caller.wait()
    assert code == EXIT_STUCK
    assert took < 1 + 5 + 2  # grace + 5 s, plus scheduling slack on a busy machine
    assert proc.stdout is not None
    events = _events(proc.stdout.read())
    stuck = next(e for e in events if e["event"] == "shutdown_stuck")
    assert "freeze_app.py" in stuck["stacks"]


def test_a_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(tmp_path, port, AUDIOSOCKET_WATCHDOG_EXIT_S="0",
                  AUDIOSOCKET_SHUTDOWN_GRACE_S="60")
    caller = _call(port, "--dtmf", "9", "--dtmf-delay", "0.5", "--linger", "30")
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, took = _wait(proc, 10)
    caller.kill()
    caller.wait()
    assert code == EXIT_FORCED
    assert took < 3
