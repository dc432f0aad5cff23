"""What the per-event Python on the pacing core costs: one log line, and folding a native
line's counters (``Playout.sync_counters``), in microseconds each.

Prints figures; not a test. At 1000 silent ``ivr`` calls the event loop logs ~300 lines a
second (``server_said``, ``menu_timeout``) and folds every call's counters a few times a
second (the clock's flush, playback marks, blocks, ``call.time``). Each is too small for the
load benchmark to resolve on a shared VM (its CPU figures move by several points between
runs of one build), so they are timed here in isolation:

    .venv/bin/python bench/python_paths_bench.py
    git worktree add /tmp/old REV && .venv/bin/python bench/python_paths_bench.py --tree /tmp/old

``--tree`` imports the package from another checkout (its ``_wire`` must be built there:
copy this one's ``.so`` when ``_wire.c`` is the same). The log line goes through
``configure_logging("json")`` to ``/dev/null``, bound to a call as the apps' lines are.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn: Callable[[], None], n: int, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n * 1e6)
    return out


def bench_log(n: int, rounds: int) -> list[float]:
    from audiosocket.logs import configure_logging, get_logger

    saved = sys.stderr
    sink = open(os.devnull, "w")  # stays open: the handler writes to it
    sys.stderr = sink
    try:
        configure_logging("json", "info")
    finally:
        sys.stderr = saved
    log = get_logger("audiosocket.call", call="0b7e3c5e-1c3a-4d7e-9a43-1f2e3d4c5b6a",
                     caller="1000", app="ivr")

    def line() -> None:
        log.info("server_said", start=12.34, end=17.9, interrupted=False,
                 text="For sales, press 1 or say sales. For support, press 2.")

    return _timed(line, n, rounds)


def bench_sync(n: int, rounds: int) -> list[float]:
    from audiosocket import _wire
    from audiosocket.playout import Playout

    class _Transport:
        def write(self, data: bytes) -> None:
            pass

        def is_closing(self) -> bool:
            return False

    playout = Playout(_Transport(), 8000)
    state = playout.native_state(fd=0, frame_len=323, whole=True)
    playout._native_state = state
    # The byte of ``ticks`` from the layout the C side exports (every tree has it); not
    # ``state["ticks"] = 1``, whose cost differs between trees and is not what is timed.
    ticks_at = 8 * _wire.STATE_FIELDS.index("ticks")
    buf = state.buf

    def fold() -> None:
        buf[ticks_at] = 1  # the C path moved the timeline since the last fold
        playout.sync_counters()

    return _timed(fold, n, rounds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=ROOT,
                   help="the checkout to import the package from (default: this one)")
    p.add_argument("--n", type=int, default=20000, help="events per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    import audiosocket

    print(f"package: {Path(audiosocket.__file__).parent}")
    for name, fn in (("json log line", bench_log), ("sync_counters", bench_sync)):
        runs = fn(args.n, args.rounds)
        print(f"{name:14s} median {statistics.median(runs):6.2f} us   "
              f"(rounds: {', '.join(f'{r:.2f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
