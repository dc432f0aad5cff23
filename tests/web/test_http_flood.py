"""The HTTP port flooded under a low open-file limit: calls still run (issue 13, point 1).

``audiosocket serve`` runs as a user runs it, under ``prlimit`` so its open-file limit is
small enough to exhaust: before the fix, a few hundred connections that sent ``G`` and
stopped took every descriptor, and new calls were accepted and dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audiosocket.caller import place_call
from tests.audiosocket.root.test_cli import free_port

BIN = Path(sys.executable).parent / "audiosocket"
FRAME = 320

pytestmark = pytest.mark.skipif(not Path("/usr/bin/prlimit").exists(), reason="no prlimit")


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("event") == name:
                out.append(rec)
    return out


def serve(tmp_path: Path, nofile: str, port: int, http_port: int,
          **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``audiosocket serve --app echo`` under ``prlimit --nofile``; returns it and its log."""
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        ["prlimit", f"--nofile={nofile}", "--", str(BIN), "serve", "--app", "echo",
         "--port", str(port), "--http-port", str(http_port), "--data-dir",
         str(tmp_path / "var")],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path,
        env={**os.environ, "AUDIOSOCKET_LOG_FORMAT": "json", **env},
    )
    end = time.monotonic() + 60
    while not events(log, "ready"):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise AssertionError(log.read_text())
        time.sleep(0.1)
    return proc, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()  # never leave a server behind for the rest of the suite
        raise


def noise(frames: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    s = rng.integers(200, 20000, frames * FRAME // 2) * rng.choice([-1, 1], frames * FRAME // 2)
    pcm = s.astype("<i2").tobytes()
    return [pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME)]


async def echo_ok(port: int, seed: int) -> bool:
    """One echo call: every sample back, in order (silence frames aside)."""
    chunks = noise(50, seed)
    result = await place_call("127.0.0.1", port, chunks=chunks, linger=0.5, max_seconds=30)
    got = bytes(result.received)
    frames = [got[i : i + FRAME] for i in range(0, len(got), FRAME)]
    return b"".join(f for f in frames if f != bytes(FRAME)) == b"".join(chunks)


async def http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1]) if line else 0
    finally:
        writer.close()


async def fetch(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
        return data.decode(errors="replace")
    finally:
        writer.close()


async def test_flooded_http_port_keeps_calls_bit_exact_and_counts_the_flood_once(
    tmp_path: Path,
) -> None:
    port, http = free_port(), free_port()
    # 256 descriptors, soft = hard: raising the soft limit cannot help. The head timeout is
    # long so the flood holds for the whole test; live latency off so no audio is dropped
    # for a late caller on a busy machine.
    proc, log = serve(tmp_path, "256:256", port, http, AUDIOSOCKET_WEB__HEAD_TIMEOUT_S="120",
                      AUDIOSOCKET_LIVE_LATENCY_MS="0")
    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(300):  # more than the process could ever hold
            with contextlib.suppress(OSError):
                r, w = await asyncio.open_connection("127.0.0.1", http)
                w.write(b"G")
                flood.append((r, w))

        async def answer(r: asyncio.StreamReader) -> bytes | None:
            try:
                return await asyncio.wait_for(r.read(), 5)
            except TimeoutError:
                return None  # still held open by the server: accepted
            except OSError:
                return b""

        answers = await asyncio.gather(*(answer(r) for r, _ in flood))
        # With the port flooded: calls connect and come back bit for bit, several at once.
        oks = await asyncio.gather(*(echo_ok(port, seed) for seed in range(4)))
        assert all(oks), oks
        held = sum(a is None for a in answers)
        # Closed at once: a 503, or a reset when the "G" was still unread at the close.
        refused = sum(1 for a in answers if a is not None)
        assert any(a.startswith(b"HTTP/1.1 503") for a in answers if a)
        # /healthz is refused cleanly (a 503, not a hang) while the flood holds the cap.
        assert await http_status(http, "/healthz") == 503
        (limits,) = events(log, "http_limits")
        assert held == limits["max_connections"]
        assert refused == len(flood) - held
        assert len(events(log, "http_flood")) == 1
        for _, w in flood:
            w.close()
        flood.clear()
        metrics = ""
        for _ in range(100):
            await asyncio.sleep(0.1)
            with contextlib.suppress(OSError, TimeoutError):
                metrics = await fetch(http, "/metrics")
                if metrics.startswith("HTTP/1.1 200"):
                    break
        assert "audiosocket_http_floods_total 1.0" in metrics
        refused_total = sum(
            float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith("audiosocket_http_connections_refused_total{"))
        assert refused_total == refused + 1  # the flood, and the /healthz above
        assert await echo_ok(port, 9)
    finally:
        for _, w in flood:
            w.close()
        stop(proc)
    assert len(events(log, "http_flood")) == 1  # logged once, not per connection


def test_soft_open_file_limit_is_raised_to_the_hard_limit_and_logged(tmp_path: Path) -> None:
    proc, log = serve(tmp_path, "256:2048", free_port(), 0)
    try:
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        (line,) = [ln for ln in limits.splitlines() if ln.startswith("Max open files")]
        assert line.split()[3:5] == ["2048", "2048"]
    finally:
        stop(proc)
    (raised,) = events(log, "nofile_limit")
    assert (raised["soft"], raised["hard"], raised["was"]) == (2048, 2048, 256)
    # 2048 descriptors cannot hold the default 2000 calls: said at start-up, with how many.
    (short,) = events(log, "nofile_limit_short")
    assert short["max_calls"] == 2000 and 0 < short["calls_fit"] < 2000
