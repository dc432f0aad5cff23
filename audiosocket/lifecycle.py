"""Process life of ``audiosocket serve``: thread counts, signals, the watchdog, hard deadlines.

Everything here must keep working when the event loop does not: the server once hung for
good inside a ``fork()`` on the loop thread, and then SIGTERM did nothing (asyncio's signal
handlers run *on* the loop) and nothing noticed. So:

* SIGTERM and SIGINT are blocked in every thread and taken by a thread of their own with
  ``sigtimedwait``: the first asks the loop for a graceful stop and arms a hard deadline
  (grace + 5 s) after which the process exits non-zero whatever is stuck; the second exits at
  once. Children inherit the blocked mask, so a Ctrl-C in a terminal reaches the server, which
  stops its FFmpeg itself (they are killed and reaped on cancel).
* A :class:`Watchdog` thread expects a heartbeat from the loop; a stall longer than
  ``stall_s`` is logged once with every thread's stack and counted; past ``exit_s`` the
  process exits non-zero so a supervisor (``asterisk/audiosocket.service``) restarts it.
  Recordings are repaired at start, so a restart loses nothing written.
* Native thread pools are sized before numpy is imported (:func:`limit_native_threads`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable

import structlog
from prometheus_client import Counter, Gauge

from audiosocket.logs import flush_logs

__all__ = [
    "EXIT_FORCED",
    "EXIT_STUCK",
    "EXIT_WATCHDOG",
    "SignalWatcher",
    "Watchdog",
    "block_termination_signals",
    "format_stacks",
    "limit_native_threads",
]

log = structlog.get_logger("audiosocket")

#: Exit codes a supervisor (and a person reading ``systemctl status``) can tell apart.
EXIT_WATCHDOG = 70  # the event loop stalled past watchdog_exit_s (EX_SOFTWARE)
EXIT_STUCK = 75  # graceful shutdown did not finish within grace + 5 s
EXIT_FORCED = 130  # a second SIGTERM/SIGINT

TERMINATION = frozenset({signal.SIGTERM, signal.SIGINT})

#: Native pools that read their size from the environment when the library loads. One
#: thread each: our BLAS work is small (mel features, resampling) and runs beside a 20 ms
#: clock on few cores; the engines that do want threads (CTranslate2, onnxruntime, torch)
#: get explicit counts from their own settings (stt.cpu_threads, tts, summary threads).
NATIVE_THREAD_VARS = (
    "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)

STALLS = Counter(
    "audiosocket_watchdog_stalls_total",
    "Event-loop stalls longer than watchdog_stall_s (each logged once with every stack)",
)
LONGEST_STALL = Gauge(
    "audiosocket_watchdog_longest_stall_seconds", "Longest event-loop stall seen by the watchdog"
)
LOOP_LAG_MAX = Gauge(
    "audiosocket_loop_lag_max_seconds",
    "Largest lateness of the watchdog's heartbeat timer since start (the longest time the "
    "event loop was busy or blocked, to within the beat interval)",
)


def limit_native_threads(default: int = 1) -> dict[str, str]:
    """Set each native pool's size to ``default`` unless the environment already sets it.

    Must run before numpy (and anything that loads OpenBLAS/OpenMP) is imported; returns the
    values in force, for the start-up log.
    """
    for var in NATIVE_THREAD_VARS:
        os.environ.setdefault(var, str(default))
    return {var: os.environ[var] for var in NATIVE_THREAD_VARS}


def block_termination_signals() -> None:
    """Block SIGTERM/SIGINT in this thread and so in every thread started after it.

    Call first thing in the main thread, before any thread exists (numpy's import starts
    OpenBLAS's): a thread that left them unblocked could take the signal itself.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATION)


def format_stacks() -> str:
    """Every thread's Python stack, faulthandler style but with thread names."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"Thread {names.get(ident, '?')} ({ident}):\n{stack}")
    return "\n".join(parts)


def _flush_and_exit(code: int) -> None:
    flush_logs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


class SignalWatcher:
    """Takes SIGTERM/SIGINT on its own thread, so they work while the loop is stuck.

    ``on_stop()`` runs (on this thread) at the first signal and should hand the request to
    the loop thread-safely. From then on the process has ``deadline_s`` to end; if it has
    not, every stack is logged and it exits with :data:`EXIT_STUCK`. A second signal exits
    with :data:`EXIT_FORCED` at once.
    """

    def __init__(
        self,
        on_stop: Callable[[], None],
        deadline_s: float,
        *,
        exit: Callable[[int], None] = _flush_and_exit,
    ) -> None:
        self.on_stop = on_stop
        self.deadline_s = deadline_s
        self._exit = exit
        self._thread = threading.Thread(target=self._run, name="signals", daemon=True)
        self.first_signal_at: float | None = None

    def start(self) -> SignalWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            if self.first_signal_at is None:
                # A finite wait so a signal cannot be missed (it stays pending meanwhile).
                info = signal.sigtimedwait(TERMINATION, 3600.0)
                if info is None:
                    continue
                self.first_signal_at = time.monotonic()
                log.info("shutdown_requested", signal=signal.Signals(info.si_signo).name,
                         deadline_s=self.deadline_s)
                try:
                    self.on_stop()
                except Exception as exc:
                    log.error("shutdown_request_failed", error=repr(exc))
                continue
            left = self.first_signal_at + self.deadline_s - time.monotonic()
            info = signal.sigtimedwait(TERMINATION, max(left, 0.0)) if left > 0 else None
            if info is not None:
                log.warning("shutdown_forced", signal=signal.Signals(info.si_signo).name)
                self._exit(EXIT_FORCED)
                return
            if time.monotonic() >= self.first_signal_at + self.deadline_s:
                log.error("shutdown_stuck", after_s=self.deadline_s, stacks=format_stacks())
                self._exit(EXIT_STUCK)
                return


class Watchdog:
    """Notices an event loop that stops turning, says where every thread is, and ends it.

    The loop beats every ``interval_s`` (a ``call_later`` chain, so a blocked loop cannot
    beat); a thread checks the age of the last beat. Past ``stall_s`` it logs
    ``event_loop_stalled`` once per stall with all stacks and counts it; past ``exit_s``
    (0: never) it logs ``watchdog_exit`` and exits with :data:`EXIT_WATCHDOG`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        stall_s: float = 2.0,
        exit_s: float = 30.0,
        interval_s: float = 0.25,
        exit: Callable[[int], None] = _flush_and_exit,
    ) -> None:
        self.loop = loop
        self.stall_s = stall_s
        self.exit_s = exit_s
        self.interval_s = min(interval_s, stall_s / 4)
        self._exit = exit
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._handle: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self.stalls = 0
        self.longest_s = 0.0
        self.lag_max_s = 0.0
        self._due = 0.0

    def start(self) -> Watchdog:
        """Start beating (from the loop thread) and watching."""
        self._last = time.monotonic()
        self._due = self._last + self.interval_s
        self._handle = self.loop.call_later(self.interval_s, self._beat)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (a clean shutdown is not a stall)."""
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()

    def _beat(self) -> None:
        now = self._last = time.monotonic()
        late = now - self._due
        if late > self.lag_max_s:
            self.lag_max_s = late
            LOOP_LAG_MAX.set(late)
        if not self._stop.is_set():
            self._due = now + self.interval_s
            self._handle = self.loop.call_later(self.interval_s, self._beat)

    def _run(self) -> None:
        reported = False
        worst = 0.0
        while not self._stop.wait(self.interval_s):
            age = time.monotonic() - self._last
            if age <= self.stall_s:
                if reported:
                    log.warning("event_loop_recovered", stalled_s=round(worst, 3))
                reported = False
                worst = 0.0
                continue
            worst = max(worst, age)
            if age > self.longest_s:
                self.longest_s = age
                LONGEST_STALL.set(age)
            if not reported:
                reported = True
                self.stalls += 1
                STALLS.inc()
                log.error("event_loop_stalled", stalled_s=round(age, 3), limit_s=self.stall_s,
                          stacks=format_stacks())
            if self.exit_s and age > self.exit_s:
                log.error("watchdog_exit", stalled_s=round(age, 3), limit_s=self.exit_s,
                          exit_code=EXIT_WATCHDOG)
                self._exit(EXIT_WATCHDOG)
                return
