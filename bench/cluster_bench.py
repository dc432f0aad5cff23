"""Scale-out figures: post-call throughput per worker count, hang-up → summary latency,
SQLite against PostgreSQL (writes from 1 and 4 processes, search over a large table).

Three parts, each printed as a markdown table, then one JSON line with every figure:

- ``throughput``: N calls (stereo WAV, ~``--seconds`` of Piper speech on the caller's
  channel) queued at once in a PostgreSQL store, worked by K real ``audiosocket worker``
  processes (each its own ``--data-dir``, one shared directory); the time from the enqueue
  to the last job done, per K (a fresh database each). The workers' CPU (their own and
  their FFmpeg children's, from /proc) and the machine's busy share say where the cores cap it.
- ``latency``: 2 idle workers; calls enqueued one at a time every ``--gap`` seconds; for each,
  enqueue → first step start and enqueue → summary done, on PostgreSQL (LISTEN/NOTIFY
  wake-ups) and on SQLite (the workers share one data directory's calls.db and poll).
  A step's start is its row's ``updated_at − duration`` (the finish's commit lag makes it
  a little late, so the figure is an upper bound).
- ``store``: rows committed per second from 1 and from 4 processes (each a ``CallStore``
  writing calls and segments one by one, as live calls do); then search latency over
  ``--segments`` segments (a common word, a rare word, two words, no hit) on both back-ends.

Run (never a pass/fail test; the engines are started here, PostgreSQL via
``tests/engines/postgres.py``):

    PYTHONPATH=$PWD .venv/bin/python bench/cluster_bench.py [--parts throughput,latency,store]
        [--workers 1,2,4] [--calls 8] [--seconds 20] [--segments 200000] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.audio import write_wav  # noqa: E402
from helpers.postcall.jobs import STEPS  # noqa: E402
from helpers.store.db import CallStore  # noqa: E402

CALLER = [
    "Hello, I am calling about my order, it has not arrived yet.",
    "I placed it two weeks ago and the tracking page says nothing.",
    "Could you please check the status and tell me when it will be delivered.",
    "If it is lost I would like a refund to my card please.",
    "My account number is four five six seven and the name is Miller.",
    "Thank you, that would be great, I will wait for your email.",
]
AGENT = [
    "Thank you for calling, how can I help you today.",
    "Let me look that up for you, one moment please.",
    "I can see the parcel is with the courier.",
]
CLK = os.sysconf("SC_CLK_TCK")


# ---- helpers ---------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def table(head: list[str], rows: list[list[Any]]) -> None:
    """Print a markdown table."""
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()


def cpu_ticks(pid: int) -> int:
    """utime + stime + waited-for children's (FFmpeg) of ``pid``, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(fields[i]) for i in (11, 12, 13, 14))


def machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot, from /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def make_recording(path: Path, seconds: float, seed: int) -> float:
    """A stereo 8 kHz WAV: caller speech on the left (what the transcript reads), the
    agent's on the right; ~``seconds`` long. Its duration."""
    from tests.helpers.speech_fixtures import silence, synth_speech

    rng = np.random.default_rng(seed)
    left: list[bytes] = []
    n = 0
    i = seed
    while n < seconds * 8000:
        chunk = synth_speech(CALLER[i % len(CALLER)]) + silence(0.6)
        left.append(chunk)
        n += len(chunk) // 2
        i += 1
    caller = np.frombuffer(b"".join(left), "<i2")[: int(seconds * 8000)]
    agent = np.zeros_like(caller)
    pos = 0
    for k in range(len(AGENT) * 4):
        a = np.frombuffer(synth_speech(AGENT[k % len(AGENT)]), "<i2") // 2
        pos += int(8000 * 2.5)
        if pos + a.size > agent.size:
            break
        agent[pos:pos + a.size] = a
        pos += a.size
    noise = rng.integers(-3, 4, size=caller.size)
    left_ch = np.clip(caller.astype(int) + noise, -32768, 32767).astype("<i2")
    stereo = np.empty(caller.size * 2, "<i2")
    stereo[0::2], stereo[1::2] = left_ch, agent
    write_wav(path, stereo.tobytes(), 8000, channels=2)
    return caller.size / 8000


