"""The fork race the server once hung in, for either spawner: prints how far each got.

Two threads run numpy matrix products (OpenBLAS with 2 threads of its own) while a uvloop
event loop starts FFmpeg again and again, either through the product's path
(``helpers.spawn``: vfork, waited for in a thread) or through ``asyncio
.create_subprocess_exec`` (uvloop: libuv's fork(), the old code). Each runs in a child
interpreter with a time limit; a spawner that deadlocks shows as ``HUNG``.

    .venv/bin/python bench/fork_race.py --spawns 300 --timeout 60
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import asyncio, sys, threading
    import numpy as np
    import uvloop
    from helpers import spawn
    from helpers.ffmpeg import ffmpeg_binary

    spawner, n = sys.argv[1], int(sys.argv[2])
    stop = threading.Event()

    def burn():
        a = np.random.rand(300, 300)
        while not stop.is_set():
            a @ a

    async def one(cmd):
        if spawner == "product":
            await spawn.run_async(cmd, timeout_s=30)
        else:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            await proc.communicate()

    async def main():
        cmd = [ffmpeg_binary(), "-hide_banner", "-version"]
        for i in range(n):
            await one(cmd)
            print(i + 1, flush=True)

    for _ in range(2):
        threading.Thread(target=burn, daemon=True).start()
    uvloop.run(main())
    stop.set()
""")


def run(spawner: str, spawns: int, timeout: float) -> tuple[str, int, float]:
    """One child run: (outcome, spawns completed, seconds)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, spawner, str(spawns)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    try:
        out, _ = proc.communicate(timeout=timeout)
        outcome = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        outcome = "HUNG"
    done = [int(line) for line in out.split() if line.isdigit()]
    return outcome, max(done, default=0), time.monotonic() - started


def main() -> None:
    """Run each spawner ``--runs`` times and print one line per run."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spawns", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--spawners", default="product,asyncio")
    args = ap.parse_args()
    print(f"{'spawner':<8} {'run':>3} {'outcome':<8} {'spawns':>7} {'seconds':>8}")
    for spawner in args.spawners.split(","):
        for i in range(args.runs):
            outcome, done, took = run(spawner, args.spawns, args.timeout)
            print(f"{spawner:<8} {i + 1:>3} {outcome:<8} {done:>4}/{args.spawns:<3}"
                  f" {took:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
