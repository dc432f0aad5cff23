"""Scale-out end to end: two servers, a job worker and an STT worker on PostgreSQL and NATS.

Everything is real and separate processes, as in docs/SCALE-OUT.md: a PostgreSQL database
(``cluster.store``), a nats-server with JetStream (``cluster.nats``), two ``audiosocket
serve`` with the ``transcribe`` app, live STT sent to ``audiosocket worker --stt``
(``cluster.stt_remote``), post-call jobs left to ``audiosocket worker``
(``postcall.workers_in_server = false``), recordings on one shared directory. Six calls with
real speech, three on each server at once. Then both portals must list all six with their
live and final transcripts, archives and summaries, and every job must have run exactly
once (one attempt, no duplicate rows). And a job worker killed mid-transcript costs only time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path
from typing import Any

import pytest

from tests.engines.nats import NatsServer
from tests.engines.postgres import free_port
from tests.helpers.speech_fixtures import silence, synth_speech

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "audiosocket"
SENTENCE = "Hello, I am calling about my order. It has not arrived yet, please call me back."


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()[-3000:]}")
        if _get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"not healthy in {timeout} s: {log.read_text()[-3000:]}")


def _write_wav(path: Path, pcm: bytes, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes(pcm)


def _pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())


def test_two_servers_and_two_workers_share_one_store(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    shared = tmp_path / "shared"
    env = {
        **os.environ,
        "AUDIOSOCKET_CLUSTER__STORE": pg_url,
        "AUDIOSOCKET_CLUSTER__NATS": nats_server.url,
        "AUDIOSOCKET_CLUSTER__STT_REMOTE": "true",
        "AUDIOSOCKET_CLUSTER__SHARED_DIR": str(shared),
        "AUDIOSOCKET_CLUSTER__JOB_LEASE_S": "10",
        "AUDIOSOCKET_POSTCALL__WORKERS_IN_SERVER": "false",
        "AUDIOSOCKET_STT__WORKERS": "1",
        "AUDIOSOCKET_LOG_FORMAT": "json",
    }
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([str(BIN), *args], cwd=ROOT, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT)
        procs.append((name, proc, log))
        return proc

    servers: list[tuple[int, int]] = []
    try:
        start("stt-worker", "worker", "--stt", "--data-dir", str(tmp_path / "w-stt"))
        start("job-worker", "worker", "--data-dir", str(tmp_path / "w-jobs"))
        for name in ("a", "b"):
            port, http = free_port(), free_port()
            proc = start(f"serve-{name}", "serve", "--app", "transcribe", "--port", str(port),
                         "--http-port", str(http), "--data-dir", str(tmp_path / name))
            servers.append((port, http))
        for (_, http), (_name, proc, log) in zip(servers, procs[2:], strict=True):
            _wait_healthy(http, proc, log, timeout=120)

        wav = tmp_path / "caller.wav"
        _write_wav(wav, silence(0.5) + synth_speech(SENTENCE) + silence(1.5))

        async def place(port: int) -> str:
            proc = await asyncio.create_subprocess_exec(
                str(BIN), "call", str(wav), "--port", str(port), "--silence", "--linger",
                "1.5", "--max-seconds", "30", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()[-2000:]
            return out.decode().split()[0]

        async def calls() -> list[str]:
            return await asyncio.gather(*(place(servers[i % 2][0]) for i in range(6)))

        uuids = asyncio.run(calls())
        assert len(set(uuids)) == 6

        # Both portals see every call, whichever server took it, once the workers are done.
        wanted = {"archive_aac", "archive_mp3", "peaks", "transcript", "summary"}
        deadline = time.monotonic() + 300
        views: dict[int, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            views = {}
            for _, http in servers:
                status, page = _get(f"http://127.0.0.1:{http}/api/calls?limit=50")
                assert status == 200
                for item in page["items"]:
                    _, detail = _get(f"http://127.0.0.1:{http}/api/calls/{item['uuid']}")
                    views.setdefault(http, {})[item["audiosocket_uuid"]] = detail
            done = all(
                set(view) >= set(uuids)
                and all(d and d["jobs"] and set(d["jobs"]) >= wanted
                        and set(d["jobs"].values()) == {"done"} for d in view.values())
                for view in views.values()
            ) and len(views) == 2
            if done:
                break
            time.sleep(1)
        for _, http in servers:
            view = views.get(http, {})
            assert set(view) == set(uuids), f"portal :{http} lists {sorted(view)}"
            for uuid, d in view.items():
                assert d["end_reason"], uuid
                assert set(d["jobs"].values()) == {"done"}, (uuid, d["jobs"])
                assert {"wav", "m4a", "mp3"} <= set(d["recordings"]), (uuid, d["recordings"])
                assert d["summary"] and d["summary"]["text"], uuid
                caller = [ln for ln in d["transcript"] if ln["speaker"] == "caller"]
                assert caller, (uuid, d["transcript"])
                text = " ".join(ln["text"].lower() for ln in caller)
                assert "order" in text, (uuid, text)
        # The calls split over both servers, and each recording is on the shared directory.
        nodes = _pg_rows(pg_url, "SELECT node, count(*) FROM calls GROUP BY node")
        assert len(nodes) == 2 and sorted(n for _, n in nodes) == [3, 3], nodes
        # Live lines came from the STT worker: the servers loaded no Whisper of their own.
        live = _pg_rows(pg_url, "SELECT count(DISTINCT call_uuid) FROM segments "
                                "WHERE kind = 'live' AND speaker = 'caller'")
        assert live[0][0] == 6, live
        # Exactly once: one row per (call, step), each done on its first attempt.
        jobs = _pg_rows(pg_url, "SELECT call_uuid, step, status, attempts FROM jobs")
        assert len(jobs) == 6 * len(wanted)
        assert len({(c, s) for c, s, _, _ in jobs}) == len(jobs)
        assert all(st == "done" and att == 1 for _, _, st, att in jobs), jobs
        finals = _pg_rows(pg_url, "SELECT call_uuid, start, count(*) FROM segments "
                                  "WHERE kind = 'final' GROUP BY call_uuid, start "
                                  "HAVING count(*) > 1")
        assert finals == [], finals  # no line of a final transcript written twice
        for p in shared.glob("recordings/*.wav"):
            assert p.stat().st_size > 44
    finally:
        for _name, proc, _log in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc, log in procs:
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(5)
            if code not in (0, -signal.SIGTERM):
                print(f"{name} exited {code}:\n{log.read_text()[-3000:]}")


def test_a_killed_job_worker_costs_only_time_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """SIGKILL the only job worker while it transcribes; a new one finishes everything
    within the lease plus the steps' time, each job done once, no row written twice."""
    env = {
        **os.environ,
        "AUDIOSOCKET_CLUSTER__STORE": pg_url,
        "AUDIOSOCKET_CLUSTER__SHARED_DIR": str(tmp_path / "shared"),
        "AUDIOSOCKET_CLUSTER__JOB_LEASE_S": "3",
        "AUDIOSOCKET_POSTCALL__WORKERS_IN_SERVER": "false",
        "AUDIOSOCKET_LOG_FORMAT": "json",
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "wb") as fh:
            proc = subprocess.Popen([str(BIN), *args], cwd=ROOT, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        port, http = free_port(), free_port()
        server = start("serve", "serve", "--app", "record", "--port", str(port),
                       "--http-port", str(http), "--data-dir", str(tmp_path / "s"))
        _wait_healthy(http, server, tmp_path / "serve.log", timeout=60)
        first = start("worker-1", "worker", "--data-dir", str(tmp_path / "w1"))
        wav = tmp_path / "caller.wav"
        _write_wav(wav, synth_speech(SENTENCE) + silence(0.5) + synth_speech(SENTENCE))
        for _ in range(3):
            out = subprocess.run(
                [str(BIN), "call", str(wav), "--port", str(port), "--linger", "0.5"],
                cwd=ROOT, env=env, capture_output=True, timeout=60,
            )
            assert out.returncode == 0, out.stderr.decode()[-2000:]
        # Kill it in the middle of a transcript (the step that writes rows).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = _pg_rows(pg_url, "SELECT id FROM jobs WHERE status = 'running' "
                                       "AND step = 'transcript'")
            if running:
                break
            assert first.poll() is None, (tmp_path / "worker-1.log").read_text()[-3000:]
            time.sleep(0.05)
        assert running, "no transcript ever ran"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        start("worker-2", "worker", "--data-dir", str(tmp_path / "w2"))
        while time.monotonic() < killed_at + 180:
            states = _pg_rows(pg_url, "SELECT status, count(*) FROM jobs GROUP BY status")
            if dict(states).get("done") == 15:
                break
            time.sleep(0.5)
        took = time.monotonic() - killed_at
        print(f"everything done {took:.1f} s after the kill (lease 3 s)")
        jobs = _pg_rows(pg_url, "SELECT call_uuid, step, status, attempts, worker FROM jobs")
        assert len(jobs) == 15 and all(st == "done" for _, _, st, _, _ in jobs), jobs
        rerun = [j for j in jobs if j[3] == 2]
        assert rerun, "the killed worker's job was not taken again"
        # ... by the second worker (``<node>/<pid>/<n>``), not by a ghost of the first.
        assert all(w.split("/")[-2] != str(first.pid) for *_, w in rerun), rerun
        dupes = _pg_rows(pg_url, "SELECT call_uuid, start, count(*) FROM segments "
                                 "WHERE kind = 'final' GROUP BY call_uuid, start "
                                 "HAVING count(*) > 1")
        assert dupes == []
        finals = _pg_rows(pg_url, "SELECT count(DISTINCT call_uuid) FROM segments "
                                  "WHERE kind = 'final'")
        assert finals[0][0] == 3
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