def enqueue_call(store: CallStore, shared: Path, src: Path, duration: float) -> tuple[str, float]:
    """Queue one ended call as a server does when its recording is complete
    (``PostCallJobs.submit``): call row, recording row (relative to the shared directory),
    a job per step. Returns the call id and the wall time its enqueue was committed."""
    cid = str(uuid.uuid4())
    rel = f"recordings/{cid}.wav"
    dest = shared / rel
    shutil.copy(src, dest)
    now = time.time()
    store.call_started(cid, "bench", 8000, None, now - duration)
    store.call_ended(cid, now, "remote_closed", 0, 0)
    store.set_recording(cid, "wav", rel, dest.stat().st_size, duration)
    store.enqueue_jobs(cid, STEPS)
    store.flush()
    return cid, time.time()


# ---- workers -----------------------------------------------------------------------------


class Workers:
    """K ``audiosocket worker`` processes on one store; started, waited ready, stopped by PID."""

    def __init__(self, k: int, store: str, shared: Path, base: Path, *, own_dirs: bool) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AUDIOSOCKET_CLUSTER__STORE": store,
               "AUDIOSOCKET_CLUSTER__SHARED_DIR": str(shared)}
        for i in range(k):
            data = base / f"w{i}" if own_dirs else shared
            data.mkdir(parents=True, exist_ok=True)
            log = base / f"worker{i}.log"
            self.logs.append(log)
            with open(log, "wb") as fh:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c",
                     "import sys; from audiosocket.root.cli import main; sys.exit(main())",
                     "worker", "--data-dir", str(data), "--log-format", "json"],
                    env={**env, "AUDIOSOCKET_CLUSTER__NODE": f"w{i}"},
                    stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT),
                ))

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Seconds until every worker logged ``job_worker_ready`` (Whisper loaded)."""
        t = time.monotonic()
        while True:
            ready = sum("job_worker_ready" in p.read_text(errors="replace") for p in self.logs)
            if ready == len(self.logs):
                return time.monotonic() - t
            for p, proc in zip(self.logs, self.procs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited {proc.returncode}: "
                                       f"{p.read_text(errors='replace')[-2000:]}")
            if time.monotonic() - t > timeout:
                raise RuntimeError("workers not ready in time")
            time.sleep(0.2)

    def cpu(self) -> int:
        return sum(cpu_ticks(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)

    def done_events(self) -> list[dict[str, Any]]:
        """The ``job_done`` log events of every worker."""
        out = []
        for i, p in enumerate(self.logs):
            for line in p.read_text(errors="replace").splitlines():
                if '"job_done"' in line:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    ev["_w"] = i
                    out.append(ev)
        return out

    def oddities(self) -> dict[str, Any]:
        """Jobs done more than once, per-worker job counts, lost leases, errors."""
        evs = self.done_events()
        twice = [k for k, n in Counter((e.get("call"), e.get("step")) for e in evs).items()
                 if n > 1]
        text = "".join(p.read_text(errors="replace") for p in self.logs)
        return {"jobs_per_worker": [sum(e["_w"] == i for e in evs) for i in range(len(self.logs))],
                "done_twice": len(twice), "lost_lease": text.count("job_lost_lease"),
                "retries": text.count("job_retry"), "failed": text.count('"job_failed"')}


def pg_ticks(pg: Any) -> int:
    """CPU ticks of the PostgreSQL server: the postmaster (with its exited backends) and
    its live children (the backends serving the workers and the bench)."""
    root = pg.proc.pid
    total = cpu_ticks(root)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == root:
            total += sum(int(fields[i]) for i in (11, 12))
    return total


def wait_all_done(store: CallStore, n_jobs: int, timeout: float, workers: Workers) -> None:
    """Until every job is done or failed; raises when a worker dies or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p, proc in zip(workers.logs, workers.procs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}: "
                                   f"{p.read_text(errors='replace')[-2000:]}")
        rows = store.execute_read("SELECT status, count(*) AS n FROM jobs GROUP BY status")
        by = {r["status"]: int(r["n"]) for r in rows}
        if by.get("done", 0) + by.get("failed", 0) >= n_jobs:
            return
        time.sleep(0.05)
    raise TimeoutError("jobs not done in time")


