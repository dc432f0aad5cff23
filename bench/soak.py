"""Soak benchmark: the real servers under mixed traffic for a long time, post-call jobs on.

Prints figures and exits non-zero when the soak found a fault (a hang, a protocol error, a
call that did not end the expected way, a failed job, a recording that is not whole, a
server that did not exit 0). It starts one ``audiosocket serve`` per app (``ivr``,
``transcribe``, ``record``; a dialplan sends different extensions to different ports) as
subprocesses with default settings (uvloop, native media, post-call jobs), then drives them
with the bundled software caller (:func:`audiosocket.caller.place_call`) from ``--lanes``
concurrent lanes. Each lane places calls one after another, rotating through:

* ``ivr_dtmf``: the demo IVR, pressing 1, 2 or 3 (3: a short spoken message, then ``#``);
* ``ivr_speech``: the demo IVR, saying "sales" or "support" during or after the menu prompt;
* ``transcribe``: 3-5 s of speech, then hang up;
* ``record``: 3-5 s of speech, then hang up.

Speech is Piper (the bundled voice), synthesised once at start. After ``--minutes`` (or
``--calls``) it stops placing, waits for every server's post-call jobs to drain, checks
every call through ``GET /api/calls/{uuid}`` and its WAV on disk, sends SIGTERM to each
server and times its exit. Every ``--sample-s`` it prints RSS, open files, active calls and
queued jobs per server, and the caller's own lateness (a 20 ms absolute-deadline ticker on
the caller's event loop: the delay every ``place_call`` send clock in this process sees).

    .venv/bin/python bench/soak.py                              # 30 minutes, 6 lanes
    .venv/bin/python bench/soak.py --minutes 2 --lanes 3        # the short version (tests)
    .venv/bin/python bench/soak.py --calls 1000 --minutes 0     # 1,000 calls, however long
    .venv/bin/python bench/soak.py --json soak.json

Server logs (JSON lines), data directories and ``soak.json`` go to ``--out`` (default
``bench/results/soak-<time>/``).

One file of ~1000 lines on purpose: a benchmark is run and read as one script (servers,
traffic, sampling, checks and report in that order), like the other ``bench/`` scripts, and
nothing in the product imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the project

from audiosocket.caller import CallResult, place_call  # noqa: E402

APPS = ("ivr", "transcribe", "record")
TYPES = ("ivr_dtmf", "ivr_speech", "transcribe", "record")
APP_OF = {"ivr_dtmf": "ivr", "ivr_speech": "ivr", "transcribe": "transcribe", "record": "record"}
RATE = 8000
STEPS = ("archive_aac", "archive_mp3", "peaks", "transcript", "summary")
HANG_GAP_S = 2.0  # Asterisk's AudioSocket() hangs up after 2 s without a frame
HEALTH_TIMEOUT_S = 5.0
DEFAULT_GRACE_S = 10.0  # shutdown_grace_s default; read from the server's log when it says

# The demo flow (sessions/flows/demo.yaml), timed against its Piper prompts: greeting
# ~1.3 s, menu ~6.4 s, message prompt ~3.1 s. A key at 3 s lands inside the menu prompt
# (DTMF barge-in); speech at 4.5 s barges in, at 9 s it answers after the prompt.
DTMF_AT_S = 3.0
SPEECH_AT_S = (4.5, 9.0)
MESSAGE_AT_S = 8.0  # after "3" at 3 s, the message prompt and its tone
ANSWERS = {"1": "sales", "2": "support", "3": "message"}
SPOKEN = {"sales": "Sales, please.", "support": "Support, please."}
MESSAGES = (
    "Hello, this is Maria calling about my order from last week. Please call me back.",
    "I would like to change the delivery address for my account to the new office.",
    "The printer on the second floor is broken again and nobody can print today.",
    "Good morning. My internet connection drops every evening, can someone help?",
)


# -- small helpers --------------------------------------------------------------------------


def free_port() -> int:
    """A port the kernel says is free now (a tiny race with other programs is accepted)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = HEALTH_TIMEOUT_S) -> tuple[int, bytes]:
    """GET ``url``; (status, body). Raises OSError on a timeout or a refused connection."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text → {name: [(labels, value), ...]}."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            # A labelled counter with no series yet exports only this: it exists, it is 0.
            out.setdefault(line.split()[2], [])
            continue
        if not line or line.startswith("#"):
            continue
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def metric(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float | None:
    """Sum of every series of ``name``; None when the server does not export it."""
    series = metrics.get(name)
    return None if series is None else sum(v for _, v in series)


def proc_rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in kB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_fds(pid: int) -> int | None:
    """Open file descriptors of ``pid``."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_times() -> tuple[int, int, int]:
    """(total, idle + iowait, steal) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), v[3] + v[4], v[7] if len(v) > 7 else 0


def wav_check(path: Path) -> dict[str, Any]:
    """Read a WAV's RIFF header by hand (the stdlib's wave module trusts it): is the RIFF
    length the file size, is the data chunk the rest of the file, and its duration."""
    info: dict[str, Any] = {"path": str(path), "exists": path.exists()}
    if not info["exists"]:
        info["ok"] = False
        info["why"] = "missing"
        return info
    size = path.stat().st_size
    info["bytes"] = size
    with open(path, "rb") as f:
        head = f.read(min(size, 4096))
    problems = []
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        info["ok"] = False
        info["why"] = "not RIFF/WAVE"
        return info
    riff_len = struct.unpack_from("<I", head, 4)[0]
    if riff_len != size - 8:
        problems.append(f"RIFF length {riff_len} != file size - 8 ({size - 8})")
    pos, fmt, data_off, data_len = 12, None, None, None
    while pos + 8 <= len(head):
        cid, clen = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"fmt ":
            _, channels, rate, _, block, bits = struct.unpack_from("<HHIIHH", head, pos + 8)
            fmt = (channels, rate, block, bits)
        if cid == b"data":
            data_off, data_len = pos + 8, clen
            break
        pos += 8 + clen + (clen & 1)
    if fmt is None or data_off is None or data_len is None:
        info["ok"] = False
        info["why"] = "no fmt or data chunk"
        return info
    channels, rate, block, _ = fmt
    info.update(channels=channels, rate=rate)
    if data_len != size - data_off:
        problems.append(f"data length {data_len} != bytes after header ({size - data_off})")
    info["duration"] = round(data_len / (block * rate), 3) if block and rate else None
    info["ok"] = not problems
    if problems:
        info["why"] = "; ".join(problems)
    return info


# -- speech ---------------------------------------------------------------------------------


def synthesise(out_dir: Path) -> dict[str, bytes]:
    """Piper (bundled voice) renders of every utterance the callers use, at 8 kHz; cached in
    ``out_dir`` so a rerun with the same --out skips the voice."""
    texts = {**SPOKEN, **{f"msg{i}": t for i, t in enumerate(MESSAGES)}}
    cache = out_dir / "speech"
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, bytes] = {}
    engine = None
    for key, text in texts.items():
        path = cache / f"{key}.pcm"
        if path.exists():
            out[key] = path.read_bytes()
            continue
        if engine is None:
            from helpers.speech.tts import TtsEngine

            engine = TtsEngine(threads=1, solo_threads=2)
        pcm = engine.synthesize(text, RATE)
        # Calls carry 3-5 s of speech: trim what runs long, pad what runs short.
        if key.startswith("msg"):
            pcm = pcm[: 5 * RATE * 2].ljust(3 * RATE * 2, b"\0")
        path.write_bytes(pcm)
        out[key] = pcm
    return out


# -- servers --------------------------------------------------------------------------------


@dataclass
class Server:
    """One ``audiosocket serve`` subprocess and what was measured of it."""

    app: str
    port: int
    http_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    health_timeouts: int = 0
    health_worst_s: float = 0.0
    exit_code: int | None = None
    exit_s: float | None = None
    grace_s: float = DEFAULT_GRACE_S
    start_metrics: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, env: dict[str, str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(ROOT / ".venv" / "bin" / "audiosocket"), "serve", "--app", self.app,
            "--port", str(self.port), "--http-port", str(self.http_port),
            "--data-dir", str(self.data_dir),
        ]
        log = open(self.log_path, "wb")  # the child keeps its own copy; ours closes below
        # A session of its own: a Ctrl-C at the terminal reaches us, and we stop it.
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=ROOT, start_new_session=True)
        log.close()

    def wait_ready(self, timeout: float) -> None:
        """Until the AudioSocket port accepts and /healthz answers 200."""
        assert self.proc is not None
        end = time.monotonic() + timeout
        port_ok = False
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} server exited {self.proc.returncode} at start;"
                                   f" see {self.log_path}")
            if not port_ok:
                with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1.0
                ):
                    port_ok = True
            if port_ok:
                with contextlib.suppress(OSError):
                    if http_get(self.base + "/healthz", timeout=2.0)[0] == 200:
                        return
            time.sleep(0.25)
        raise RuntimeError(f"{self.app} server not ready after {timeout:.0f} s")

    def sample(self, t: float) -> dict[str, Any]:
        """RSS, fds, /healthz latency, active calls and queued jobs, now."""
        assert self.proc is not None
        s: dict[str, Any] = {"t": round(t, 1), "rss_kb": proc_rss_kb(self.proc.pid),
                             "fds": proc_fds(self.proc.pid)}
        t0 = time.monotonic()
        try:
            status, _ = http_get(self.base + "/healthz", timeout=HEALTH_TIMEOUT_S)
            s["healthz_s"] = round(time.monotonic() - t0, 3)
            s["healthz"] = status
        except OSError as exc:
            s["healthz_s"] = round(time.monotonic() - t0, 3)
            s["healthz"] = f"error: {exc}"
        if s["healthz"] != 200 or s["healthz_s"] > HEALTH_TIMEOUT_S:
            self.health_timeouts += 1
        self.health_worst_s = max(self.health_worst_s, s["healthz_s"])
        with contextlib.suppress(OSError, ValueError):
            m = parse_metrics(http_get(self.base + "/metrics", timeout=HEALTH_TIMEOUT_S)[1]
                              .decode())
            s["active"] = metric(m, "audiosocket_active_calls")
            s["jobs_queued"] = metric(m, "audiosocket_jobs_queued")
            s["loop_lag_max_s"] = metric(m, "audiosocket_loop_lag_max_seconds")
            # Cumulative: where these step up dates a stall the end figures only bound.
            s["ticks_late_100ms"] = tick_lateness(m).get("over_0.1s")
            s["resyncs"] = metric(m, "audiosocket_clock_resyncs_total")
        self.samples.append(s)
        return s

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return parse_metrics(http_get(self.base + "/metrics", timeout=10.0)[1].decode())

    def api_call(self, call_uuid: str) -> dict[str, Any] | None:
        status, body = http_get(f"{self.base}/api/calls/{call_uuid}", timeout=10.0)
        return json.loads(body) if status == 200 else None

    def read_grace(self) -> None:
        """The server's shutdown grace, as its ``shutting_down`` log line states it."""
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"shutting_down"' in line:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self.grace_s = float(json.loads(line)["grace"])

    def log_summary(self) -> dict[str, Any]:
        """Counts of warning/error events in the server's JSON log."""
        events: Counter[str] = Counter()
        non_json = 0
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    non_json += 1
                    continue
                if isinstance(rec, dict) and rec.get("level") in ("warning", "error",
                                                                  "critical"):
                    events[f"{rec.get('level')}:{rec.get('event')}"] += 1
        return {"events": dict(events.most_common()), "non_json_lines": non_json}


