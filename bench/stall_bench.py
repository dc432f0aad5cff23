"""What a stall of the server does at 1000 calls: its CPU in windows before and after it.

Prints figures; not a test. Starts ``audiosocket serve --app APP`` on CPU 0 and the load
generator of ``load_bench.py`` (``bench/loadgen.c``) on CPU 1, lets the calls settle, then
measures the server's CPU in ``--window``-second windows; at the start of the second window
it stops the server with ``SIGSTOP`` for ``--stall`` seconds (a VM pause, a long garbage
collection) while the callers go on sending. After the stall each socket holds seconds of
audio. The figures show how soon the server is back at its steady cost, and how many calls
the C media path carries at the end (``audiosocket_native_lines``) and which events it
handed to the Python side on the way (``audiosocket_native_events_total``):

    .venv/bin/python bench/stall_bench.py --app echo --stall 2
    .venv/bin/python bench/stall_bench.py --app ivr --stall 2
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_bench import (  # a script beside this one
    GEN_CPU,
    ROOT,
    SERVER_ENV,
    build_loadgen,
    cpu_seconds,
    free_port,
    prio_prefix,
    raise_nofile,
    scrape,
    serve_cmd,
    wait_port,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--app", default="echo")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--rate", type=int, default=8000)
    p.add_argument("--stall", type=float, default=2.0, help="seconds the server is stopped")
    p.add_argument("--window", type=float, default=4.0, help="seconds per CPU window")
    p.add_argument("--windows", type=int, default=7)
    args = p.parse_args()
    raise_nofile()
    loadgen = build_loadgen()
    port, http_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="stallbench-")
    silent = args.app != "echo"
    server = subprocess.Popen(serve_cmd(args.app, port, http_port, data_dir, "rt"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=ROOT, env=SERVER_ENV)
    gen = None
    try:
        wait_port(port, server, timeout=180.0)
        wait_port(http_port, server)
        time.sleep(1.0)
        ramp_s = args.calls / 200 + 2
        duration = ramp_s + args.window * args.windows + 5
        gen = subprocess.Popen(
            [*prio_prefix("nice"), "taskset", "-c", GEN_CPU, str(loadgen), "--port", str(port),
             "--calls", str(args.calls), "--rate", str(args.rate), "--ramp", "200",
             "--settle", "2", "--duration", str(duration), "--spin", "1",
             "--pump-every", "50", "--silent", str(int(silent)),
             "--expect", "echo" if args.app == "echo" else "none"],
            stdout=subprocess.PIPE, text=True)
        time.sleep(ramp_s + 2)
        before = scrape(http_port)
        print(f"{args.calls} {args.app} calls at {args.rate} Hz; SIGSTOP for {args.stall} s "
              f"at the start of window 2")
        for w in range(1, args.windows + 1):
            c0, t0 = cpu_seconds(server.pid), time.monotonic()
            if w == 2:
                server.send_signal(signal.SIGSTOP)
                time.sleep(args.stall)
                server.send_signal(signal.SIGCONT)
            time.sleep(max(0.0, t0 + args.window - time.monotonic()))
            c1, t1 = cpu_seconds(server.pid), time.monotonic()
            print(f"window {w}: server CPU {100 * (c1 - c0) / (t1 - t0):5.1f} %", flush=True)
        after = scrape(http_port)
        print(f"calls on the C path now: {after.get('audiosocket_native_lines', 0):.0f}")
        for key in sorted(after):
            if key.startswith("audiosocket_native_events_total{"):
                delta = after[key] - before.get(key, 0.0)
                if delta:
                    print(f"  {key.split('{')[1].rstrip('}')}: {delta:.0f} since the calls settled")
        dropped = (after.get("audiosocket_live_dropped_frames_total", 0.0)
                   - before.get("audiosocket_live_dropped_frames_total", 0.0))
        print(f"live frames dropped (over the live target): {dropped:.0f}")
        out, _ = gen.communicate(timeout=duration + 30)
        for line in out.splitlines():
            ev = json.loads(line)
            if ev.get("event") == "result":
                print(f"generator: lost {ev['lost']} of {ev['sent_window']} frames, "
                      f"gap p99 {ev['gap_read']['p99_ms']} ms, max {ev['gap_read']['max_ms']} ms")
    finally:
        if gen is not None and gen.poll() is None:
            gen.kill()
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