def transcribed(store: CallStore) -> int:
    """Calls with a final transcript (Whisper heard the speech: the work was real)."""
    rows = store.execute_read(
        "SELECT count(DISTINCT call_uuid) AS n FROM segments WHERE kind='final'")
    return int(rows[0]["n"])


def job_rows(store: CallStore) -> list[dict[str, Any]]:
    return store.execute_read(
        "SELECT call_uuid, step, status, attempts, duration, updated_at FROM jobs")


# ---- part 1: throughput ----------------------------------------------------------------


def part_throughput(args: argparse.Namespace, pg: Any, tmp: Path, wavs: list[tuple[Path, float]],
                    out: dict[str, Any]) -> None:
    rows = []
    res = {}
    for k in args.workers:
        base = tmp / f"tp{k}"
        shared = base / "shared"
        (shared / "recordings").mkdir(parents=True)
        url = pg.url(pg.create_db())
        workers = Workers(k, url, shared, base, own_dirs=True)
        try:
            ready = workers.wait_ready()
            with CallStore(url) as store:
                cpu0, pg0, (busy0, tot0) = workers.cpu(), pg_ticks(pg), machine_ticks()
                t0 = time.monotonic()
                for i in range(args.calls):
                    src, dur = wavs[i % len(wavs)]
                    enqueue_call(store, shared, src, dur)
                wait_all_done(store, args.calls * len(STEPS), 600 + 120 * args.calls, workers)
                elapsed = time.monotonic() - t0
                cpu1, pg1, (busy1, tot1) = workers.cpu(), pg_ticks(pg), machine_ticks()
                jobs = job_rows(store)
                heard = transcribed(store)
            load = Path("/proc/loadavg").read_text().split()[0]
        finally:
            workers.stop()
        odd = workers.oddities()
        n_jobs = len(jobs)
        failed = sum(j["status"] == "failed" for j in jobs)
        extra = sum(int(j["attempts"]) - 1 for j in jobs)
        step_s = {s: statistics.median([j["duration"] for j in jobs
                                        if j["step"] == s and j["duration"] is not None] or [0])
                  for s in STEPS}
        wcpu = (cpu1 - cpu0) / CLK / elapsed / os.cpu_count() * 100  # type: ignore[operator]
        pcpu = (pg1 - pg0) / CLK / elapsed / os.cpu_count() * 100  # type: ignore[operator]
        mcpu = (busy1 - busy0) / max(1, tot1 - tot0) * 100
        res[k] = {"seconds": elapsed, "calls_per_min": args.calls / elapsed * 60,
                  "jobs_per_s": n_jobs / elapsed, "workers_cpu_pct": wcpu, "pg_cpu_pct": pcpu,
                  "machine_cpu_pct": mcpu,
                  "load1": float(load), "ready_s": ready, "transcribed": heard, "failed": failed,
                  "extra_attempts": extra, "step_median_s": step_s, **odd}
        rows.append([k, f"{elapsed:.1f}", f"{args.calls / elapsed * 60:.1f}",
                     f"{n_jobs / elapsed:.2f}", f"{wcpu:.0f} %", f"{pcpu:.0f} %",
                     f"{mcpu:.0f} %", load,
                     "/".join(map(str, odd["jobs_per_worker"])),
                     f"{odd['done_twice']}/{extra}/{failed}", f"{heard}/{args.calls}"])
    print(f"### Post-call throughput: {args.calls} calls of {args.seconds:g} s, "
          f"{len(STEPS)} jobs each, PostgreSQL store, {os.cpu_count()} cores\n")
    table(["workers", "seconds", "calls/min", "jobs/s", "workers' CPU (of all cores)",
           "PostgreSQL CPU", "machine busy", "load 1 min", "jobs per worker",
           "done twice/retries/failed", "transcribed"], rows)
    ks = sorted(res)
    for a, b in itertools.pairwise(ks):
        gain = res[b]["calls_per_min"] / res[a]["calls_per_min"]
        print(f"{a} → {b} workers: calls/min ×{gain:.2f}; machine busy "
              f"{res[a]['machine_cpu_pct']:.0f} % → {res[b]['machine_cpu_pct']:.0f} %"
              + (" (the cores are the cap)" if res[b]["machine_cpu_pct"] >= 90 else ""))
    last = res[max(res)]
    print("median step seconds (largest K): " + ", ".join(
        f"{s} {v:.2f}" for s, v in last["step_median_s"].items()) + "\n")
    out["throughput"] = res


