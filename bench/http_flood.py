"""Flood the HTTP port of a real ``audiosocket serve`` and place calls meanwhile (issue 13.1).

The server runs under ``prlimit --nofile=L:L`` (soft = hard, so start-up cannot raise it).
N connections open on the HTTP port and either send ``G`` and stop (``--mode idle``) or
send a byte a second (``--mode slow``); during the flood, echo calls are placed one after
another and checked bit for bit, ``/healthz`` is asked every half second, and the server's
open descriptors are counted. Printed: connections accepted / refused and when the server
closed the accepted ones, calls placed / bit-exact, ``/healthz`` answers and times, fds.

    .venv/bin/python bench/http_flood.py [--connections 1000] [--nofile 1024] [--hold 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audiosocket.caller import place_call

BIN = Path(sys.executable).parent / "audiosocket"
FRAME = 320


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("event") == name:
                out.append(rec)
    return out


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def one_call(port: int, seed: int) -> bool:
    """A 1 s echo call: every sample back in order (silence frames aside)."""
    rng = np.random.default_rng(seed)
    pcm = (rng.integers(200, 20000, 8000) * rng.choice([-1, 1], 8000)).astype("<i2").tobytes()
    chunks = [pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME)]
    try:
        async with asyncio.timeout(30):
            res = await place_call("127.0.0.1", port, chunks=chunks, linger=0.5)
    except (OSError, TimeoutError, RuntimeError):  # RuntimeError: closed under our write
        return False
    got = bytes(res.received)
    frames = [got[i : i + FRAME] for i in range(0, len(got), FRAME)]
    return b"".join(f for f in frames if f != bytes(FRAME)) == pcm


async def healthz(port: int) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(5):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            line = await r.readline()
            w.close()
        return (int(line.split()[1]) if line else 0), time.monotonic() - t0
    except (OSError, TimeoutError, ValueError, IndexError):
        return 0, time.monotonic() - t0


async def flood_one(port: int, mode: str, hold: float, t_start: float) -> tuple[str, float]:
    """('refused'|'held'|'closed'|'connect_failed', seconds from flood start to the end)."""
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect_failed", time.monotonic() - t_start
    # A request head that never ends: idle sends its first byte, slow one more a second.
    head = b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 1000
    w.write(head[:1])
    sent = 1
    t_open = time.monotonic()
    end = t_start + hold
    try:
        while time.monotonic() < end:
            try:
                wait = 1.0 if mode == "slow" else end - time.monotonic()
                data = await asyncio.wait_for(r.read(4096), wait)
            except TimeoutError:
                if mode == "slow":
                    with contextlib.suppress(OSError, RuntimeError):
                        w.write(head[sent : sent + 1])
                    sent += 1
                continue
            except OSError:
                data = b""
            # Closed at once (a 503 or a reset): refused; later: a timeout closed it.
            kind = "refused" if time.monotonic() - t_open < 0.5 or data else "closed"
            return kind, time.monotonic() - t_start
        return "held", hold
    finally:
        w.close()


def spawn(nofile: int, port: int, http: int, tmp: Path,
          env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``audiosocket serve --app echo`` under ``prlimit --nofile=nofile:nofile``."""
    return subprocess.Popen(
        ["prlimit", f"--nofile={nofile}:{nofile}", "--", str(BIN), "serve", "--app",
         "echo", "--port", str(port), "--http-port", str(http), "--data-dir", str(tmp / "var")],
        stdout=(tmp / "serve.log").open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp,
    )


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="http_flood_"))
    port, http = free_port(), free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "AUDIOSOCKET_LOG_FORMAT": "json", "AUDIOSOCKET_LIVE_LATENCY_MS": "0"}
    if args.head_timeout:
        env["AUDIOSOCKET_WEB__HEAD_TIMEOUT_S"] = str(args.head_timeout)
    proc = spawn(args.nofile, port, http, tmp, env)
    try:
        while not events(log, "ready"):
            if proc.poll() is not None:
                raise SystemExit(log.read_text())
            await asyncio.sleep(0.1)
        limits = events(log, "http_limits")
        print(f"server: nofile {args.nofile}, fds at start {fds(proc.pid)}, "
              f"http limits {limits[0] if limits else 'none (old code)'}")
        t0 = time.monotonic()
        flood = [asyncio.create_task(flood_one(http, args.mode, args.hold, t0))
                 for _ in range(args.connections)]
        calls: list[bool] = []
        health: list[tuple[int, float]] = []
        fd_samples: list[int] = []

        async def caller() -> None:
            seed = 0
            while time.monotonic() - t0 < args.hold:
                calls.append(await one_call(port, seed))
                seed += 1

        async def prober() -> None:
            while time.monotonic() - t0 < args.hold:
                health.append(await healthz(http))
                fd_samples.append(fds(proc.pid))
                await asyncio.sleep(0.5)

        await asyncio.sleep(1.0)  # the flood first
        await asyncio.gather(caller(), prober())
        results = await asyncio.gather(*flood)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    kinds = {k: [t for kind, t in results if kind == k]
             for k in ("refused", "closed", "held", "connect_failed")}
    print(f"flood: {args.connections} connections ({args.mode}), held {args.hold:.0f} s")
    print(f"  refused at once: {len(kinds['refused'])}")
    closed = kinds["closed"]
    when = f" (median {statistics.median(closed):.1f} s after the flood began)" if closed else ""
    print(f"  accepted, then closed by the server: {len(closed)}{when}")
    print(f"  accepted and still open at the end: {len(kinds['held'])}")
    print(f"  connect failed: {len(kinds['connect_failed'])}")
    print(f"calls: placed {len(calls)}, bit-exact {sum(calls)}")
    codes: dict[int, int] = {}
    for code, _ in health:
        codes[code] = codes.get(code, 0) + 1
    times = sorted(t * 1000 for _, t in health)
    print(f"/healthz: {len(health)} probes, answers {codes} (0: none), "
          f"median {statistics.median(times):.1f} ms, max {times[-1]:.1f} ms")
    print(f"fds in use: max {max(fd_samples)}, median {statistics.median(fd_samples):.0f} "
          f"of {args.nofile}")
    print(f"server log: http_flood {len(events(log, 'http_flood'))}, "
          f"http_flood_over {len(events(log, 'http_flood_over'))}, "
          f"calls_ended {len(events(log, 'call_ended'))}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--nofile", type=int, default=1024)
    p.add_argument("--mode", choices=["idle", "slow"], default="idle")
    p.add_argument("--hold", type=float, default=15.0, help="seconds the flood lasts")
    p.add_argument("--head-timeout", type=float, default=0.0,
                   help="the server's web.head_timeout_s (0: its default)")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
