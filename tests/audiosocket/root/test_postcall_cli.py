"""import / export / kill -9 during archiving, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from helpers.audio import write_wav
from helpers.ffmpeg import ffmpeg_binary
from tests.audiosocket.root.test_cli import free_port, wait_port
from tests.helpers.speech_fixtures import silence, synth_speech

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent / "audiosocket"


def test_import_resumable_and_export(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    texts = ["Please cancel my subscription.", "I want to upgrade my plan.",
             "The invoice was charged twice."]
    for i, text in enumerate(texts):
        wav = src / f"{i}.wav"
        write_wav(wav, silence(0.3, 16000) + synth_speech(text, 16000), 16000)
        if i == 1:  # one FLAC and one MP3, converted with the real FFmpeg
            subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(wav), str(src / "1.flac")],
                           check=True)
            wav.unlink()
        if i == 2:
            subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(wav), "-ar", "44100",
                            str(src / "2.mp3")], check=True)
            wav.unlink()
    data = tmp_path / "data"
    cmd = [str(BIN), "import", str(src), "--data-dir", str(data), "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "3 imported" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "0 imported, 3 already done" in again.stdout
    out = tmp_path / "calls.jsonl"
    exp = subprocess.run([str(BIN), "export", "--jsonl", str(out), "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=60)
    assert exp.returncode == 0, exp.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    heard = " ".join(" ".join(s["text"] for s in c["transcript"]) for c in lines).lower()
    for word in ("cancel", "upgrade", "invoice"):
        assert word in heard
    assert all(c["summary"]["method"] == "extractive" for c in lines)
    assert all({"wav", "m4a", "mp3", "peaks"} <= set(c["files"]) for c in lines)


def _job_status(db: Path, step: str) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        row = conn.execute("SELECT status FROM jobs WHERE step=?", (step,)).fetchone()
        conn.close()
        return row[0] if row else None
    except sqlite3.Error:
        return None


def test_kill_9_during_archiving_then_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rec = data / "recordings"
    rec.mkdir(parents=True)
    call_id = str(uuid.uuid4())
    # A long call (10 minutes, stereo 8 kHz, a quiet line) so archiving takes a while.
    rng = np.random.default_rng(0)
    seconds = 600
    stereo = (rng.standard_normal(seconds * 8000 * 2) * 30).astype("<i2")
    wav = rec / f"{call_id}.wav"
    write_wav(wav, stereo.tobytes(), 8000, channels=2)
    wav_bytes = wav.read_bytes()
    # The call ended before a crash, so the server finds a recording without jobs.
    db = data / "calls.db"
    from helpers.store.db import CallStore

    store = CallStore(db).open()
    store.call_started(call_id, "record", 8000, None, time.time() - seconds)
    store.call_ended(call_id, time.time(), "remote_closed", 0, 0)
    store.close()
    port = free_port()
    args = [str(BIN), "serve", "--app", "record", "--port", str(port), "--http-port", "0",
            "--data-dir", str(data)]
    # The killed server's job comes back when its lease expires: a short one keeps this quick.
    env = {**os.environ, "AUDIOSOCKET_CLUSTER__JOB_LEASE_S": "2"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    end = time.time() + 60
    while time.time() < end and _job_status(db, "archive_aac") != "running":
        time.sleep(0.05)
    assert _job_status(db, "archive_aac") == "running"
    time.sleep(0.3)  # FFmpeg is writing now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    subprocess.run(["pkill", "-9", "-f", str(data / "archive")], check=False)  # orphaned ffmpeg
    assert not (data / "archive" / f"{call_id}.m4a").exists()  # nothing half-written published
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_port(port)
        end = time.time() + 180
        while time.time() < end and not all(
            _job_status(db, s) == "done" for s in ("archive_aac", "archive_mp3")
        ):
            time.sleep(0.2)
        assert _job_status(db, "archive_aac") == "done"
        assert _job_status(db, "archive_mp3") == "done"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert wav.read_bytes() == wav_bytes  # no recording lost or changed
    import asyncio

    from helpers.postcall.archive import probe_duration

    for fmt in ("m4a", "mp3"):
        got = asyncio.run(probe_duration(data / "archive" / f"{call_id}.{fmt}"))
        assert abs(got - seconds) <= 0.1
    leftovers = [p.name for p in (data / "archive").iterdir() if "partial" in p.name]
    assert leftovers == []