# ---- part 2: latency ---------------------------------------------------------------------


def part_latency(args: argparse.Namespace, pg: Any, tmp: Path, wavs: list[tuple[Path, float]],
                 out: dict[str, Any]) -> None:
    rows = []
    res = {}
    for backend in ("postgresql", "sqlite"):
        base = tmp / f"lat-{backend}"
        shared = base / "shared"
        (shared / "recordings").mkdir(parents=True)
        target = pg.url(pg.create_db()) if backend == "postgresql" else str(shared)
        if backend == "sqlite":
            CallStore(target).open().close()  # the schema before the workers race to make it
        workers = Workers(2, target if backend == "postgresql" else "", shared, base,
                          own_dirs=backend == "postgresql")
        enq: dict[str, float] = {}
        try:
            workers.wait_ready()
            with CallStore(target) as store:
                time.sleep(1.0)  # idle and waiting (past the first poll or LISTEN)
                for i in range(args.latency_calls):
                    src, dur = wavs[i % len(wavs)]
                    cid, t = enqueue_call(store, shared, src, dur)
                    enq[cid] = t
                    time.sleep(args.gap)
                wait_all_done(store, args.latency_calls * len(STEPS), 600, workers)
                jobs = job_rows(store)
        finally:
            workers.stop()
        first, summary = [], []
        for cid, t in enq.items():
            mine = [j for j in jobs if j["call_uuid"] == cid and j["status"] == "done"]
            if not mine:
                continue
            first.append((min(j["updated_at"] - j["duration"] for j in mine) - t) * 1000)
            summ = [j for j in mine if j["step"] == "summary"]
            if summ:
                summary.append(summ[0]["updated_at"] - t)
        odd = workers.oddities()
        res[backend] = {"start_ms": first, "summary_s": summary, **odd}
        rows.append([
            "PostgreSQL (LISTEN/NOTIFY)" if backend == "postgresql" else "SQLite (polling 0.5 s)",
            len(first), f"{pct(first, 0.5):.0f}", f"{pct(first, 0.95):.0f}",
            f"{pct(summary, 0.5):.2f}", f"{pct(summary, 0.95):.2f}",
            "/".join(map(str, odd["jobs_per_worker"])), odd["done_twice"]])
    print(f"### Hang-up → work: 2 idle workers, a call of {args.seconds:g} s every "
          f"{args.gap:g} s\n")
    table(["store", "calls", "enqueue → first step start p50 ms", "p95 ms",
           "hang-up → summary p50 s", "p95 s", "jobs per worker", "done twice"], rows)
    out["latency"] = res


# ---- part 3: store -----------------------------------------------------------------------


