"""``serve`` with ``cluster.store`` set and PostgreSQL unreachable: it retries until
``cluster.connect_timeout_s``, then exits 1 with a structured reason, and never falls back
to SQLite (a call written there would be one no portal of the cluster shows)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "audiosocket"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_exits_1_when_the_store_stays_unreachable(tmp_path: Path) -> None:
    data = tmp_path / "var"
    env = {
        **os.environ,
        "AUDIOSOCKET_CLUSTER__STORE": f"postgresql://as:hunter2@127.0.0.1:{free_port()}/calls",
        "AUDIOSOCKET_CLUSTER__CONNECT_TIMEOUT_S": "1.5",
        "AUDIOSOCKET_LOG_FORMAT": "json",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN), "serve", "--app", "echo", "--port", str(free_port()), "--http-port", "0",
         "--data-dir", str(data)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env,
    )
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    why = [e for e in events if e.get("event") == "cannot_start"]
    assert why and why[0]["reason"] == "store_unavailable", out
    assert "not reachable" in why[0]["error"] and "hunter2" not in out
    assert sum(e.get("event") == "store_connect_retry" for e in events) >= 2
    assert not (data / "calls.db").exists()
    assert elapsed < 30, elapsed  # the timeout, plus the interpreter's start
