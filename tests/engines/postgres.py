"""PostgreSQL for the tests: one throw-away cluster per pytest session, a database per test.

The binaries are ``$AUDIOSOCKET_PG_BIN`` if set, else the newest
``/usr/lib/postgresql/*/bin`` (``scripts/system-deps.sh`` installs Debian's ``postgresql``).
The cluster is made once per session (per xdist worker: each has its own) in a temporary
directory, in memory-backed /dev/shm when it has room: ``initdb`` as ``nobody`` when we are
root (PostgreSQL refuses to run as root), ``fsync=off``, listening on a unix socket in that
directory and on 127.0.0.1 at a free port.
A template database gets the store's schema once; every test then gets
``CREATE DATABASE … TEMPLATE`` of it (20-50 ms in /dev/shm; 100-700 ms on this machine's
disk) and drops it afterwards. At the end of the
session the server is stopped by its PID and the directory removed.

Without the binaries the tests that need PostgreSQL are skipped, except under ``CI=true``,
where they fail: CI must run them.

Fixtures: ``pg_cluster`` (session), ``pg_url`` (a fresh database's URL per test) and
``store_target`` (parametrized: a SQLite data directory or a PostgreSQL URL, what
``CallStore(...)`` and ``open_store`` take).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PgCluster", "pg_bin_dir", "pg_cluster", "pg_url", "store_target"]

TEMPLATE = "audiosocket_tmpl"
_names = itertools.count(1)


def pg_bin_dir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are, or None."""
    env = os.environ.get("AUDIOSOCKET_PG_BIN")
    if env:
        p = Path(env)
        return p if (p / "initdb").is_file() and (p / "postgres").is_file() else None
    found: list[tuple[float, Path]] = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        try:
            version = float(d.parent.name)
        except ValueError:
            continue
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            found.append((version, d))
    return max(found)[1] if found else None


def _scratch() -> str | None:
    """Memory-backed /dev/shm when there is room (CREATE DATABASE copies files: several
    times faster there on a busy disk), else the usual temporary directory."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    room = st.f_bavail * st.f_frsize
    return "/dev/shm" if room > 1 << 30 and os.access("/dev/shm", os.W_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """A private PostgreSQL server: :meth:`start`, :meth:`create_db`, :meth:`stop`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="aspg-", dir=_scratch()))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: Any = None
        self._user: str | None = "nobody" if os.geteuid() == 0 else None

    # ---- addresses -------------------------------------------------------------------

    def url(self, db: str = "postgres", *, tcp: bool = False) -> str:
        """The URL of database ``db``: over the unix socket (default) or TCP."""
        if tcp:
            return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"
        return f"postgresql://postgres@/{db}?host={self.dir}&port={self.port}"

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> PgCluster:
        data = self.dir / "data"
        if self._user is not None:
            pw = pwd.getpwnam(self._user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        t = time.monotonic()
        done = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            user=self._user, capture_output=True, timeout=120, check=False, cwd=self.dir,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')[-2000:]}")
        self.initdb_s = time.monotonic() - t
        self.port = free_port()
        log = open(self.dir / "postgres.log", "wb")  # the child keeps its own copy
        t = time.monotonic()
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(data),
             "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
             "-c", f"unix_socket_directories={self.dir}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200", "-c", "shared_buffers=64MB",
             "-c", "log_min_messages=warning", "-c", "logging_collector=off"],
            user=self._user, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(timeout)
        self.start_s = time.monotonic() - t
        self._make_template()
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited {self.proc.returncode}: {self.log_tail()}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"postgres not ready in {timeout} s: {self.log_tail()}"
                    ) from None
                time.sleep(0.02)

    def log_tail(self) -> str:
        try:
            return (self.dir / "postgres.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def admin(self, sql: str) -> None:
        """Run one statement on the ``postgres`` database (outside a transaction), on a
        connection kept for the session."""
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.url(), autocommit=True)
        self._admin.execute(sql)  # type: ignore[arg-type]

    def _make_template(self) -> None:
        from helpers.store.db import CallStore

        self.admin(f"CREATE DATABASE {TEMPLATE}")
        CallStore(self.url(TEMPLATE)).open().close()

    def create_db(self) -> str:
        """A new database with the store's schema (a copy of the template); its name."""
        name = f"t{os.getpid()}_{next(_names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return name

    def drop_db(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL if it lingers; remove the directory."""
        proc, self.proc = self.proc, None
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """This session's PostgreSQL (skipped without binaries, failed under CI=true)."""
    bindir = pg_bin_dir()
    if bindir is None:
        msg = ("PostgreSQL not found: set AUDIOSOCKET_PG_BIN or install postgresql "
               "(scripts/system-deps.sh)")
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    cluster = PgCluster(bindir)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database with the current schema, dropped after the test."""
    name = pg_cluster.create_db()
    yield pg_cluster.url(name)
    pg_cluster.drop_db(name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: Any, tmp_path: Path) -> str | Path:
    """Where a test's store lives: a SQLite data directory, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path
    return str(request.getfixturevalue("pg_url"))