def texts(n: int = 4096) -> list[str]:
    """store_bench's Zipf-like lines: "the" very common, ``w4000`` rare."""
    rng = random.Random(1)
    vocab = ["the", "please", "order", "refund"] + [f"w{i}" for i in range(5000)]
    cum: list[float] = []
    for r in range(len(vocab)):
        cum.append((cum[-1] if cum else 0.0) + 1 / (r + 1))
    return [" ".join(rng.choices(vocab, cum_weights=cum, k=8)) for _ in range(n)]


def writer(target: str, calls: int, segments: int, start_at: float, seed: int) -> None:
    """One writing process (``--_writer``): live-call-shaped writes, one by one; prints
    JSON with its row count and the wall times of its first submit and last commit."""
    lines = texts()
    with CallStore(target) as store:
        while time.time() < start_at:
            time.sleep(0.001)
        t0 = time.time()
        for i in range(calls):
            cid = str(uuid.uuid4())
            store.call_started(cid, "bench", 8000, None, t0 + i)
            for k in range(segments):
                store.add_segment(cid, k, k + 1, lines[(seed * 7919 + i * 31 + k) % len(lines)],
                                  0.9, 100.0)
            store.call_ended(cid, t0 + i + 30, "remote_closed", 0, 0)
            if i % 50 == 0:  # a steady producer, not a firehose that fills the queue
                store.flush()
        store.flush()
        t1 = time.time()
    print(json.dumps({"rows": calls * (segments + 2), "t0": t0, "t1": t1}), flush=True)


def run_writers(target: str, n: int, calls: int, segments: int) -> float:
    """Rows committed per second by ``n`` writer processes together."""
    start_at = time.time() + 3.0  # every process open before the clock starts
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--_writer", target, "--_calls", str(calls),
         "--_segs", str(segments), "--_start", str(start_at), "--_seed", str(i)],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))
        for i in range(n)]
    res = []
    for p in procs:
        so, _ = p.communicate(timeout=600)
        if p.returncode:
            raise RuntimeError(f"writer exited {p.returncode}")
        line = [ln for ln in so.decode().splitlines() if ln.startswith('{"rows"')][-1]
        res.append(json.loads(line))
    span = float(max(r["t1"] for r in res) - min(r["t0"] for r in res))
    return sum(int(r["rows"]) for r in res) / span


