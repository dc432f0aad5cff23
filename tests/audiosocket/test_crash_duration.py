"""A call cut off by kill -9 is stored with the length it had, not with the downtime."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
import wave
from pathlib import Path

from tests.audiosocket.root.test_cli import BIN, free_port, serve


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()  # never leave a hung server behind for the rest of the suite
        raise


def test_kill_9_mid_call_then_restart_stores_the_recorded_length(tmp_path: Path) -> None:
    port = free_port()
    proc = serve(tmp_path, "record", port, 0)
    caller = subprocess.Popen(
        [str(BIN), "call", "--port", str(port), "--silence", "--linger", "30"],
        stdout=subprocess.PIPE, text=True,
    )
    assert caller.stdout is not None
    call_uuid = caller.stdout.readline().strip()
    time.sleep(4.5)  # more than a block (media_block_s) has reached the file
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    caller.wait(timeout=10)
    time.sleep(4.0)  # the downtime, which is no part of the call
    proc2 = serve(tmp_path, "record", port, 0)
    try:
        wav = tmp_path / "var" / "recordings" / f"{call_uuid}.wav"
        db = tmp_path / "var" / "calls.db"
        row = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT started_at, ended_at, duration, end_reason FROM calls WHERE uuid=?",
                    (call_uuid,),
                ).fetchone()
            if row is not None and row[1] is not None:
                break
            time.sleep(0.2)
        assert row is not None and row[1] is not None, row
        started_at, ended_at, duration, reason = row
        with wave.open(str(wav), "rb") as wf:  # its header repaired by the restart
            recorded = wf.getnframes() / wf.getframerate()
        assert recorded > 1.5
        assert reason == "server_restart"
        assert abs(duration - recorded) < 0.5, (duration, recorded)
        assert abs(ended_at - started_at - duration) < 0.01
    finally:
        _stop(proc2)
