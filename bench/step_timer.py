"""``audiosocket serve`` with the steps of its main thread timed, for the load benchmark.

Not a product feature and not a test: ``load_bench.py --step-times`` starts the server as
``python bench/step_timer.py serve ...`` instead of ``audiosocket serve ...``. Before the
server starts, this wraps the methods in :data:`STEPS` with a ``perf_counter_ns`` pair and
serves the sums on the server's own ``/metrics`` (which the benchmark scrapes at the start
and the end of its measured window), together with each thread's CPU by name:

    audiosocket_bench_step_seconds_total{step="block.Recording"}
    audiosocket_bench_step_calls_total{step="block.Recording"}
    audiosocket_bench_thread_cpu_seconds_total{thread="recorder-writer",mode="sys"}

Why: on the benchmark VMs one app's CPU moves by several points between two runs of one
build, more than most single changes are worth, and a sampling profiler either tears the
main thread's stacks (non-blocking) or pauses the process so often that the run stops being
the steady state (``docs/BENCHMARKS.md``, nineteenth session). Timing the steps in place is
what showed that a step costs 2-6 times more at a thousand calls than in a loop alone (every
call's objects are cold by its turn). The wrapper itself costs ~0.3 µs a call; nested steps
include their children's wrappers. Only synchronous methods are wrapped (a coroutine's wall
time would include its awaits).
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from load_bench import thread_cpu  # this script's directory is on sys.path when it runs
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily

ROOT = Path(__file__).resolve().parent.parent

#: step name -> (module, attribute path) of what is timed. A missing one is skipped with a
#: warning on stderr (the tree may be older or newer than this list).
STEPS: dict[str, tuple[str, str]] = {
    "tick": ("audiosocket.clock", "Clock._on_tick"),
    "tick.pump": ("audiosocket.clock", "Clock._pump"),
    "tick.native_event": ("audiosocket.clock", "Clock._native_event"),
    "block": ("audiosocket.connection", "Connection._drain_tape"),
    "block.take_tape": ("audiosocket.connection", "block_from_tape"),
    "block.Recording": ("sessions.parts.recording", "Recording.take"),
    "block.Transcriber": ("sessions.parts.transcriber", "Transcriber.take"),
    "block.MessageTap": ("sessions.parts.message", "MessageTap.take"),
    "marks": ("audiosocket.playout", "Playout._resolve_marks"),
    "prompt.line": ("sessions.parts.speaker", "Speaker._line"),
    "prompt.queue": ("audiosocket.playout", "Playout.play_parts"),
    "prompt.line.store": ("helpers.store.segments", "SegmentQueries.add_segment"),
    "log.render": ("structlog._base", "BoundLoggerBase._process_event"),
    "log.line": ("audiosocket.logs", "_LineWriter.info"),
    "sweep": ("audiosocket.server", "AudioSocketServer.sweep"),
    "flush_metrics": ("audiosocket.connection", "Connection.flush_metrics"),
}

#: step -> [calls, nanoseconds]; written by the wrapped code, read at scrape time.
_ACC: dict[str, list[int]] = {}


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    acc = _ACC.setdefault(name, [0, 0])
    perf = time.perf_counter_ns

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = perf()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[1] += perf() - t
            acc[0] += 1

    return wrapper


def install() -> list[str]:
    """Wrap every step that exists in this tree; the names of those that do not."""
    missing = []
    for name, (module_name, path) in STEPS.items():
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            missing.append(name)
            continue
        *parents, attr = path.split(".")
        for part in parents:
            owner = getattr(owner, part, None)
        fn = getattr(owner, attr, None) if owner is not None else None
        if fn is None or not callable(fn):
            missing.append(name)
            continue
        setattr(owner, attr, _timed(name, fn))
    return missing


def _thread_cpu() -> Iterator[tuple[str, str, float]]:
    """(thread name, user|sys, seconds) of every thread of this process; threads that
    ``threading`` does not know (native libraries' own) are summed as ``native``."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    sums: dict[tuple[str, str], float] = {}
    for tid, (user, sys_) in thread_cpu("self").items():
        name = names.get(tid, "native")
        for mode, secs in (("user", user), ("sys", sys_)):
            sums[(name, mode)] = sums.get((name, mode), 0.0) + secs
    for (name, mode), secs in sums.items():
        yield name, mode, secs


class _Collector:
    """Serves the step sums and the threads' CPU on ``/metrics``."""

    def collect(self) -> Iterator[Any]:
        seconds = CounterMetricFamily("audiosocket_bench_step_seconds",
                                      "Wall time inside a timed step (bench/step_timer.py)",
                                      labels=["step"])
        calls = CounterMetricFamily("audiosocket_bench_step_calls",
                                    "Calls of a timed step (bench/step_timer.py)",
                                    labels=["step"])
        for name, (n, ns) in list(_ACC.items()):
            seconds.add_metric([name], ns / 1e9)
            calls.add_metric([name], n)
        cpu = CounterMetricFamily("audiosocket_bench_thread_cpu_seconds",
                                  "CPU time of each thread by name (bench/step_timer.py)",
                                  labels=["thread", "mode"])
        for name, mode, secs in _thread_cpu():
            cpu.add_metric([name, mode], secs)
        yield seconds
        yield calls
        yield cpu


def main() -> int:
    sys.path.insert(0, str(ROOT))
    missing = install()
    if missing:
        print(f"step_timer: not in this tree, not timed: {', '.join(missing)}", file=sys.stderr)
    REGISTRY.register(_Collector())  # type: ignore[arg-type]
    from audiosocket.root.cli import main as cli_main

    sys.argv = ["audiosocket", *sys.argv[1:]]
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