def fill(store: CallStore, segments: int, per_call: int = 20) -> float:
    """``segments`` segments in calls of ``per_call``, batched (one transcript write per
    call, as the post-call pass stores them); seconds taken."""
    lines = texts()
    t = time.perf_counter()
    t0 = 1_795_000_000.0
    for i in range(segments // per_call):
        cid = str(uuid.uuid4())
        store.call_started(cid, "bench", 8000, None, t0 + i)
        store.replace_final_transcript(cid, [
            {"start": k, "end": k + 1, "text": lines[(i * 31 + k) % len(lines)]}
            for k in range(per_call)])
        store.call_ended(cid, t0 + i + 30, "remote_closed", 0, 0)
        if i % 500 == 0:
            store.flush()
    store.flush()
    return time.perf_counter() - t


QUERIES = {"common word": "the", "rare word": "w4000", "two words": "please refund",
           "no hit": "zzqxv"}


def part_store(args: argparse.Namespace, pg: Any, tmp: Path, out: dict[str, Any]) -> None:
    res: dict[str, Any] = {}
    for backend in ("sqlite", "postgresql"):
        r: dict[str, Any] = {}
        for n in (1, 4):
            target = pg.url(pg.create_db()) if backend == "postgresql" else str(
                tmp / f"w-{backend}-{n}")
            if backend == "sqlite":
                Path(target).mkdir()
                CallStore(target).open().close()
            r[f"writes_{n}p"] = run_writers(target, n, args.write_calls, 20)
        target = pg.url(pg.create_db()) if backend == "postgresql" else str(tmp / "search-sqlite")
        if backend == "sqlite":
            Path(target).mkdir(exist_ok=True)
        with CallStore(target) as store:
            r["fill_s"] = fill(store, args.segments)
            if backend == "postgresql":  # statistics, as autovacuum would have them by now
                store._submit(lambda conn: conn.execute("ANALYZE")).result()
            for name, q in QUERIES.items():
                times = []
                hits = store.search(q).total  # warm
                for _ in range(9):
                    t = time.perf_counter()
                    store.search(q)
                    times.append((time.perf_counter() - t) * 1000)
                r[name] = {"q": q, "hits": hits, "p50_ms": pct(times, 0.5), "max_ms": max(times)}
        res[backend] = r
    print("### SQLite against PostgreSQL (PostgreSQL on this machine, unix socket, fsync=off)\n")
    table(["", "SQLite", "PostgreSQL"], [
        ["rows committed/s, 1 process", *(f"{res[b]['writes_1p']:,.0f}" for b in res)],
        ["rows committed/s, 4 processes", *(f"{res[b]['writes_4p']:,.0f}" for b in res)],
        [f"fill {args.segments:,} segments (batched), s",
         *(f"{res[b]['fill_s']:.1f}" for b in res)],
        *[[f"search {name} {q!r} ({res['sqlite'][name]['hits']:,}/"
           f"{res['postgresql'][name]['hits']:,} hits), p50 / max ms",
           *(f"{res[b][name]['p50_ms']:.1f} / {res[b][name]['max_ms']:.1f}" for b in res)]
          for name, q in QUERIES.items()],
    ])
    out["store"] = res


# ---- main ----------------------------------------------------------------------------------


def main() -> None:
    """Parse the options, start PostgreSQL, run the parts, print the tables and a JSON line."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="throughput,latency,store")
    ap.add_argument("--workers", default="1,2,4", help="worker counts for the throughput part")
    ap.add_argument("--calls", type=int, default=8, help="calls per throughput run")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each recording")
    ap.add_argument("--latency-calls", type=int, default=10, help="calls in the latency part")
    ap.add_argument("--gap", type=float, default=5.0, help="seconds between latency calls")
    ap.add_argument("--write-calls", type=int, default=300,
                    help="calls (of 20 segments) each writer process writes")
    ap.add_argument("--segments", type=int, default=200_000, help="segments to search over")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small everything")
    ap.add_argument("--_writer", help=argparse.SUPPRESS)
    ap.add_argument("--_calls", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_segs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_start", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--_seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from audiosocket.logs import configure_logging

    configure_logging("console", "warning")  # the store's info lines would bury the tables
    if args._writer:
        writer(args._writer, args._calls, args._segs, args._start, args._seed)
        return
    if args.quick:
        args.workers, args.calls, args.seconds = "1,2", 4, 6.0
        args.latency_calls, args.gap, args.write_calls, args.segments = 3, 2.0, 40, 20_000
    args.workers = [int(k) for k in str(args.workers).split(",")]
    parts = set(args.parts.split(","))

    from tests.engines.postgres import PgCluster, pg_bin_dir

    bindir = pg_bin_dir()
    if bindir is None:
        sys.exit("PostgreSQL not found: set AUDIOSOCKET_PG_BIN or install postgresql")
    tmp = Path(tempfile.mkdtemp(prefix="clusterbench-"))
    pg = PgCluster(bindir)
    out: dict[str, Any] = {"quick": args.quick, "cores": os.cpu_count(),
                           "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    print(f"loadavg {out['loadavg_start']}; {os.cpu_count()} cores"
          + ("; --quick: a smoke run, not figures" if args.quick else "") + "\n")
    try:
        pg.start()
        wavs: list[tuple[Path, float]] = []
        if parts & {"throughput", "latency"}:
            (tmp / "src").mkdir()
            for i in range(4):
                p = tmp / "src" / f"call{i}.wav"
                wavs.append((p, make_recording(p, args.seconds, i)))
        if "throughput" in parts:
            part_throughput(args, pg, tmp, wavs, out)
        if "latency" in parts:
            part_latency(args, pg, tmp, wavs, out)
        if "store" in parts:
            part_store(args, pg, tmp, out)
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
