"""helpers.spawn: children start without fork(), are always reaped, and time out cleanly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import spawn
from helpers.ffmpeg import ffmpeg_binary

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_captures_stdout_and_exit_code() -> None:
    done = spawn.run([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"],
                     timeout_s=30, capture_stdout=True)
    assert done.returncode == 3
    assert done.stdout == b"hi\n"


def test_run_keeps_only_the_tail_of_stderr() -> None:
    code = "import sys; sys.stderr.write('x' * 100000 + 'END')"
    done = spawn.run([sys.executable, "-c", code], timeout_s=30, tail=100)
    assert done.returncode == 0
    assert done.stderr_tail.endswith(b"END")
    assert len(done.stderr_tail) == 100


def test_timeout_kills_and_reaps() -> None:
    started = time.monotonic()
    with pytest.raises(spawn.SpawnTimeout) as info:
        spawn.run(["sleep", "30"], timeout_s=0.3)
    assert time.monotonic() - started < 10
    assert "timed out after 0.3 s" in str(info.value)


async def test_cancel_kills_and_reaps_before_propagating() -> None:
    pids: list[int] = []
    task = asyncio.create_task(
        spawn.run_async(["sleep", "30"], timeout_s=None, on_start=pids.append)
    )
    for _ in range(200):
        if pids:
            break
        await asyncio.sleep(0.01)
    assert pids
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(pids[0])


async def test_async_timeout_and_exit_hook() -> None:
    exited: list[int] = []
    with pytest.raises(spawn.SpawnTimeout):
        await spawn.run_async(["sleep", "30"], timeout_s=0.3, on_exit=exited.append)
    assert len(exited) == 1 and not _alive(exited[0])


# A child interpreter reproduces the race the server hung in: BLAS threads busy in numpy
# while the product's spawn path starts FFmpeg again and again on a uvloop event loop.
# With a fork-based spawner (uvloop's create_subprocess_exec) this hung at once on this
# machine (OpenBLAS's atfork handler waiting for its busy workers); see the closing note of
# issue 11 and bench/fork_race.py, which can run the old spawner for comparison.
RACE = textwrap.dedent("""
    import asyncio, sys, threading
    import numpy as np
    import uvloop
    from helpers import spawn
    from helpers.postcall import archive
    from helpers.ffmpeg import ffmpeg_binary

    N = int(sys.argv[1])
    stop = threading.Event()

    def burn():
        a = np.random.rand(300, 300)
        while not stop.is_set():
            a @ a

    async def main():
        cmd = [ffmpeg_binary(), "-hide_banner", "-version"]
        cap = archive.FFmpegCap(2)
        done = 0
        for i in range(0, N, 2):
            # Two at once (the product's FFmpeg cap), plus one from a plain thread as the
            # importer and the upload decoder do.
            await asyncio.gather(
                archive._run_ffmpeg(cmd, step="race", timeout_s=30, cap=cap),
                archive._run_ffmpeg(cmd, step="race", timeout_s=30, cap=cap),
                asyncio.to_thread(spawn.run, cmd, timeout_s=30),
            )
            done += 3
            if i % 60 == 0:
                print(done, flush=True)
        print("finished", done, flush=True)

    threads = [threading.Thread(target=burn, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    uvloop.run(main())
    stop.set()
    # Joined, not left as daemons: a daemon thread still inside an OpenBLAS call when the
    # interpreter finalizes can hang the exit (seen once in a fresh clone's make test: the
    # spawns had all finished, the process never exited).
    for t in threads:
        t.join()
""")


@pytest.mark.slow
def test_spawning_ffmpeg_while_blas_threads_are_busy_never_hangs() -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", RACE, "300"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"spawning hung (fork deadlock?); progress:\n{out[-2000:]}")
    assert proc.returncode == 0, out[-3000:]
    assert "finished 450" in out
    assert ffmpeg_binary()
