"""Starting child processes without ``fork()``: the one module of the product that may.

Why it exists: the server runs thread pools inside native libraries (OpenBLAS and OpenMP
under numpy, CTranslate2, onnxruntime, torch). ``fork()`` in such a process runs their
``pthread_atfork`` handlers, and OpenBLAS's handler waits for its worker threads; when
another thread is inside a BLAS call at that moment, the forking thread waits for ever. The
server once hung for good exactly so: uvloop's ``create_subprocess_exec`` is libuv's
``uv_spawn``, a plain ``fork()``, called on the event-loop thread while a post-call
transcript ran numpy in another thread.

CPython's :mod:`subprocess` on Linux starts children with ``vfork()`` (or
``posix_spawn``) whenever no ``preexec_fn``, ``user``, ``group`` or ``extra_groups`` is
given: the child borrows the parent's memory until it ``exec``\\ s and no atfork handler
runs. Everything here goes through that path, checks at import that it is on, and never
passes an argument that would turn it off. The waiting is done by a thread (blocking
``select`` on the child's stderr), so no event loop ever owns the child: that keeps uvloop's
and asyncio's own spawners, and their child watchers, out of the process entirely.

``tests/test_no_fork.py`` fails if any other product module starts a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prometheus_client import Counter

__all__ = [
    "DEVNULL",
    "PIPE",
    "Finished",
    "SpawnTimeout",
    "Stream",
    "run",
    "run_async",
    "start",
    "stream",
]

DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE

PROCESSES_STARTED = Counter(
    "audiosocket_processes_started_total",
    "Child processes started (always by vfork/posix_spawn, never fork)",
    ["program"],
)

# Python 3.11 exposes the switch; if a future CPython or a test turned it off, children
# would be started by fork() again, which is the bug this module exists to prevent.
if not getattr(subprocess, "_USE_VFORK", True):  # pragma: no cover - defensive
    raise ImportError("subprocess._USE_VFORK is off: child processes would be forked")

_Std = int | IO[Any] | None


class SpawnTimeout(TimeoutError):
    """The child ran past its time limit; it has been killed and reaped."""

    def __init__(self, cmd: Sequence[str], timeout_s: float, stderr_tail: bytes) -> None:
        super().__init__(f"{Path(cmd[0]).name} timed out after {timeout_s:g} s")
        self.stderr_tail = stderr_tail


@dataclass(frozen=True)
class Finished:
    """A child that has exited: its return code (negative: killed by that signal), its
    whole stdout when it was captured, and the tail of its stderr."""

    returncode: int
    stdout: bytes
    stderr_tail: bytes


def start(
    cmd: Sequence[str],
    *,
    stdin: _Std = DEVNULL,
    stdout: _Std = DEVNULL,
    stderr: _Std = PIPE,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` by vfork/exec (no atfork handlers run) and return it, not waited for.

    Blocking for the duration of the ``exec`` (about a millisecond); call from a thread when
    on an event loop (:func:`run_async` does).
    """
    argv = [str(c) for c in cmd]
    # close_fds=True and no preexec_fn/user/group: the conditions for CPython's vfork path.
    proc = subprocess.Popen(
        argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env, close_fds=True
    )
    PROCESSES_STARTED.labels(program=Path(argv[0]).name).inc()
    return proc


def _kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()


