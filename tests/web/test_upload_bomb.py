"""A decompression bomb uploaded to a real ``audiosocket serve``: refused, memory bounded.

The server's peak RSS (``VmHWM``) is read from ``/proc`` before and after each upload; the
old whole-file decode took it from 70 MB to 1.38 GB (issue 13, point 2).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.audiosocket.root.test_cli import free_port, serve, wait_port
from tests.helpers.decode_bombs import honest_bomb, lying_bomb

pytestmark = pytest.mark.slow  # real FFmpeg, a real server process
MAX_GROWTH_MB = 50


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _upload(http: int, body: bytes, name: str) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{http}/api/uploads", data=body, method="POST",
        headers={"Content-Type": "audio/flac", "X-Filename": name},
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bomb_upload_refused_with_bounded_memory(tmp_path: Path) -> None:
    bombs = [honest_bomb(tmp_path / "honest.flac"), lying_bomb(tmp_path / "lying.flac")]
    port, http = free_port(), free_port()
    proc = serve(tmp_path, "echo", port, http)
    try:
        wait_port(http)
        base = _peak_rss_mb(proc.pid)
        for bomb in bombs:
            started = time.monotonic()
            status, body = _upload(http, bomb.read_bytes(), bomb.name)
            elapsed = time.monotonic() - started
            assert status == 422, body
            assert body["error"] == "invalid_audio" and body["reason"] == "too_long", body
            assert bomb.name in str(body["detail"])
            # Target 2 s (measured 0.3 s and 1.2 s); generous for a loaded shared machine.
            assert elapsed < 20, (bomb.name, elapsed)
            growth = _peak_rss_mb(proc.pid) - base
            assert growth < MAX_GROWTH_MB, (bomb.name, growth)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=30) as resp:
            assert resp.status == 200
        var = tmp_path / "var"
        assert list((var / "uploads").glob("*")) == []
        assert list((var / "recordings").glob("*")) == []  # no partial WAV left
    finally:
        proc.terminate()
        proc.wait(timeout=60)
