"""``serve --log-format json``: every line the process writes is one JSON object, aiohttp's
tracebacks included (they used to come out as many plain lines)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

from tests.audiosocket.root.test_cli import BIN, free_port, wait_port

# Requests aiohttp refuses and logs with a traceback ("Error handling request from ..."),
# and one that made a handler raise (a 500 with a traceback) before the fix.
PROVOKE = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nB@D\x01 / HTTP/1.1\r\n\r\n",
    b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /static/%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
]


def _send(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(raw)
        s.settimeout(5)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def test_every_line_is_one_json_object(tmp_path: Path) -> None:
    port, http = free_port(), free_port()
    proc = subprocess.Popen(
        [str(BIN), "serve", "--app", "echo", "--port", str(port), "--http-port", str(http),
         "--data-dir", str(tmp_path / "var"), "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )
    try:
        wait_port(port)
        wait_port(http)
        answers = [_send(http, raw) for raw in PROVOKE]
        assert b" 400 " in answers[0].split(b"\r\n")[0], answers[0]
        # An AudioSocket peer that sends garbage: a protocol warning.
        _send(port, b"\x07\x00\x00")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    records = []
    for stream in (out, err):
        for line in stream.decode().splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
            assert isinstance(obj, dict), line
            records.append(obj)
    events = [r.get("event", "") for r in records]
    assert "listening" in events and "protocol_error" in events
    # aiohttp's own error, with its traceback in one field rather than lines of its own.
    aio = [r for r in records if r.get("logger") == "aiohttp.server"]
    assert aio and all("exception" in r and r["level"] == "error" for r in aio), aio
    assert all("timestamp" in r and "level" in r for r in records)