# -- calls ----------------------------------------------------------------------------------


@dataclass
class CallSpec:
    """What one call does and how it should end."""

    type: str
    variant: str  # the digit, the word, or the utterance key
    expect: str | None  # the IVR result, for IVR calls
    kwargs: dict[str, Any]


@dataclass
class CallRecord:
    """One placed call: what the caller saw and, later, what the server stored."""

    n: int
    lane: int
    type: str
    variant: str
    expect: str | None
    uuid: str = ""
    started: float = 0.0  # time.time()
    duration: float = 0.0
    frames_sent: int = 0
    frames_received: int = 0
    hangup_by_server: bool = False
    closed_by_server: bool = False
    protocol_error: str | None = None
    error: str | None = None
    max_gap_s: float = 0.0
    caller_stall_s: float = 0.0  # the generator's own stalls (>50 ms) during this call
    end_reason: str | None = None
    ivr_result: str | None = None
    jobs: dict[str, str] = field(default_factory=dict)
    wav: dict[str, Any] = field(default_factory=dict)
    completed: bool = False
    whole: bool = False
    problems: list[str] = field(default_factory=list)


class Plan:
    """Rotates variants within each call type, so all of them recur all along."""

    def __init__(self, speech: dict[str, bytes]) -> None:
        self.speech = speech
        self.count: Counter[str] = Counter()

    def next(self, ctype: str) -> CallSpec:
        i = self.count[ctype]
        self.count[ctype] += 1
        msg_key = f"msg{i % len(MESSAGES)}"
        msg = self.speech[msg_key]
        if ctype == "ivr_dtmf":
            digit = "123"[i % 3]
            if digit != "3":
                kw = {"dtmf": digit, "dtmf_delay": DTMF_AT_S}
            else:
                # The message starts after its prompt; "#" follows the speech, well inside
                # the flow's 3 s silence limit.
                pcm = bytes(int(MESSAGE_AT_S * RATE) * 2) + msg
                hash_at = MESSAGE_AT_S + len(msg) / (2 * RATE) + 0.6
                kw = {"pcm": pcm, "send_silence": True, "dtmf": "3#",
                      "dtmf_delay": DTMF_AT_S, "dtmf_gap": hash_at - DTMF_AT_S}
            kw.update(linger=30.0, max_seconds=75.0)
            return CallSpec(ctype, digit, ANSWERS[digit], kw)
        if ctype == "ivr_speech":
            word = ("sales", "support")[i % 2]
            at = SPEECH_AT_S[(i // 2) % len(SPEECH_AT_S)]
            pcm = bytes(int(at * RATE) * 2) + self.speech[word]
            # transmit_silence=yes: a live channel keeps sending while the caller listens.
            kw = {"pcm": pcm, "send_silence": True, "linger": 30.0, "max_seconds": 75.0}
            return CallSpec(ctype, f"{word}@{at:g}s", word, kw)
        # transcribe / record: the speech, then hang up (linger: last frames reach it).
        kw = {"pcm": msg, "linger": 0.3, "max_seconds": 30.0}
        return CallSpec(ctype, msg_key, None, kw)


class LagProbe:
    """The caller's own lateness: a 20 ms absolute-deadline ticker on the caller's loop.

    Every ``place_call`` send clock in this process runs on the same loop, so what this
    ticker is late by, they are late by: if it is large, the load generator, not the
    server, is what a figure measures.
    """

    def __init__(self) -> None:
        self.max_s = 0.0
        self.max_at = 0.0  # monotonic time of the worst tick
        self.window_max_s = 0.0
        # Stall episodes over 50 ms, (monotonic time, worst lateness): place_call's send
        # clock catches up after one with a burst, which the server sees as a gap and then
        # late frames; calls that overlap one are told apart by this.
        self.episodes: list[tuple[float, float]] = []
        self._in_episode = False
        self.late_20ms = 0
        self.late_100ms = 0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += 0.02
            await asyncio.sleep(max(0.0, due - loop.time()))
            late = loop.time() - due
            self.ticks += 1
            if late > self.max_s:
                self.max_s, self.max_at = late, loop.time()
            if late > 0.05:
                if self._in_episode:
                    t, worst = self.episodes[-1]
                    self.episodes[-1] = (t, max(worst, late))
                else:
                    self.episodes.append((loop.time() - late, late))
                self._in_episode = True
            elif late < 0.02:
                self._in_episode = False
            self.window_max_s = max(self.window_max_s, late)
            self.late_20ms += late > 0.02
            self.late_100ms += late > 0.1
            if late > 0.2:
                due = loop.time()  # resync, as the server's clock does, not a burst

    def stalls_between(self, t0: float, t1: float) -> float:
        """Sum of the caller's stall episodes that began in [t0, t1] (monotonic)."""
        return sum(late for t, late in self.episodes if t0 <= t <= t1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Traffic:
    """The lanes: each places calls one after another until told to stop."""

    def __init__(self, servers: dict[str, Server], plan: Plan, lanes: int,
                 deadline: float | None, max_calls: int | None, probe: LagProbe) -> None:
        self.servers = servers
        self.probe = probe
        self.plan = plan
        self.lanes = lanes
        self.deadline = deadline
        self.max_calls = max_calls
        self.calls: list[CallRecord] = []
        self.in_flight = 0

    def may_place(self) -> bool:
        if self.max_calls is not None and len(self.calls) >= self.max_calls:
            return False
        return self.deadline is None or time.monotonic() < self.deadline

    async def lane(self, index: int) -> None:
        k = index  # lanes start at different types so the mix is even from the start
        while self.may_place():
            ctype = TYPES[k % len(TYPES)]
            k += 1
            spec = self.plan.next(ctype)
            rec = CallRecord(n=len(self.calls), lane=index, type=ctype, variant=spec.variant,
                             expect=spec.expect)
            self.calls.append(rec)
            self.in_flight += 1
            try:
                await self.place(rec, spec)
            finally:
                self.in_flight -= 1

    async def place(self, rec: CallRecord, spec: CallSpec) -> None:
        server = self.servers[APP_OF[spec.type]]
        rec.started = time.time()
        t0 = time.monotonic()
        result: CallResult | None = None
        try:
            # Bounded: a server that never answers must not hang the soak itself.
            async with asyncio.timeout(spec.kwargs["max_seconds"] + 30):
                result = await place_call("127.0.0.1", server.port, rate=RATE, **spec.kwargs)
        except TimeoutError:
            rec.error = "caller timed out (no end of call)"
        except OSError as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
        # loop.time() is time.monotonic() on both asyncio and uvloop.
        rec.caller_stall_s = round(self.probe.stalls_between(t0, time.monotonic()), 3)
        if result is None:
            rec.duration = time.monotonic() - t0
            return
        rec.uuid = result.uuid
        rec.duration = result.duration
        rec.frames_sent, rec.frames_received = result.frames_sent, result.frames_received
        rec.hangup_by_server, rec.closed_by_server = result.hangup_by_server, \
            result.closed_by_server
        rec.protocol_error = result.protocol_error
        # The longest silence of the server while the call was up: from connect to the first
        # frame, between frames, and (if we ended it) from the last frame to our hang-up.
        marks = [t0, *result.arrivals]
        if not (result.hangup_by_server or result.closed_by_server):
            marks.append(t0 + result.duration)
        rec.max_gap_s = round(max((b - a for a, b in itertools.pairwise(marks)),
                                  default=result.duration), 3)

    async def run(self) -> None:
        await asyncio.gather(*(self.lane(i) for i in range(self.lanes)))


# -- checks after the run -------------------------------------------------------------------


def drain(servers: dict[str, Server], calls: list[CallRecord], timeout: float) -> bool:
    """Until every call's post-call jobs are done or failed (from the API, per call: the
    ``audiosocket_jobs_queued`` gauge is read too but only reported) or ``timeout``."""
    end = time.monotonic() + timeout
    pending = [c for c in calls if c.uuid]
    last_print = 0.0
    while True:
        still = []
        for c in pending:
            try:
                data = servers[APP_OF[c.type]].api_call(c.uuid)
            except OSError:
                data = None
            jobs = (data or {}).get("jobs") or {}
            if data is None or not jobs or any(s not in ("done", "failed")
                                              for s in jobs.values()):
                still.append(c)
        pending = still
        if not pending:
            return True
        if time.monotonic() >= end:
            print(f"drain: gave up with {len(pending)} calls' jobs unfinished", flush=True)
            return False
        if time.monotonic() - last_print > 15:
            last_print = time.monotonic()
            print(f"drain: {len(pending)} calls with jobs pending", flush=True)
        time.sleep(2.0)


def verify(servers: dict[str, Server], calls: list[CallRecord]) -> None:
    """Fill in each call's stored outcome, its WAV check, and whether it completed."""
    for c in calls:
        if c.error:
            c.problems.append(c.error)
        if c.protocol_error:
            c.problems.append(f"protocol error: {c.protocol_error}")
        if not c.uuid:
            continue
        server = servers[APP_OF[c.type]]
        try:
            data = server.api_call(c.uuid)
        except OSError as exc:
            data = None
            c.problems.append(f"api: {exc}")
        if data is None:
            c.problems.append("call not in the store")
            continue
        c.end_reason = data.get("end_reason")
        c.ivr_result = (data.get("ivr") or {}).get("result")
        c.jobs = dict(data.get("jobs") or {})
        if c.frames_received == 0:
            c.problems.append("no audio back")
        if not data.get("ended_at"):
            c.problems.append("not ended in the store")
        if c.type.startswith("ivr"):
            if not c.hangup_by_server:
                c.problems.append("IVR did not hang up")
            if c.ivr_result != c.expect:
                c.problems.append(f"IVR result {c.ivr_result!r}, expected {c.expect!r}")
        else:
            if c.hangup_by_server or c.closed_by_server:
                c.problems.append("server ended a call the caller should have ended")
            if c.end_reason != "remote_closed":
                c.problems.append(f"end reason {c.end_reason!r}")
        c.completed = not c.problems
        # Whole: the WAV's header matches the file and the caller's time, and every step
        # after the call (archives, transcript, summary) is done, with its files there.
        wav = wav_check(server.data_dir / "recordings" / f"{c.uuid}.wav")
        c.wav = wav
        why = []
        if not wav.get("ok"):
            why.append(f"wav: {wav.get('why')}")
        elif wav.get("duration") is None:
            why.append("wav without a duration")
        else:
            # 0.5 s, plus the generator's own stalls during the call: after one, its send
            # clock catches up in a burst, and the recorder places the late frames after
            # the gap it already filled with silence (helpers/recorder.py, JITTER_SLOTS),
            # so the file runs longer by the stall. That is the generator, not the server;
            # it is counted apart (recordings_long_by_caller_stall).
            off = wav["duration"] - c.duration
            wav["off_s"] = round(off, 3)
            if abs(off) > 0.5 + c.caller_stall_s:
                why.append(f"wav {wav['duration']} s vs caller {c.duration:.3f} s")
            elif abs(off) > 0.5:
                wav["long_by_caller_stall"] = True
        for step in STEPS:
            if c.jobs.get(step) != "done":
                why.append(f"job {step}: {c.jobs.get(step)}")
        recs = data.get("recordings") or {}
        for fmt in ("m4a", "mp3"):
            path = server.data_dir / "archive" / f"{c.uuid}.{fmt}"
            if fmt not in recs or not path.exists() or path.stat().st_size == 0:
                why.append(f"{fmt} archive missing")
        if not data.get("summary"):
            why.append("no summary")
        c.whole = not why
        c.problems += why


def stop_servers(servers: dict[str, Server]) -> None:
    """SIGTERM every server at once, then time each exit (up to grace + 5 s + a margin)."""
    sent = {}
    for s in servers.values():
        assert s.proc is not None
        s.read_grace()
        with contextlib.suppress(ProcessLookupError):
            s.proc.send_signal(signal.SIGTERM)
        sent[s.app] = time.monotonic()
    for s in servers.values():
        assert s.proc is not None
        try:
            s.exit_code = s.proc.wait(timeout=s.grace_s + 5 + 10)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.exit_code = s.proc.wait()
            s.exit_code = s.exit_code if s.exit_code is not None else -9
        s.exit_s = round(time.monotonic() - sent[s.app], 2)


def tick_lateness(m: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    """From the tick lateness histogram: count, mean, p99 and worst bucket bounds."""
    buckets = sorted(((float(lb["le"]), v) for lb, v in
                      m.get("audiosocket_tick_lateness_seconds_bucket", [])),
                     key=lambda x: x[0])
    total = metric(m, "audiosocket_tick_lateness_seconds_count") or 0.0
    total_sum = metric(m, "audiosocket_tick_lateness_seconds_sum") or 0.0
    if not buckets or not total:
        return {}
    p99 = next((le for le, v in buckets if v >= 0.99 * total), float("inf"))
    worst = next((le for le, v in buckets if v >= total), float("inf"))
    over = {f"over_{le:g}s": int(total - v) for le, v in buckets
            if le in (0.02, 0.05, 0.1, 0.2, 0.5)}
    return {"ticks": int(total), "mean_s": round(total_sum / total, 5), "p99_le_s": p99,
            "max_le_s": worst, **over}


def delta(m: dict[str, list[tuple[dict[str, str], float]]],
          m0: dict[str, list[tuple[dict[str, str], float]]],
          name: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``name``'s series (and its histogram parts) in ``m`` minus the same in ``m0``."""
    out = {}
    for part in (name, name + "_bucket", name + "_count", name + "_sum"):
        before = {tuple(sorted(lb.items())): v for lb, v in m0.get(part, [])}
        out[part] = [(lb, v - before.get(tuple(sorted(lb.items())), 0.0))
                     for lb, v in m.get(part, [])]
    return out


def server_figures(s: Server) -> dict[str, Any]:
    """Everything /metrics says that the summary reports."""
    try:
        m = s.metrics()
    except OSError as exc:
        return {"error": str(exc)}
    m0 = s.start_metrics
    jobs: dict[str, dict[str, float]] = {}
    for labels, v in m.get("audiosocket_jobs_total", []):
        jobs.setdefault(labels.get("status", "?"), {})[labels.get("step", "?")] = v
    return {
        "jobs_total": jobs,
        "jobs_queued_gauge": metric(m, "audiosocket_jobs_queued"),
        "protocol_errors": metric(m, "audiosocket_protocol_errors_total"),
        "protocol_errors_by_type": {lb.get("type", "?"): v for lb, v in
                                    m.get("audiosocket_protocol_errors_total", [])},
        "calls_ended": {lb.get("reason", "?"): v for lb, v in
                        m.get("audiosocket_calls_ended_total", [])},
        "loop_lag_max_s": metric(m, "audiosocket_loop_lag_max_seconds"),
        "watchdog_stalls": metric(m, "audiosocket_watchdog_stalls_total"),
        "watchdog_longest_stall_s": metric(m, "audiosocket_watchdog_longest_stall_seconds"),
        "tick_lateness": tick_lateness(m),  # since the server started
        # Since the first call (start-up, e.g. prompt pre-warming, left out).
        "tick_lateness_soak": tick_lateness(delta(m, m0, "audiosocket_tick_lateness_seconds")),
        "clock_resyncs_soak": metric(delta(m, m0, "audiosocket_clock_resyncs_total"),
                                     "audiosocket_clock_resyncs_total"),
        "clock_resyncs": metric(m, "audiosocket_clock_resyncs_total"),
        "session_errors": metric(m, "audiosocket_session_errors_total"),
        "write_stalls": metric(m, "audiosocket_write_stalls_total"),
    }


# -- the run --------------------------------------------------------------------------------


def sampler(servers: dict[str, Server], traffic: Traffic, probe: LagProbe, every: float,
            t_start: float, stop: threading.Event, machine: list[dict[str, Any]]) -> None:
    """Every ``every`` s: sample each server and print one line (a thread of its own, so
    the caller's event loop only runs calls). ``machine`` gets the host's busy and steal
    share: a stall every process sees at once is the VM's, not the server's."""
    prev = cpu_times()
    while not stop.wait(every):
        t = time.monotonic() - t_start
        cur = cpu_times()
        span = max(1, cur[0] - prev[0])
        with open("/proc/loadavg") as f:
            load1 = float(f.read().split()[0])
        machine.append({"t": round(t, 1), "load1": load1,
                        "busy_pct": round(100 * (1 - (cur[1] - prev[1]) / span), 1),
                        "steal_pct": round(100 * (cur[2] - prev[2]) / span, 1)})
        prev = cur
        parts = []
        for s in servers.values():
            x = s.sample(t)
            rss = f"{x['rss_kb'] / 1024:.0f}M" if x.get("rss_kb") else "-"
            parts.append(f"{s.app} rss {rss} fd {x.get('fds')} act {_n(x.get('active'))} "
                         f"q {_n(x.get('jobs_queued'))} hz {x['healthz_s'] * 1000:.0f}ms")
        done = sum(1 for c in traffic.calls if c.uuid or c.error)
        lag = probe.window_max_s * 1000
        probe.window_max_s = 0.0
        m = machine[-1]
        print(f"[{t:6.0f}s] calls {len(traffic.calls)} placed, {done} ended | "
              + " | ".join(parts) + f" | caller lag {lag:.0f}ms | cpu {m['busy_pct']:.0f}% "
              f"steal {m['steal_pct']:.1f}% load {m['load1']:g}", flush=True)


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


async def drive(traffic: Traffic, probe: LagProbe) -> None:
    probe.start()
    try:
        await traffic.run()
    finally:
        await probe.stop()


def run_loop(coro: Any, use_uvloop: bool) -> None:
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.run(coro)
            return
    asyncio.run(coro)


def summarise(args: argparse.Namespace, servers: dict[str, Server], calls: list[CallRecord],
              probe: LagProbe, figures: dict[str, dict[str, Any]], drained: bool,
              t_start: float, loadavg: list[list[str]],
              machine: list[dict[str, Any]]) -> dict[str, Any]:
    """All figures as one dict, and the verdict."""
    wall_s = time.monotonic() - t_start
    by_type: dict[str, dict[str, int]] = {}
    for t in TYPES:
        cs = [c for c in calls if c.type == t]
        by_type[t] = {"placed": len(cs), "completed": sum(c.completed for c in cs),
                      "whole": sum(c.whole for c in cs)}
    hangs = []
    for c in calls:
        if c.max_gap_s > HANG_GAP_S:
            hangs.append(f"call {c.uuid} ({c.type}): no frame for {c.max_gap_s:.2f} s")
        if c.error and "timed out" in c.error:
            hangs.append(f"call {c.uuid or c.n} ({c.type}): {c.error}")
    srv: dict[str, Any] = {}
    for app, s in servers.items():
        rss = [x["rss_kb"] for x in s.samples if x.get("rss_kb")]
        fds = [x["fds"] for x in s.samples if x.get("fds") is not None]
        if s.health_timeouts:
            hangs.append(f"{app}: /healthz failed or slower than {HEALTH_TIMEOUT_S:g} s "
                         f"{s.health_timeouts} times (worst {s.health_worst_s:.2f} s)")
        if s.exit_s is not None and s.exit_s > s.grace_s + 5:
            hangs.append(f"{app}: exit took {s.exit_s:.1f} s after SIGTERM "
                         f"(grace {s.grace_s:g} s + 5)")
        srv[app] = {
            "pid": s.proc.pid if s.proc else None, "port": s.port, "http_port": s.http_port,
            "log": str(s.log_path), "data_dir": str(s.data_dir),
            "rss_kb": {"start": rss[0] if rss else None, "max": max(rss, default=None),
                       "end": rss[-1] if rss else None},
            "fds": {"start": fds[0] if fds else None, "max": max(fds, default=None),
                    "end": fds[-1] if fds else None},
            "healthz_worst_s": s.health_worst_s, "healthz_failures": s.health_timeouts,
            "exit_code": s.exit_code, "exit_s": s.exit_s, "grace_s": s.grace_s,
            "log_events": s.log_summary(), **figures.get(app, {}),
            "samples": s.samples,
        }
    caller_pe = sum(1 for c in calls if c.protocol_error)
    server_pe = sum(int(f.get("protocol_errors") or 0) for f in figures.values())
    jobs_failed = sum(sum(f.get("jobs_total", {}).get("failed", {}).values())
                      for f in figures.values())
    jobs_not_done = sum(1 for c in calls if c.uuid for st in STEPS
                        if c.jobs.get(st) != "done")
    verdict = {
        "hangs": len(hangs),
        "protocol_errors": caller_pe + server_pe,
        "calls_not_completed": sum(not c.completed for c in calls),
        "jobs_failed": int(jobs_failed),
        "jobs_not_done": jobs_not_done,
        "recordings_not_whole": sum(c.completed and not c.whole for c in calls),
        "recordings_long_by_caller_stall": sum(bool(c.wav.get("long_by_caller_stall"))
                                               for c in calls),
        "servers_not_exit_0": sum(s.exit_code != 0 for s in servers.values()),
        "drained": drained,
    }
    ok = (not hangs and verdict["protocol_errors"] == 0 and verdict["calls_not_completed"] == 0
          and verdict["jobs_failed"] == 0 and jobs_not_done == 0
          and verdict["recordings_not_whole"] == 0 and verdict["servers_not_exit_0"] == 0
          and drained and len(calls) > 0)
    return {
        "ok": ok, "verdict": verdict, "hang_list": hangs,
        "args": vars(args), "wall_s": round(wall_s, 1),
        "loadavg_start_end": loadavg,
        "calls": {"placed": len(calls), "completed": sum(c.completed for c in calls),
                  "whole": sum(c.whole for c in calls), "by_type": by_type,
                  "caller_protocol_errors": caller_pe,
                  "max_gap_s": max((c.max_gap_s for c in calls), default=0.0)},
        "caller_lateness": {"max_s": round(probe.max_s, 4),
                            "max_at_s": round(probe.max_at - t_start, 1),
                            "stall_episodes_over_50ms": len(probe.episodes),
                            "ticks": probe.ticks,
                            "late_over_20ms": probe.late_20ms,
                            "late_over_100ms": probe.late_100ms},
        "servers": srv,
        "machine": {"samples": machine,
                    "steal_pct_max": max((x["steal_pct"] for x in machine), default=None),
                    "busy_pct_mean": round(sum(x["busy_pct"] for x in machine)
                                           / len(machine), 1) if machine else None},
        "failed_calls": [asdict(c) for c in calls if not (c.completed and c.whole)],
        "call_list": [{k: v for k, v in asdict(c).items() if k not in ("wav",)}
                      for c in calls],
    }


def print_summary(out: dict[str, Any]) -> None:
    calls = out["calls"]
    print("\n== soak summary ==")
    mach = out["machine"]
    print(f"wall {out['wall_s']:.0f} s, load avg start/end {out['loadavg_start_end']}, "
          f"host CPU busy {_n(mach['busy_pct_mean'])} % (mean), steal max "
          f"{_n(mach['steal_pct_max'])} %")
    print(f"{'type':<12}{'placed':>8}{'completed':>11}{'whole':>8}")
    for t, d in calls["by_type"].items():
        print(f"{t:<12}{d['placed']:>8}{d['completed']:>11}{d['whole']:>8}")
    print(f"{'all':<12}{calls['placed']:>8}{calls['completed']:>11}{calls['whole']:>8}")
    print(f"longest no-frame gap in a call: {calls['max_gap_s']:.3f} s; caller protocol "
          f"errors: {calls['caller_protocol_errors']}")
    cl = out["caller_lateness"]
    print(f"caller (load generator) lateness: max {cl['max_s'] * 1000:.1f} ms "
          f"(at {cl['max_at_s']:.0f} s), {cl['stall_episodes_over_50ms']} stalls > 50 ms, "
          f"{cl['late_over_20ms']} of {cl['ticks']} ticks > 20 ms, "
          f"{cl['late_over_100ms']} > 100 ms")
    print(f"\n{'server':<11}{'jobs done':>10}{'failed':>7}{'retry':>6}{'queued':>7}"
          f"{'lag max':>9}{'stalls':>7}{'tick p99/max':>14}{'resync':>7}{'proto':>6}"
          f"{'RSS MB start/max/end':>22}{'fds s/m/e':>12}{'exit':>6}{'in s':>6}")
    for app, s in out["servers"].items():
        jt = s.get("jobs_total", {})
        done = int(sum(jt.get("done", {}).values()))
        failed = int(sum(jt.get("failed", {}).values()))
        retry = int(sum(jt.get("retry", {}).values()))
        tl = s.get("tick_lateness_soak") or {}
        lag = s.get("loop_lag_max_s")
        rss = s["rss_kb"]
        fds = s["fds"]

        def mb(v: int | None) -> str:
            return "-" if v is None else f"{v / 1024:.0f}"

        print(f"{app:<11}{done:>10}{failed:>7}{retry:>6}{_n(s.get('jobs_queued_gauge')):>7}"
              f"{'-' if lag is None else f'{lag * 1000:.0f}ms':>9}"
              f"{_n(s.get('watchdog_stalls')):>7}"
              f"{(str(tl.get('p99_le_s', '-')) + '/' + str(tl.get('max_le_s', '-'))):>14}"
              f"{_n(s.get('clock_resyncs_soak')):>7}{_n(s.get('protocol_errors')):>6}"
              f"{mb(rss['start']) + '/' + mb(rss['max']) + '/' + mb(rss['end']):>22}"
              f"{'/'.join(_n(fds[k]) for k in ('start', 'max', 'end')):>12}"
              f"{_n(s.get('exit_code')):>6}{_n(s.get('exit_s')):>6}")
    print("(lag max: the watchdog's heartbeat, since start; tick p99/max: the histogram "
          "bucket bounds, in s, over the soak; resync: over the soak)")
    for app, s in out["servers"].items():
        tl = s.get("tick_lateness") or {}
        print(f"{app} since start: tick lateness p99 <= {tl.get('p99_le_s')} s, max <= "
              f"{tl.get('max_le_s')} s, ticks > 0.1 s {tl.get('over_0.1s')}, > 0.2 s "
              f"{tl.get('over_0.2s')}; resyncs {_n(s.get('clock_resyncs'))}; longest watchdog "
              f"stall {_n(s.get('watchdog_longest_stall_s'))} s")
    for app, s in out["servers"].items():
        ev = s["log_events"]["events"]
        if ev:
            print(f"{app} log warnings/errors: {ev}")
    v = out["verdict"]
    print(f"\nhangs {v['hangs']}, protocol errors {v['protocol_errors']}, calls not completed "
          f"{v['calls_not_completed']}, jobs failed {v['jobs_failed']} (not done "
          f"{v['jobs_not_done']}), recordings not whole {v['recordings_not_whole']} (long by "
          f"the caller's own stall, not counted: {v['recordings_long_by_caller_stall']}), "
          f"servers "
          f"not exiting 0 {v['servers_not_exit_0']}, drained {v['drained']}")
    for h in out["hang_list"][:20]:
        print(f"  hang: {h}")
    for c in out["failed_calls"][:20]:
        print(f"  call {c['uuid'] or c['n']} {c['type']} {c['variant']}: "
              f"{'; '.join(c['problems'])}")
    print("PASS" if out["ok"] else "FAIL", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="place calls for this long (0: no time limit, use --calls)")
    ap.add_argument("--calls", type=int, default=None, help="stop placing after N calls")
    ap.add_argument("--lanes", type=int, default=6, help="calls up at once")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--drain-timeout", type=float, default=600.0,
                    help="longest wait for post-call jobs after the last call")
    ap.add_argument("--out", type=Path, default=None, help="logs, data dirs, figures")
    ap.add_argument("--json", type=Path, default=None, help="write all figures here too")
    ap.add_argument("--no-uvloop-caller", action="store_true",
                    help="run the caller on the stdlib loop (servers keep their defaults)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 and not args.calls:
        ap.error("give --minutes > 0 or --calls N")

    out_dir = args.out or ROOT / "bench" / "results" / time.strftime("soak-%Y%m%d-%H%M%S")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"soak: output in {out_dir}", flush=True)
    load0 = open("/proc/loadavg").read().split()[:3]

    t = time.monotonic()
    speech = synthesise(out_dir)
    print(f"speech ready in {time.monotonic() - t:.1f} s "
          f"({', '.join(f'{k} {len(v) / 2 / RATE:.1f}s' for k, v in speech.items())})",
          flush=True)

    env = dict(os.environ, AUDIOSOCKET_LOG_FORMAT="json")
    servers = {app: Server(app, free_port(), free_port(), out_dir / "data" / app,
                           out_dir / f"{app}.log") for app in APPS}
    stop_sampling = threading.Event()
    machine: list[dict[str, Any]] = []
    sampler_thread: threading.Thread | None = None
    traffic: Traffic | None = None
    probe = LagProbe()
    try:
        for s in servers.values():
            s.start(env)
        for s in servers.values():
            s.wait_ready(timeout=300.0)
            print(f"{s.app}: pid {s.proc.pid if s.proc else '?'}, port {s.port}, "
                  f"http {s.http_port}, ready", flush=True)
        t_start = time.monotonic()
        for s in servers.values():
            s.sample(0.0)
            s.start_metrics = s.metrics()
        deadline = t_start + args.minutes * 60 if args.minutes > 0 else None
        traffic = Traffic(servers, Plan(speech), args.lanes, deadline, args.calls, probe)
        sampler_thread = threading.Thread(
            target=sampler, args=(servers, traffic, probe, args.sample_s, t_start,
                                  stop_sampling, machine), daemon=True)
        sampler_thread.start()
        run_loop(drive(traffic, probe), not args.no_uvloop_caller)
        placing_s = time.monotonic() - t_start
        print(f"placing stopped after {placing_s:.0f} s, {len(traffic.calls)} calls; "
              "waiting for post-call jobs", flush=True)
        t = time.monotonic()
        drained = drain(servers, traffic.calls, args.drain_timeout)
        print(f"jobs drained: {drained} in {time.monotonic() - t:.0f} s", flush=True)
        verify(servers, traffic.calls)
        figures = {app: server_figures(s) for app, s in servers.items()}
        stop_sampling.set()
        sampler_thread.join()
        for s in servers.values():
            s.sample(time.monotonic() - t_start)  # the "end" sample: after the drain
    finally:
        stop_sampling.set()
        if any(s.proc is not None and s.exit_code is None for s in servers.values()):
            stop_servers({a: s for a, s in servers.items() if s.proc is not None})
    for s in servers.values():
        print(f"{s.app}: SIGTERM → exit {s.exit_code} in {s.exit_s} s", flush=True)
    loadavg = [load0, open("/proc/loadavg").read().split()[:3]]
    json_path = args.json
    args.out, args.json = str(out_dir), str(args.json) if args.json else None
    result = summarise(args, servers, traffic.calls, probe, figures, drained, t_start,
                       loadavg, machine)
    print_summary(result)
    text = json.dumps(result, indent=1, default=str)
    (out_dir / "soak.json").write_text(text)
    if json_path:
        json_path.write_text(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
