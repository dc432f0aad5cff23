"""Load benchmark of the core: N concurrent AudioSocket calls against an app (``--app``).

Prints figures; not a test. Builds ``bench/loadgen.c`` (a one-thread epoll generator in C, so
the generator is not the bottleneck) into ``bench/results/loadgen``, then for each point of
the curve: starts ``audiosocket serve --app echo`` pinned to CPU 0, measures its idle RSS,
runs the generator pinned to CPU 1 (ramp at 200 connects/s, settle 2 s, measure, drain 1 s
sending nothing so the last echoes come back, close every socket), scrapes ``/metrics`` at
the start and end of the measured window (histogram deltas), samples the server's CPU time
(/proc/<pid>/stat) over the same window and its RSS at the end, stops the server with
SIGTERM, and prints one table row.

    .venv/bin/python bench/load_bench.py                     # the whole curve (~10 min)
    .venv/bin/python bench/load_bench.py --points 1000@8000 --repeat 2
    .venv/bin/python bench/load_bench.py --points 500@8000/asyncio,1000@8000/uvloop
    .venv/bin/python bench/load_bench.py --points 1000@8000 --server-impl c

A point is ``N@RATE[/uvloop|/asyncio]``. ``--server-impl c`` runs ``bench/echo_floor.c`` (a
minimal epoll echo server in C, same bytes on the wire, built into ``bench/results/``)
instead of ``audiosocket serve``: the floor, i.e. what the kernel's TCP work alone costs at
N calls. It has no HTTP port and no /metrics, so its rows show ``c`` as the loop and ``-``
(None in the JSON) for the server-side tick, resync and underrun columns; CPU % and RSS are
measured from /proc as for the Python server. ``--priority nice`` runs the server and the generator
at ``nice -n -15`` (shields them from other jobs on a shared machine; the default is ``none``),
``--priority rt`` at ``chrt -f 10``. Every row records ``/proc/loadavg`` just before the run.
``--gen-spin`` makes the generator poll instead of sleep; ``--gen-pump-every N`` (default 50)
makes it read the server's frames between its own writes (see ``loadgen.c``).
``--app record|ivr|transcribe`` runs that app instead of echo (post-call jobs off, so only
the live path is measured): the generator then expects no echo (``loadgen --expect none``)
and "lost" counts the server's outbound frames missing from the window; every frame the
generator sent must also have been read by the server (``audiosocket_frames_in_total``
against the generator's count, after every call ended) and, for ``record`` with numbered
frames, be in a recording exactly once (the WAVs are scanned after the server stopped).
``--callers silent`` sends digital silence (the default for ``ivr`` and ``transcribe``: a
caller who says nothing; the IVR then runs its demo menu with its re-prompts).
``--step-times`` runs the server through ``bench/step_timer.py``: the main thread's steps
(the tick and its pump, each block and each part's share of it, playback marks, a prompt's
queueing and its line, log lines, the sweep) are timed in place and each thread's CPU is
read by name; each row then lists them and each app's median distance from echo is printed
by step and by thread. A step's figure is wall time: on a machine where something else
shares the server's CPU it includes being preempted, so compare runs with ``--priority rt``.
``--max-steal PCT`` sets a round aside when the hypervisor stole more than ``PCT`` % of the
server's core during any of its rows (a neighbour's burst: such rows moved by up to 20
points of a core against their own round), and runs another in its place, up to twice
``--repeat`` rounds in all; the rows stay in the raw file marked ``disturbed``, and the
summaries below the table use the other rounds only.
With several apps, each one's CPU is compared with echo's in the same round: round by
round, the median, how many rounds are within 15 %, and the mean over the rounds with a
95 % bootstrap interval (a round compares one per-run draw of the VM's speed with another,
so the interval says more about an app's cost than a count of single rounds); with
``--step-times``, that distance split into the app's own work and the pumps' difference.
``--summarize FILE...`` runs nothing and prints that comparison over the rounds of earlier
runs' raw files together, and an interval that draws whole runs instead of rounds.
Pass criterion: no frame lost and p99 gap between the server's outbound frames <= 25 ms.
Raw results go to ``bench/results/load-<time>.jsonl``; server logs to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOADGEN_SRC = ROOT / "bench" / "loadgen.c"
STEP_TIMER = ROOT / "bench" / "step_timer.py"
LOADGEN = RESULTS / "loadgen"
ECHO_FLOOR_SRC = ROOT / "bench" / "echo_floor.c"
ECHO_FLOOR = RESULTS / "echo_floor"
SERVER_CPU = "0"
GEN_CPU = "1"
DEFAULT_POINTS = (
    "100@8000,250@8000,500@8000,750@8000,1000@8000,1000@8000,100@16000,500@16000,"
    "500@8000/asyncio,1000@8000/asyncio"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _build_c(src: Path, out: Path) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return out


def build_loadgen() -> Path:
    return _build_c(LOADGEN_SRC, LOADGEN)


def build_echo_floor() -> Path:
    return _build_c(ECHO_FLOOR_SRC, ECHO_FLOOR)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not open after {timeout} s")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime, stime are fields 14, 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int | str) -> dict[int, tuple[float, float]]:
    """Each live thread's (user, kernel) CPU seconds by thread id (``pid`` may be
    ``"self"``: bench/step_timer.py reads its own server's threads with this too)."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended between the listing and the read
        out[int(task)] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return out


def cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds by kind: the main thread's (the event loop and the C pump) and the other
    threads' (the recorder's writer, the store's, STT...), user and kernel apart. The kernel
    share (the sockets' send and recv) moves with the VM's speed for every app alike; the
    user share is mostly what the app itself adds."""
    out = {"main_user": 0.0, "main_sys": 0.0, "other_user": 0.0, "other_sys": 0.0}
    for tid, (user, sys_) in thread_cpu(pid).items():
        who = "main" if tid == pid else "other"
        out[f"{who}_user"] += user
        out[f"{who}_sys"] += sys_
    return out


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def steal_jiffies() -> tuple[int, int]:
    """Time the hypervisor ran something else on each core (``steal`` in /proc/stat)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name in (f"cpu{SERVER_CPU}", f"cpu{GEN_CPU}"):
                out[name] = int(vals[7])
    return out[f"cpu{SERVER_CPU}"], out[f"cpu{GEN_CPU}"]


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def scrape(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def hist_delta(before: dict[str, float], after: dict[str, float], name: str
               ) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of the histogram's growth over the window."""
    pref = f"{name}_bucket{{le=\""
    rows = []
    for key, val in after.items():
        if key.startswith(pref):
            le = key[len(pref):].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            rows.append((bound, val - before.get(key, 0.0)))
    return sorted(rows)


def hist_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus histogram_quantile: linear interpolation inside the bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound  # beyond the last finite bucket: report its bound (a floor)
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def counter_delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return sum(v - before.get(k, 0.0) for k, v in after.items()
               if k == name or k.startswith(name + "{"))


def prio_prefix(priority: str) -> list[str]:
    if priority == "nice":
        return ["nice", "-n", "-15"]
    if priority == "rt":
        return ["chrt", "-f", "10"]
    return []


_MAGIC = 0x41534C47  # loadgen's frame marker


def check_recordings(data_dir: Path, rate: int) -> dict[str, int]:
    """Every numbered frame the generator sent, found in the recordings' caller channel:
    how many there are, how many calls, and any (call, seq) seen twice."""
    import numpy as np

    fb = rate // 50
    seen: set[tuple[int, int]] = set()
    dup = frames = files = 0
    for wav in sorted((data_dir / "recordings").glob("*.wav")):
        raw = wav.read_bytes()[44:]
        data = np.frombuffer(raw[: len(raw) - len(raw) % 4], "<i2")
        left = data[0::2]
        usable = len(left) - len(left) % fb
        slots = np.ascontiguousarray(left[:usable]).reshape(-1, fb).view("<u4")
        files += 1
        for row in slots:
            if int(row[2]) != _MAGIC:
                continue
            key = (int(row[1]), int(row[0]))
            if key in seen:
                dup += 1
            seen.add(key)
            frames += 1
    return {"rec_frames": frames, "rec_files": files, "rec_dup": dup}


#: The server's environment: post-call work off, so only the live path is measured.
SERVER_ENV = {**os.environ, "AUDIOSOCKET_POSTCALL__ENABLED": "false"}


def serve_cmd(app: str, port: int, http_port: int, data_dir: str, priority: str) -> list[str]:
    """``audiosocket serve`` pinned to the server's CPU, as every benchmark here runs it."""
    return [*prio_prefix(priority), "taskset", "-c", SERVER_CPU,
            str(ROOT / ".venv" / "bin" / "audiosocket"), "serve", "--app", app,
            "--port", str(port), "--http-port", str(http_port), "--data-dir", data_dir,
            "--log-format", "json", "--max-calls", "5000"]


def run_point(n: int, rate: int, loop: str, args: argparse.Namespace, tag: str) -> dict:
    port = free_port()
    silent = args.callers == "silent" or (
        args.callers == "auto" and args.app in ("ivr", "transcribe"))
    data_dir = ""
    # The C floor server has no HTTP port, hence no /metrics to scrape.
    http_port: int | None = None
    log_path = RESULTS / f"server-{tag}.log"
    if args.server_impl == "c":
        loop = "c"
        cmd = [*prio_prefix(args.priority), "taskset", "-c", SERVER_CPU, str(ECHO_FLOOR),
               "--port", str(port)]
    else:
        http_port = free_port()
        data_dir = tempfile.mkdtemp(prefix="loadbench-")
        cmd = serve_cmd(args.app, port, http_port, data_dir, args.priority)
        if loop == "asyncio":
            cmd.append("--no-uvloop")
        if args.python_media:
            cmd.append("--no-native-media")
    if args.step_times and args.server_impl == "python":
        exe = cmd.index(str(ROOT / ".venv" / "bin" / "audiosocket"))
        cmd[exe : exe + 1] = [sys.executable, str(STEP_TIMER)]
    if args.server_cmd_prefix:
        cmd = [*args.server_cmd_prefix.split(), *cmd]
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, cwd=ROOT,
                                  env=SERVER_ENV)
    row: dict = {"calls": n, "rate": rate, "loop": loop, "priority": args.priority,
                 "app": args.app if args.server_impl == "python" else "echo",
                 "callers": "silent" if silent else "numbered",
                 "duration": args.duration, "tag": tag, "server_impl": args.server_impl,
                 "gen_spin": args.gen_spin, "gen_pump_every": args.gen_pump_every}
    try:
        wait_port(port, server, timeout=180.0)  # the ivr loads Whisper and renders prompts
        if http_port is not None:
            wait_port(http_port, server)
        time.sleep(1.0)
        pid = server.pid
        row["rss_idle_kb"] = rss_kb(pid)
        row["loadavg"] = loadavg()
        # A spinning real-time thread is throttled by the kernel for 50 ms of every second
        # (sched_rt_runtime_us), which would show up as generator lateness: nice it instead.
        gen_prio = "nice" if args.gen_spin and args.priority == "rt" else args.priority
        gen_cmd = [*prio_prefix(gen_prio), "taskset", "-c", GEN_CPU, str(LOADGEN),
                   "--port", str(port), "--calls", str(n), "--rate", str(rate),
                   "--ramp", str(args.ramp), "--settle", str(args.settle),
                   "--duration", str(args.duration), "--spin", str(int(args.gen_spin)),
                   "--pump-every", str(args.gen_pump_every),
                   "--silent", str(int(silent)),
                   "--expect", "echo" if row["app"] == "echo" else "none"]
        gen = subprocess.Popen(gen_cmd, stdout=subprocess.PIPE, text=True)
        assert gen.stdout is not None
        marks: dict = {}
        result = None
        for line in gen.stdout:
            ev = json.loads(line)
            if ev["event"] == "measure_start":
                marks["t0"] = time.monotonic()
                marks["cpu0"] = cpu_seconds(pid)
                marks["split0"] = cpu_split(pid)
                marks["steal0"] = steal_jiffies()
                marks["m0"] = scrape(http_port) if http_port is not None else None
                row["connected_at_start"] = ev["connected"]
            elif ev["event"] == "measure_end":
                marks["t1"] = time.monotonic()
                marks["cpu1"] = cpu_seconds(pid)
                marks["split1"] = cpu_split(pid)
                marks["steal1"] = steal_jiffies()
                row["rss_at_n_kb"] = rss_kb(pid)
                marks["m1"] = scrape(http_port) if http_port is not None else None
            elif ev["event"] == "result":
                result = ev
        gen.wait()
        if result is None:
            raise RuntimeError(f"generator exited with {gen.returncode} and no result")
        row["gen"] = result
        wall = marks["t1"] - marks["t0"]
        row["server_cpu_pct"] = 100.0 * (marks["cpu1"] - marks["cpu0"]) / wall
        row["server_cpu_split_pct"] = {k: 100.0 * (marks["split1"][k] - v) / wall
                                       for k, v in marks["split0"].items()}
        # On a virtual machine the host may stop a core now and then; a stall nobody here
        # caused shows up as steal, so each row says how much there was.
        row["steal_pct"] = [100.0 * (b - a) / CLK_TCK / wall
                            for a, b in zip(marks["steal0"], marks["steal1"], strict=True)]
        m0, m1 = marks["m0"], marks["m1"]
        if m0 is not None and m1 is not None:
            lat = hist_delta(m0, m1, "audiosocket_tick_lateness_seconds")
            dur = hist_delta(m0, m1, "audiosocket_tick_duration_seconds")
            row["server_ticks"] = lat[-1][1] if lat else 0
            row["tick_late_p50_ms"] = _ms(hist_quantile(lat, 0.50))
            row["tick_late_p99_ms"] = _ms(hist_quantile(lat, 0.99))
            row["tick_late_over_20ms"] = (lat[-1][1] - dict(lat).get(0.02, 0.0)) if lat else 0
            row["tick_dur_p50_ms"] = _ms(hist_quantile(dur, 0.50))
            row["tick_dur_p99_ms"] = _ms(hist_quantile(dur, 0.99))
            row["resyncs"] = counter_delta(m0, m1, "audiosocket_clock_resyncs_total")
            row["underruns"] = counter_delta(m0, m1, "audiosocket_playout_underruns_total")
            row["write_stalls"] = counter_delta(m0, m1, "audiosocket_write_stalls_total")
            if args.step_times:
                row["steps"] = step_figures(m0, m1, wall)
        else:  # no /metrics (the C floor server): the server-side columns are unknown
            for key in ("server_ticks", "tick_late_p50_ms", "tick_late_p99_ms",
                        "tick_late_over_20ms", "tick_dur_p50_ms", "tick_dur_p99_ms",
                        "resyncs", "underruns", "write_stalls"):
                row[key] = None
        row["rss_per_call_kb"] = (row["rss_at_n_kb"] - row["rss_idle_kb"]) / max(n, 1)
        if http_port is not None and row["app"] != "echo":
            # Inbound: once every call has ended, the server must have read every frame.
            end = time.monotonic() + 60
            final = scrape(http_port)
            while final.get("audiosocket_active_calls", 0) > 0 and time.monotonic() < end:
                time.sleep(0.5)
                final = scrape(http_port)
            frames_in = sum(v for k, v in final.items() if k.startswith(
                "audiosocket_frames_in_total{") and "0x03" not in k)
            row["in_missing"] = int(result["sent_total"] - frames_in)
            row["rec_bytes_lost"] = final.get("audiosocket_recording_bytes_lost_total", 0.0)
            row["rec_ahead_dropped"] = final.get(
                "audiosocket_recording_ahead_frames_dropped_total", 0.0)
        time.sleep(0.5)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    row["server_log_warnings"] = _count_warnings(log_path)
    try:
        if row.get("app") == "record" and not silent and data_dir:
            rec = check_recordings(Path(data_dir), rate)
            row.update(rec)
            row["rec_missing"] = int(row["gen"]["sent_total"] - rec["rec_frames"])
    finally:
        # A point of 1000 recorded calls leaves ~0.9 GB of WAV: kept, a session of runs
        # filled the disk (68 GB under /tmp).
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    return row


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


def _count_warnings(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                counts["non_json"] = counts.get("non_json", 0) + 1
                continue
            level = rec.get("level", "")
            if level in ("warning", "error", "critical"):
                key = f"{level}:{rec.get('event')}"
                counts[key] = counts.get(key, 0) + 1
            if rec.get("event") == "call_ended" and rec.get("reason") != "remote_closed":
                key = f"ended:{rec.get('reason')}"
                counts[key] = counts.get(key, 0) + 1
    return counts


def passed(row: dict) -> bool:
    g = row["gen"]
    inbound_ok = (row.get("in_missing", 0) == 0 and row.get("rec_missing", 0) == 0
                  and row.get("rec_dup", 0) == 0 and not row.get("rec_bytes_lost"))
    return (g["lost"] == 0 and g["connected"] == row["calls"] and g["alive_at_end"] == row["calls"]
            and g["gap_read"]["p99_ms"] <= 25.0 and inbound_ok)


HEADER = ("| app | N | rate | loop | loss (lost/sent) | inbound missing (read / recorded) "
          "| gap p50/p99/max ms (read) | gap p99/max ms "
          "(kernel rx) | multi-frame reads | server tick late p50/p99 ms | tick dur p99 ms | "
          "resyncs | underruns | server CPU % | RSS idle MB | RSS/call KB | gen late p99/max ms "
          "| gen missed ticks | echo latency p99/max ms | steal % srv/gen | loadavg | pass |")


def fmt_row(r: dict) -> str:
    g = r["gen"]
    gr, gk, gl = g["gap_read"], g["gap_kernel"], g["gen_lateness"]
    multi = 100.0 * g["reads_multi_frame"] / max(g["reads_window"], 1)

    # "-": the server has no such metric (the C floor); "?": the histogram was empty.
    na = "-" if r.get("server_impl") == "c" else "?"

    st = r.get("steal_pct")
    steal = f"{st[0]:.1f} / {st[1]:.1f}" if st else "?"

    def f(v: float | None, d: int = 1) -> str:
        return na if v is None else f"{v:.{d}f}"

    inbound = "-"
    if "in_missing" in r:
        inbound = f"{r['in_missing']} / {r.get('rec_missing', '-')}"
    expected = g["expected"] if g.get("expect_echo", 1) else g["sent_window"]
    return (f"| {r.get('app', 'echo')}{' (silent)' if r.get('callers') == 'silent' else ''} "
            f"| {r['calls']} | {r['rate'] // 1000}k | {r['loop']} | {g['lost']}/{expected} "
            f"| {inbound} "
            f"| {gr['p50_ms']:.1f} / {gr['p99_ms']:.1f} / {gr['max_ms']:.1f} "
            f"| {gk['p99_ms']:.1f} / {gk['max_ms']:.1f} | {multi:.1f}% "
            f"| {f(r['tick_late_p50_ms'], 2)} / {f(r['tick_late_p99_ms'])} "
            f"| {f(r['tick_dur_p99_ms'])} | {f(r['resyncs'], 0)} | {f(r['underruns'], 0)} "
            f"| {r['server_cpu_pct']:.0f} | {r['rss_idle_kb'] / 1024:.0f} "
            f"| {r['rss_per_call_kb']:.1f} | {gl['p99_ms']:.1f} / {gl['max_ms']:.1f} "
            f"| {g['gen_missed_ticks']} "
            f"| {g['echo_latency']['p99_ms']:.1f} / {g['echo_latency']['max_ms']:.1f} "
            f"| {steal} | {r['loadavg']} | {'yes' if passed(r) else 'no'} |")


#: What ``--app`` may name.
APPS = ("echo", "record", "transcribe", "ivr")


def _labelled(samples: dict[str, float], name: str, *labels: str
              ) -> dict[tuple[str, ...], float]:
    """The samples of one metric family by the values of ``labels``, in that order."""
    out = {}
    for key, val in samples.items():
        if key.startswith(name + "{"):
            found = dict(_LABEL.findall(key[len(name):]))
            out[tuple(found.get(label, "") for label in labels)] = val
    return out


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def step_figures(m0: dict[str, float], m1: dict[str, float], wall: float) -> dict:
    """bench/step_timer.py's sums over the window: per step its calls a second, µs a call
    and share of a core (%); per thread its user and kernel share of a core (%)."""
    secs0 = _labelled(m0, "audiosocket_bench_step_seconds_total", "step")
    secs1 = _labelled(m1, "audiosocket_bench_step_seconds_total", "step")
    calls0 = _labelled(m0, "audiosocket_bench_step_calls_total", "step")
    calls1 = _labelled(m1, "audiosocket_bench_step_calls_total", "step")
    steps = {}
    for (step,), total in secs1.items():
        n = calls1.get((step,), 0.0) - calls0.get((step,), 0.0)
        t = total - secs0.get((step,), 0.0)
        steps[step] = {"per_s": n / wall, "us": 1e6 * t / n if n else 0.0,
                       "core_pct": 100.0 * t / wall}
    cpu0 = _labelled(m0, "audiosocket_bench_thread_cpu_seconds_total", "thread", "mode")
    cpu1 = _labelled(m1, "audiosocket_bench_thread_cpu_seconds_total", "thread", "mode")
    threads: dict[str, dict[str, float]] = {}
    for (thread, mode), total in cpu1.items():
        spent = total - cpu0.get((thread, mode), 0.0)
        threads.setdefault(thread, {})[mode] = 100.0 * spent / wall
    return {"steps": steps, "threads": threads}


def _round_key(r: dict) -> tuple:
    """A row's point in its round: what its echo row has in common with it."""
    return (r.get("round"), r["calls"], r["rate"], r["loop"])


def _with_echo(rows: list[dict], field: str) -> Iterator[tuple[dict, Any, Any]]:
    """(row, its ``field``, echo's ``field`` at the same point of the same round) for every
    non-echo row where both have it."""
    echo = {_round_key(r): r[field] for r in rows
            if r.get("app") == "echo" and r.get(field) is not None
            and r.get("server_impl", "python") == "python"}
    for r in rows:
        key = _round_key(r)
        if r.get("app") != "echo" and r.get(field) is not None and key in echo:
            yield r, r[field], echo[key]


def step_lines(rows: list[dict]) -> list[str]:
    """Each row's timed steps, and each app's median distance from echo's by step and by
    thread, in points of a core (only rows run with --step-times)."""
    lines = []
    for r in rows:
        fig = r.get("steps")
        if not fig:
            continue
        lines.append(f"{r['app']} {r['calls']}@{r['rate']} round {r.get('round')}: " + "; ".join(
            f"{k} {v['us']:.1f} µs × {v['per_s']:.0f}/s = {v['core_pct']:.1f} %"
            for k, v in sorted(fig["steps"].items()) if v["per_s"]))
        lines.append("  threads (user/sys % of a core): " + "; ".join(
            f"{k} {v.get('user', 0.0):.1f}/{v.get('sys', 0.0):.1f}"
            for k, v in sorted(fig["threads"].items()) if sum(v.values()) >= 0.05))
    # A step's share of a core, a thread's user + kernel: each against echo's.
    share = {"steps": lambda v: v.get("core_pct", 0.0), "threads": lambda v: sum(v.values())}
    dist: dict[tuple[str, int, int], dict[str, list[float]]] = {}
    for r, mine_all, echo_all in _with_echo(rows, "steps"):
        d = dist.setdefault((r["app"], r["calls"], r["rate"]), {})
        for kind, of in share.items():
            mine, theirs = mine_all[kind], echo_all[kind]
            for name in set(mine) | set(theirs):
                d.setdefault(f"{kind[:-1]} {name}", []).append(
                    of(mine.get(name, {})) - of(theirs.get(name, {})))
    for (app, n, rate), d in dist.items():
        meds = {k: statistics.median(v) for k, v in d.items()}
        lines.append(f"{app} at {n}@{rate}, median points of a core over echo: " + ", ".join(
            f"{k} {v:+.1f}" for k, v in sorted(meds.items(), key=lambda kv: -abs(kv[1]))
            if abs(v) >= 0.05))
    return lines


def mean_interval(ds: list[float], draws: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """A 95 % bootstrap interval of the mean of ``ds`` (rounds drawn with replacement).

    Why: each round compares one draw of this VM's speed for the app against one for echo,
    and that draw moves a run's CPU by as much as the target's width (``docs/BENCHMARKS.md``,
    twenty-fourth session), so how many single rounds pass says less about an app's cost
    than where its mean distance lies. Seeded: the same rows print the same interval."""
    return groups_interval([[d] for d in ds], draws, seed)


def groups_interval(
    groups: list[list[float]], draws: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """A 95 % bootstrap interval of the mean of all values, drawing whole ``groups`` with
    replacement (a group of one value each: :func:`mean_interval`)."""
    rng = random.Random(seed)
    n = len(groups)
    means = sorted(
        statistics.fmean([d for g in rng.choices(groups, k=n) for d in g]) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def _pump_pct(r: dict) -> float | None:
    """The C pump's share of a core in a row run with --step-times (None without)."""
    step = ((r.get("steps") or {}).get("steps") or {}).get("tick.pump")
    return None if step is None else float(step["core_pct"])


def own_and_pump(rows: list[dict]) -> dict[tuple[str, int, int], list[tuple[float, float]]]:
    """Per app and point, each round's distance from echo split in two, in per cent of
    echo's CPU: the app's own work (its CPU less its pump's, against echo's less echo's
    pump) and the pumps' difference (rows run with --step-times only).

    Why: the pump is the same C code for every app, and its cost per run is a draw of the
    VM (``docs/BENCHMARKS.md``, twenty-fourth session) as wide as the target; apart, the two
    show what the app costs and how much of a round's distance was the draw."""
    echo = {_round_key(r): r for r in rows
            if r.get("app") == "echo" and r.get("server_impl", "python") == "python"}
    out: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    for r in rows:
        e = echo.get(_round_key(r))
        if r.get("app") == "echo" or e is None:
            continue
        mp, ep = _pump_pct(r), _pump_pct(e)
        mc, ec = r.get("server_cpu_pct"), e.get("server_cpu_pct")
        if mp is None or ep is None or mc is None or not ec:
            continue
        out.setdefault((r["app"], r["calls"], r["rate"]), []).append(
            (100.0 * ((mc - mp) - (ec - ep)) / ec, 100.0 * (mp - ep) / ec))
    return out


def against_echo(rows: list[dict]) -> list[str]:
    """Each app's server CPU against echo's at the same point of the same round, in per
    cent (issue 14: ``record`` and silent ``ivr`` within 15 % of echo at 1000 calls), with
    the median and how many rounds are within 15 %; nothing when echo did not run."""
    diffs: dict[tuple[str, int, int], list[float]] = {}
    for r, mine, echo in _with_echo(rows, "server_cpu_pct"):
        if echo:
            diffs.setdefault((r["app"], r["calls"], r["rate"]), []).append(
                100.0 * (mine / echo - 1.0))
    # Where the distance is: each kind of CPU (cpu_split) against echo's in the same round,
    # in points of a core (rows from before the split was recorded have none).
    parts: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    for r, mine, echo in _with_echo(rows, "server_cpu_split_pct"):
        parts.setdefault((r["app"], r["calls"], r["rate"]), []).append(
            {k: v - echo[k] for k, v in mine.items()})
    halved = own_and_pump(rows)
    lines = []
    for (app, n, rate), ds in diffs.items():
        within = sum(d <= 15.0 for d in ds)
        lines.append(f"{app} at {n}@{rate}: server CPU against echo's, round by round: "
                     f"{', '.join(f'{d:+.0f} %' for d in ds)}; median "
                     f"{statistics.median(ds):+.0f} %; within 15 % in {within} of {len(ds)}")
        if len(ds) >= 4:
            lo, hi = mean_interval(ds)
            lines.append(f"  mean over the rounds {statistics.fmean(ds):+.1f} % (95 % bootstrap "
                         f"interval {lo:+.1f} to {hi:+.1f} %)")
        halves = halved.get((app, n, rate), [])
        if len(halves) >= 4:
            said = []
            for i, what in enumerate(("its own work (the pumps' difference out)",
                                      "the pumps' difference")):
                xs = [h[i] for h in halves]
                lo, hi = mean_interval(xs)
                said.append(f"{what} {statistics.fmean(xs):+.1f} % ({lo:+.1f} to {hi:+.1f}, "
                            f"sd {statistics.stdev(xs):.1f})")
            lines.append(f"  split, mean % of echo's CPU over {len(halves)} timed rounds: "
                         + "; ".join(said))
        if parts.get((app, n, rate)):
            split = parts[(app, n, rate)]
            lines.append(
                "  of which, median points of a core over echo: " + ", ".join(
                    f"{k.replace('_', ' ')} {statistics.median(d[k] for d in split):+.1f}"
                    for k in ("main_user", "main_sys", "other_user", "other_sys")))
    return lines


def over_runs(rows: list[dict]) -> list[str]:
    """Each app's mean distance from echo with a 95 % bootstrap interval that draws whole
    runs (``row["run"]``) instead of rounds: rounds of one run share more than rounds of
    different runs (a run's mean moved from +4.6 to +17.3 % for ``ivr`` on this VM), so
    this interval does not take them for independent. Nothing under four runs."""
    by: dict[tuple[str, int, int], dict[int, list[float]]] = {}
    for r, mine, echo in _with_echo(rows, "server_cpu_pct"):
        if echo:
            by.setdefault((r["app"], r["calls"], r["rate"]), {}).setdefault(
                r["run"], []).append(100.0 * (mine / echo - 1.0))
    lines = []
    for (app, n, rate), runs in by.items():
        groups = [runs[k] for k in sorted(runs)]
        if len(groups) < 4:
            continue
        lo, hi = groups_interval(groups)
        lines.append(f"{app} at {n}@{rate}: drawing whole runs ({len(groups)}), 95 % "
                     f"interval of the mean {lo:+.1f} to {hi:+.1f} %; run means "
                     + ", ".join(f"{statistics.fmean(g):+.1f}" for g in groups))
    return lines


def summarize(paths: list[str]) -> int:
    """:func:`against_echo` over the rows of several runs (their rounds numbered on, one
    run after another); a round set aside in its run stays aside."""
    rows: list[dict] = []
    offset = 0
    for run, path in enumerate(paths):
        mine = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
        for r in mine:
            r["round"] = offset + int(r.get("round") or 0)
            r["run"] = run
        offset = max([offset, *(r["round"] for r in mine)]) + 1
        rows += mine
    counted = [r for r in rows if not r.get("disturbed")]
    print(f"{len(paths)} run(s), {len({r['round'] for r in counted})} round(s) counted, "
          f"{len({r['round'] for r in rows if r.get('disturbed')})} set aside")
    for line in against_echo(counted) + over_runs(counted):
        print(line)
    return 0


def parse_point(spec: str) -> tuple[int, int, str]:
    loop = "uvloop"
    if "/" in spec:
        spec, loop = spec.split("/", 1)
    n, _, rate = spec.partition("@")
    return int(n), int(rate or 8000), loop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", default=DEFAULT_POINTS, help="comma-separated N@RATE[/loop]")
    p.add_argument("--repeat", type=int, default=1, help="run every point this many times")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per point")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--ramp", type=float, default=200.0, help="connects per second")
    p.add_argument("--priority", choices=["none", "nice", "rt"], default="none")
    p.add_argument("--gen-spin", action="store_true",
                   help="the generator polls instead of sleeping in epoll_wait")
    p.add_argument("--gen-pump-every", type=int, default=50, metavar="N",
                   help="generator polls for the server's frames after every N writes of its "
                        "tick, so the read clock does not include its own send phase "
                        "(default 50; 0 restores the behaviour of sessions 1-3)")
    p.add_argument("--server-impl", choices=["python", "c"], default="python",
                   help="python: audiosocket serve --app echo; c: bench/echo_floor.c, the "
                        "floor (no /metrics)")
    p.add_argument("--server-cmd-prefix", default="", help=argparse.SUPPRESS)
    p.add_argument("--step-times", action="store_true",
                   help="run the server through bench/step_timer.py: the main thread's steps "
                        "(the pump, each part's block, marks, log lines...) timed in place "
                        "and each thread's CPU by name, per row and against echo")
    p.add_argument("--python-media", action="store_true",
                   help="run the server with --no-native-media (the Python path only)")
    p.add_argument("--app", default="echo",
                   help="the app the Python server runs (default echo): echo, record, "
                        "transcribe or ivr; several, comma-separated, run in turn at every "
                        "point of every repeat, and each one's CPU is then compared with "
                        "echo's of the same round (issue 14's targets)")
    p.add_argument("--max-steal", type=float, default=None, metavar="PCT",
                   help="set aside a round in which the server's core lost more than PCT %% "
                        "to steal in any row, and run another (up to 2x --repeat rounds)")
    p.add_argument("--callers", default="auto", choices=["auto", "numbered", "silent"],
                   help="numbered frames, or digital silence (auto: silent for ivr and "
                        "transcribe)")
    p.add_argument("--summarize", nargs="+", metavar="JSONL", default=None,
                   help="run nothing: print the comparison with echo over the rounds of "
                        "these earlier runs' raw files (bench/results/load-*.jsonl) together")
    args = p.parse_args()
    if args.summarize:
        return summarize(args.summarize)
    apps = [a for a in args.app.split(",") if a]
    bad = [a for a in apps if a not in APPS]
    if bad or not apps:
        p.error(f"--app: {', '.join(bad) or 'none given'}; choose from {', '.join(APPS)}")
    build_loadgen()
    if args.server_impl == "c":
        build_echo_floor()
    raise_nofile()
    points = [parse_point(s) for s in args.points.split(",") if s]
    if args.server_impl == "c":  # the loop of a point means nothing to the C server
        points = [(n, rate, "c") for n, rate, _ in points]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"load-{stamp}.jsonl"
    print(f"machine: {os.cpu_count()} CPUs, {_model()}; server on CPU {SERVER_CPU}, "
          f"generator on CPU {GEN_CPU}; priority {args.priority}; "
          f"server {args.server_impl}; raw: {out}", flush=True)
    rows = []
    clean = rep = 0
    # Each round runs every point and app; a disturbed one (--max-steal) is run again.
    while clean < args.repeat and rep < args.repeat * (2 if args.max_steal is not None else 1):
        round_rows = run_round(rep, points, apps, args, stamp, out)
        rows += round_rows
        stolen = [r for r in round_rows if disturbed(r, args.max_steal)]
        if stolen:
            for r in round_rows:
                r["disturbed"] = True
            with open(out, "w") as f:  # the raw file says which rows were set aside
                f.writelines(json.dumps(r) + "\n" for r in rows)
            print(f"   round {rep} set aside: steal on the server's core "
                  + ", ".join(f"{r['app']} {r['steal_pct'][0]:.1f} %" for r in stolen),
                  file=sys.stderr, flush=True)
        else:
            clean += 1
        rep += 1
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for row in rows:
        print(fmt_row(row))
    aside = [r for r in rows if r.get("disturbed")]
    counted = [r for r in rows if not r.get("disturbed")]
    if aside:
        print(f"set aside for steal over {args.max_steal} % on the server's core: "
              f"{len({r['round'] for r in aside})} round(s), {len(aside)} row(s); "
              "the lines below use the other rounds")
    for line in step_lines(counted):
        print(line)
    for line in against_echo(counted):
        print(line)
    label = "c" if args.server_impl == "c" else "uvloop"
    ok = [r["calls"] for r in counted
          if r["rate"] == 8000 and r["loop"] == label and passed(r)]
    print(f"\nlargest passing N at 8 kHz/{label}: {max(ok) if ok else 'none'}")
    return 0


def disturbed(row: dict[str, Any], max_steal: float | None) -> bool:
    """The hypervisor stole more than ``max_steal`` % of the server's core during the row."""
    steal: list[float] = row.get("steal_pct") or []
    return max_steal is not None and bool(steal) and steal[0] > max_steal


def run_round(rep: int, points: list[tuple[int, int, str]], apps: list[str],
              args: argparse.Namespace, stamp: str, out: Path) -> list[dict[str, Any]]:
    """Round ``rep``: every point, every app at each in turn; its rows, also appended to
    ``out`` (a row that failed to run is reported and left out)."""
    rows: list[dict[str, Any]] = []
    for i, (n, rate, loop) in enumerate(points):
        # Several apps alternate within a round: this VM's speed drifts by ±10 points of
        # a core over minutes, so only runs taken side by side compare.
        for app in apps:
            app_args = argparse.Namespace(**{**vars(args), "app": app})
            suffix = f"-{app}" if len(apps) > 1 else ""
            tag = f"{stamp}-{rep}-{i}-{n}-{rate}-{loop}{suffix}"
            print(f"-- {n} calls @ {rate} Hz, {loop}, {app} (loadavg {loadavg()})",
                  file=sys.stderr, flush=True)
            try:
                row = run_point(n, rate, loop, app_args, tag)
            except Exception as exc:  # keep the curve going
                print(f"   failed: {exc}", file=sys.stderr, flush=True)
                continue
            row["round"] = rep
            rows.append(row)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(fmt_row(row), file=sys.stderr, flush=True)
    return rows


def _model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    sys.exit(main())
