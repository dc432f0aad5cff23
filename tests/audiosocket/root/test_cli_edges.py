"""Rough edges a new user hit with the console script (issue 16, point 8): each must end in
a one-line message and exit code, never a traceback."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audiosocket.root.cli import build_parser

BIN = Path(sys.executable).parent / "audiosocket"


def run(args: list[str], cwd: Path, timeout: float = 60.0,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def listener() -> socket.socket:
    """A socket listening on a free loopback port (the port a user forgot is taken)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("which", ["audiosocket", "http"])
def test_serve_port_in_use_is_one_line_exit_2(tmp_path: Path, which: str) -> None:
    busy = listener()
    try:
        port = busy.getsockname()[1]
        other = free_port()
        audio_port, http_port = (port, other) if which == "audiosocket" else (other, port)
        started = time.monotonic()
        # The IVR app warms its prompts up for ~15 s: the check must come before that.
        proc = run(["serve", "--app", "ivr", "--port", str(audio_port),
                    "--http-port", str(http_port), "--data-dir", str(tmp_path / "var")],
                   tmp_path, timeout=120, env={"AUDIOSOCKET_LOG_FORMAT": "console"})
        elapsed = time.monotonic() - started
    finally:
        busy.close()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    assert str(port) in out and "in use" in out, out
    # Generous for a busy 2-core machine; the warm-up alone is ~15 s.
    assert elapsed < 10, (elapsed, out)


@pytest.mark.parametrize("flags, word", [
    (["--rate", "11025"], "--rate"),
    (["--uuid", "not-a-uuid"], "--uuid"),
    (["--dtmf", "12x"], "--dtmf"),
])
def test_call_bad_options_exit_2_before_connecting(
    tmp_path: Path, flags: list[str], word: str
) -> None:
    # A listener that never answers: the bad option must be refused before connecting.
    busy = listener()
    busy.settimeout(0.1)
    try:
        proc = run(["call", "--port", str(busy.getsockname()[1]), "--linger", "0.5",
                    "--answer-timeout", "1", *flags], tmp_path)
        with pytest.raises(TimeoutError):
            busy.accept()[0].close()
    finally:
        busy.close()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert word in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _walk(parser: argparse.ArgumentParser, path: list[str]) -> list[str]:
    problems: list[str] = []
    text = parser.format_help()
    if "``" in text:
        problems.append(f"{' '.join(path) or 'audiosocket'}: RST markup in --help")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    problems.append(f"{' '.join([*path, name])}: no help text")
                problems += _walk(sub, [*path, name])
        elif not action.help:
            problems.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}: "
                            "no help text")
    return problems


def test_help_has_text_for_everything_and_no_rst() -> None:
    assert _walk(build_parser(), []) == []


def test_help_as_printed(tmp_path: Path) -> None:
    proc = run(["--help"], tmp_path)
    assert proc.returncode == 0
    assert "``" not in proc.stdout and "serve" in proc.stdout


def test_models_fetch_offline_leaves_no_directory(tmp_path: Path) -> None:
    dest = tmp_path / "models"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run(["models", "fetch", "google/flan-t5-small", "--dest", str(dest)], tmp_path,
               env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not dest.exists(), list(dest.rglob("*"))
    # An existing --dest stays, only what the run created goes.
    dest.mkdir()
    proc = run(["models", "fetch", "google/flan-t5-small", "--dest", str(dest)], tmp_path,
               env=env)
    assert proc.returncode == 1
    assert dest.is_dir() and list(dest.iterdir()) == []


def test_models_fetch_web_offline_leaves_no_directory(tmp_path: Path) -> None:
    dest = tmp_path / "static" / "models"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run(["models", "fetch-web", "--dest", str(dest)], tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not dest.exists(), list(dest.rglob("*"))


def test_retention_dry_run_says_no_rule_is_set(tmp_path: Path) -> None:
    proc = run(["retention", "--dry-run", "--data-dir", str(tmp_path / "var")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no retention rule" in proc.stdout.lower(), proc.stdout