def _collect(
    proc: subprocess.Popen[bytes], timeout_s: float | None, tail: int, input_: bytes | None
) -> Finished:
    argv = [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)]
    """Read the child's stdout (whole) and stderr (tail only) until it exits or the deadline
    passes. Runs in whichever thread calls it; the child is always reaped before return."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    out = bytearray()
    err = bytearray()
    streams: dict[int, bytearray] = {}
    if proc.stdout is not None:
        streams[proc.stdout.fileno()] = out
    if proc.stderr is not None:
        streams[proc.stderr.fileno()] = err
    try:
        if input_ is not None and proc.stdin is not None:
            # Small inputs only (the product never feeds a child more than a pipe's worth).
            proc.stdin.write(input_)
            proc.stdin.close()
        while streams:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise SpawnTimeout(argv, timeout_s or 0.0, bytes(err[-tail:]))
            ready, _, _ = select.select(list(streams), [], [], wait)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    del streams[fd]
                    continue
                buf = streams[fd]
                buf.extend(chunk)
                if buf is err and len(err) > 2 * tail:
                    # Progress output of a long decode is unbounded: keep the tail only.
                    del err[: len(err) - tail]
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            rc = proc.wait(wait)
        except subprocess.TimeoutExpired:
            raise SpawnTimeout(argv, timeout_s or 0.0, bytes(err[-tail:])) from None
    finally:
        _kill_and_reap(proc)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
    return Finished(rc, bytes(out), bytes(err[-tail:]))


class Stream:
    """A running child whose stdout is read in chunks as it comes (see :func:`stream`).

    Its stderr is drained alongside (only the tail kept), so a chatty child never blocks on
    a full stderr pipe while we are reading stdout.
    """

    def __init__(
        self, proc: subprocess.Popen[bytes], argv: list[str], timeout_s: float | None, tail: int
    ) -> None:
        self.proc = proc
        self.argv = argv
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._tail = tail
        self._err = bytearray()

    @property
    def stderr_tail(self) -> bytes:
        """The last ``tail`` bytes the child wrote to stderr so far."""
        return bytes(self._err[-self._tail:])

    def _remaining(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SpawnTimeout(self.argv, self.timeout_s or 0.0, self.stderr_tail)
        return left

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """Yield stdout in chunks of at most ``size`` bytes until it closes. Raises
        :class:`SpawnTimeout` past the deadline (the ``with`` block then kills the child)."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out_fd, err_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        open_fds = [out_fd, err_fd]
        while out_fd in open_fds:
            ready, _, _ = select.select(open_fds, [], [], self._remaining())
            if not ready:
                continue  # the deadline passed: _remaining raises on the next turn
            if err_fd in ready:
                chunk = os.read(err_fd, 65536)
                if not chunk:
                    open_fds.remove(err_fd)
                else:
                    self._err.extend(chunk)
                    if len(self._err) > 2 * self._tail:
                        del self._err[: len(self._err) - self._tail]
            if out_fd in ready:
                chunk = os.read(out_fd, size)
                if not chunk:
                    open_fds.remove(out_fd)
                else:
                    yield chunk

    def wait(self) -> int:
        """Drain what is left of stderr, wait for the exit within the deadline, return
        the exit code. Raises :class:`SpawnTimeout`."""
        for _ in self.chunks():
            pass  # stdout the caller did not want; bounded by the deadline
        if self.proc.stderr is not None:
            while True:
                ready, _, _ = select.select([self.proc.stderr], [], [], self._remaining())
                if not ready:
                    continue
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    break
                self._err.extend(chunk)
                del self._err[: max(0, len(self._err) - self._tail)]
        try:
            return self.proc.wait(self._remaining())
        except subprocess.TimeoutExpired:
            raise SpawnTimeout(self.argv, self.timeout_s or 0.0, self.stderr_tail) from None


@contextlib.contextmanager
def stream(
    cmd: Sequence[str],
    *,
    timeout_s: float | None,
    tail: int = 8192,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Stream]:
    """Start ``cmd`` with its stdout on a pipe, for reading in chunks (blocking; off the
    event loop). However the ``with`` block ends (done, a limit hit, an exception, a
    :class:`SpawnTimeout`), the child is killed if still running and always reaped, so a
    caller that stops reading early never leaves a process or a pipe behind."""
    proc = start(cmd, stdout=PIPE, stderr=PIPE, cwd=cwd, env=env)
    try:
        yield Stream(proc, [str(c) for c in cmd], timeout_s, tail)
    finally:
        _kill_and_reap(proc)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def run(
    cmd: Sequence[str],
    *,
    timeout_s: float | None,
    capture_stdout: bool = False,
    input_: bytes | None = None,
    tail: int = 8192,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> Finished:
    """Run ``cmd`` to its end (blocking; off the event loop). Raises :class:`SpawnTimeout`
    after ``timeout_s`` with the child killed and reaped; never raises for a non-zero exit."""
    proc = start(
        cmd,
        stdin=PIPE if input_ is not None else DEVNULL,
        stdout=PIPE if capture_stdout else DEVNULL,
        stderr=PIPE,
        cwd=cwd,
        env=env,
    )
    return _collect(proc, timeout_s, tail, input_)


async def run_async(
    cmd: Sequence[str], *, timeout_s: float | None, capture_stdout: bool = False,
    tail: int = 8192, on_start: Callable[[int], None] | None = None,
    on_exit: Callable[[int], None] | None = None,
) -> Finished:
    """:func:`run` for coroutines: the start and the wait happen in a worker thread.

    Cancelling the caller kills the child and waits until it is reaped before the
    cancellation propagates, so a cancelled job never leaves a process behind.
    ``on_start(pid)`` and ``on_exit(pid)`` are called from the worker thread (bookkeeping).
    """
    loop = asyncio.get_running_loop()
    holder: list[subprocess.Popen[bytes]] = []
    cancelled = threading.Event()

    def kill() -> None:
        if holder:
            with contextlib.suppress(ProcessLookupError):
                holder[0].kill()

    def work() -> Finished:
        proc = start(cmd, stdout=PIPE if capture_stdout else DEVNULL, stderr=PIPE)
        holder.append(proc)
        if on_start is not None:
            on_start(proc.pid)
        if cancelled.is_set():  # cancelled while the child was being started
            kill()
        try:
            return _collect(proc, timeout_s, tail, None)
        finally:
            if on_exit is not None:
                on_exit(proc.pid)

    fut = loop.run_in_executor(None, work)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        cancelled.set()
        kill()
        # The thread returns as soon as the killed child's pipes close; wait for it (through
        # further cancels) so the process is reaped before the cancellation propagates.
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller sees
        raise
