"""``audiosocket worker`` processes sharing a data directory's store: each job runs exactly
once, ``--steps`` filters, a SIGKILLed worker costs only time, no store means exit 1. Real
processes, real FFmpeg, the bundled Whisper and a real SQLite store."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers.audio import write_wav
from helpers.postcall.jobs import STEPS, PostCallJobs
from helpers.store.db import CallStore
from tests.helpers.speech_fixtures import silence, synth_speech

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent / "audiosocket"
# Short, to keep the kill test quick; not shorter: on a loaded 2-core CI box a process can
# stall for a second or two, and a lease must outlast a stall.
LEASE_S = 3.0
SAYINGS = [
    "My internet connection has been down since yesterday. Please send a technician.",
    "I would like to cancel my subscription and get a refund for this month.",
    "The invoice was charged twice. Can someone call me back about it?",
]


def seed(data: Path, sayings: list[str], repeat: int = 1) -> list[str]:
    """Ended calls with their stereo recordings and queued jobs: what a server that leaves
    the work to workers (``postcall.workers_in_server = false``) leaves in the store. Each
    call says its saying ``repeat`` times."""
    rec = data / "recordings"
    rec.mkdir(parents=True)
    store = CallStore(data).open()
    producer = PostCallJobs(store, data, workers=0)
    ids = []
    for text in sayings:
        cid = uuid.uuid4().hex
        mono = np.frombuffer(silence(0.3) + synth_speech(" ".join([text] * repeat))
                             + silence(0.3), "<i2")
        stereo = np.zeros(len(mono) * 2, "<i2")
        stereo[0::2] = mono
        wav = rec / f"{cid}.wav"
        write_wav(wav, stereo.tobytes(), 8000, channels=2)
        store.call_started(cid, "record", 8000, None, time.time() - 10)
        store.call_ended(cid, time.time(), "remote_closed", 0, 0)
        producer.submit(cid, wav)
        ids.append(cid)
    store.close()
    return ids


def query(data: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{data / 'calls.db'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def jobs(data: Path) -> dict[tuple[str, str], tuple[str, int, str | None]]:
    rows = query(data, "SELECT call_uuid, step, status, attempts, worker FROM jobs")
    return {(str(c), str(s)): (str(st), int(str(a)), w if w is None else str(w))
            for c, s, st, a, w in rows}


def wait_for(check: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:  # stop by PID, whatever the test left running
        if p.poll() is None:
            p.kill()
            p.wait(10)


def start_worker(data: Path, procs: list[subprocess.Popen[bytes]], *extra: str,
                 log: Path | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AUDIOSOCKET_CLUSTER__JOB_LEASE_S": str(LEASE_S),
           "AUDIOSOCKET_LOG_FORMAT": "json"}
    args = [str(BIN), "worker", "--data-dir", str(data), *extra]
    if log is None:
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env)
    else:
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            p = subprocess.Popen(args, stdout=out, stderr=out, env=env)
    procs.append(p)
    return p


def final_segments(data: Path, cid: str) -> list[tuple[object, ...]]:
    return query(data, "SELECT start, \"end\", text FROM segments WHERE call_uuid=? "
                       "AND kind='final' ORDER BY start", (cid,))


def assert_complete_once_each(data: Path, ids: list[str]) -> None:
    for cid in ids:
        segs = final_segments(data, cid)
        assert segs and len(segs) == len(set(segs)), segs  # transcribed, nothing doubled
        formats = {r[0] for r in query(data, "SELECT format FROM recordings WHERE call_uuid=?",
                                       (cid,))}
        assert formats == {"wav", "m4a", "mp3", "peaks"}
        assert query(data, "SELECT count(*) FROM summaries WHERE call_uuid=?", (cid,)) == [(1,)]
        assert (data / "archive" / f"{cid}.m4a").exists()


def test_two_workers_run_every_job_exactly_once(
    tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    ids = seed(data, SAYINGS)
    a = start_worker(data, workers, log=tmp_path / "a.log")
    b = start_worker(data, workers, log=tmp_path / "b.log")
    wait_for(lambda: all(st == "done" for st, _, _ in jobs(data).values()), 240,
             "every job done")
    rows = jobs(data)
    assert set(rows) == {(c, s) for c in ids for s in STEPS}
    assert all(attempts == 1 for _, attempts, _ in rows.values()), rows  # each exactly once
    pids = {str(w).split("/")[1] for _, _, w in rows.values()}
    assert pids <= {str(a.pid), str(b.pid)}
    assert_complete_once_each(data, ids)
    for p in (a, b):
        p.send_signal(signal.SIGTERM)
    assert a.wait(30) == 0 and b.wait(30) == 0


def test_steps_then_sigkill_mid_transcript_costs_only_time(
    tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    # Long calls: a transcript of one saying took ~0.3 s, and beside two CPU hogs the
    # test's polls missed its running state altogether (the suite once timed out waiting).
    ids = seed(data, SAYINGS[:2], repeat=8)
    ffmpeg_steps = {"archive_aac", "archive_mp3", "peaks"}
    # --steps ffmpeg takes only those steps.
    first = start_worker(data, workers, "--steps", "ffmpeg", log=tmp_path / "ffmpeg.log")
    wait_for(lambda: all(st == "done" for (_, s), (st, _, _) in jobs(data).items()
                         if s in ffmpeg_steps), 120, "the FFmpeg steps")
    time.sleep(0.5)
    ai = {k: v for k, v in jobs(data).items() if k[1] not in ffmpeg_steps}
    assert len(ai) == 4 and all(v == ("pending", 0, None) for v in ai.values()), ai
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    # An AI worker, SIGKILLed while a transcript job is running.
    victim = start_worker(data, workers, "--steps", "ai", log=tmp_path / "victim.log")

    def running_transcript() -> tuple[str, str | None] | None:
        for (cid, step), (st, _, w) in jobs(data).items():
            if step == "transcript" and st == "running":
                return cid, w
        return None

    wait_for(running_transcript, 120, "a running transcript")
    time.sleep(0.1)  # into the transcription itself (the model loaded before the claim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    # What the victim held when it died (its two AI slots may both have had a transcript).
    held = {k for k, (st, _, w) in jobs(data).items()
            if st == "running" and w is not None and w.split("/")[1] == str(victim.pid)}
    assert any(step == "transcript" for _, step in held), held
    # Nothing of a killed transcript reached the store: its segments come with its finish.
    assert all(final_segments(data, cid) == [] for cid, step in held if step == "transcript")
    started = time.monotonic()
    rescuer = start_worker(data, workers, log=tmp_path / "rescuer.log")
    wait_for(lambda: all(st == "done" for st, _, _ in jobs(data).values()), 180,
             "every job done after the kill")
    # The lease (3 s) plus a reaper period, the worker's start and the steps themselves.
    assert time.monotonic() - started < 120
    rows = jobs(data)
    for key, (_, attempts, worker) in rows.items():
        # The killed jobs once more, by the rescuer; every other job exactly once.
        assert attempts == (2 if key in held else 1), (key, rows[key])
        if key in held:
            assert worker is not None and worker.split("/")[1] == str(rescuer.pid)
    assert_complete_once_each(data, ids)
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(30) == 0


def test_an_unreachable_store_exits_1_after_connect_timeout(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data directory should be")
    env = {**os.environ, "AUDIOSOCKET_CLUSTER__CONNECT_TIMEOUT_S": "1"}
    started = time.monotonic()
    res = subprocess.run([str(BIN), "worker", "--data-dir", str(not_a_dir)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 1, res.stderr
    assert "store is unreachable" in res.stderr
    assert time.monotonic() - started < 30


async def test_a_server_with_workers_in_server_false_only_queues(tmp_path: Path) -> None:
    from audiosocket.config import load_config
    from audiosocket.root.app import AppContext
    from audiosocket.root.services import close_services, ensure_jobs

    cfg = load_config(overrides={"data_dir": str(tmp_path / "data")},
                      environ={"AUDIOSOCKET_POSTCALL__WORKERS_IN_SERVER": "false",
                               "AUDIOSOCKET_CLUSTER__JOB_LEASE_S": "7"})
    ctx = AppContext(cfg)
    try:
        jobs = await ensure_jobs(ctx)
        assert jobs.workers == 0 and jobs.worker_ids == [] and jobs.listener
        assert jobs.lease_s == 7 and jobs.node == cfg.node
    finally:
        await close_services(ctx)
    ctx = AppContext(load_config(overrides={"data_dir": str(tmp_path / "data")}, environ={}))
    try:
        jobs = await ensure_jobs(ctx)
        assert jobs.workers == 4 and len(jobs.worker_ids) == 4  # the default: as before
    finally:
        await close_services(ctx)
