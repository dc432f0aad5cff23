"""Range-request benchmark: web.files.serve_file vs nginx (and aiohttp FileResponse).

Prints figures; not a test. Needs ``wrk``, ``nginx`` and ``taskset`` on PATH. Every server is
pinned to CPU 0 and wrk to CPU 1, all started in the same run so they share the same noise.
Each wrk client asks for random 64 KiB ranges of one ~5 MB file and counts every status other
than 206 as an error.

    .venv/bin/python bench/range_bench.py [--duration 20] [--connections 1000]

Internal: ``range_bench.py serve --kind ours|ours-uvloop|fileresponse --port N --file F``
runs one aiohttp server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RANGE_LEN = 64 * 1024
FILE_SIZE = 5 * 1024 * 1024

LUA = r"""
local size = tonumber(os.getenv("RANGE_FILE_SIZE"))
local span = tonumber(os.getenv("RANGE_LEN"))
local path = os.getenv("RANGE_PATH")
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 100 + seed)
end

function request()
  local first = math.random(0, size - span)
  return wrk.format("GET", path, {["Range"] = "bytes=" .. first .. "-" .. (first + span - 1)})
end

-- No response() callback: it would copy every 64 KiB body into Lua and make wrk the
-- bottleneck. A wrong status shows up as errors.status (non-2xx/3xx) or, for a 200 with
-- the whole file, as bytes per response far above the range length.

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d bytes=%d status=%d connect=%d "
    .. "read=%d write=%d timeout=%d p50=%d p95=%d p99=%d\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read,
    e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""

NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  types {{ audio/wav wav; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location /f/ {{ alias {tmp}/; }}
  }}
}}
"""


PORTAL_CALL = "00000000-0000-4000-8000-000000000001"


def serve_portal(port: int, file: Path, fast: bool) -> None:
    """The real portal (``make_app`` + ``start_http``) on uvloop, the file as a call's MP3."""
    sys.path.insert(0, str(ROOT))
    import uvloop

    from audiosocket.config import Config, WebConfig
    from audiosocket.root.app import Services
    from helpers.store.db import CallStore
    from web.app import make_app, start_http

    async def main() -> None:
        data = Path(tempfile.mkdtemp(prefix="range_bench_store_"))
        store = CallStore(data / "calls.db").open()
        store.call_started(PORTAL_CALL, "ivr", 8000, None, time.time() - 60)
        store.call_ended(PORTAL_CALL, time.time(), "remote_closed", 0, 0)
        store.set_recording(PORTAL_CALL, "mp3", str(file), FILE_SIZE, 300.0)
        store.flush()
        cfg = Config(data_dir=str(data), web=WebConfig(fast_ranges=fast))
        app = make_app(cfg, Services(store=store))
        await start_http(app, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def path_for(target: str) -> str:
    if target.startswith("portal"):
        return f"/api/calls/{PORTAL_CALL}/recording.mp3"
    return "/f/rec.wav"


def serve(kind: str, port: int, file: Path) -> None:
    """Run one aiohttp server (called in a pinned subprocess)."""
    if kind in ("portal", "portal-aiohttp"):
        serve_portal(port, file, fast=kind == "portal")
        return
    sys.path.insert(0, str(ROOT))
    from aiohttp import web

    from web.files import serve_file

    async def ours(request: web.Request) -> web.StreamResponse:
        return await serve_file(request, file, "audio/wav")

    async def fileresponse(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(file)

    app = web.Application()
    app.router.add_get("/f/{name}", fileresponse if kind == "fileresponse" else ours)
    if kind != "ours":  # "ours" stays on asyncio so loop.sendfile is native (zero-copy)
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, backlog=4096, print=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def run_wrk(port: int, lua: Path, args: argparse.Namespace, path: str) -> dict[str, float]:
    env = dict(
        os.environ,
        RANGE_FILE_SIZE=str(FILE_SIZE),
        RANGE_LEN=str(RANGE_LEN),
        RANGE_PATH=path,
    )
    cmd = [
        "taskset", "-c", "1", "wrk", "-c", str(args.connections), "-t", "2",
        "-d", f"{args.duration}s", "--latency", "-s", str(lua), f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^RESULT (.*)$", out, re.M)
    if match is None:
        raise RuntimeError(out)
    fields = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    print(match.group(1), file=sys.stderr)
    fields["rps"] = fields["requests"] / (fields["duration_us"] / 1e6)
    fields["errors"] = sum(fields[k] for k in ("status", "connect", "read", "write", "timeout"))
    # A 206 for 64 KiB is ~64.2 KiB on the wire (wrk also counts bytes of responses still in
    # flight at the end); a 200 with the whole 5 MiB file would be 80x that.
    per_response = fields["bytes"] / max(fields["requests"], 1)
    if not RANGE_LEN < per_response < 2 * RANGE_LEN:
        fields["errors"] += fields["requests"]
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    srv = sub.add_parser("serve")
    srv.add_argument("--kind", required=True)
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--file", type=Path, required=True)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument(
        "--targets", default="nginx,portal,portal-aiohttp,ours-uvloop,fileresponse",
        help="comma list: nginx, portal (the real app with the range fast path),"
        " portal-aiohttp (fast_ranges off), ours, ours-uvloop (serve_file alone),"
        " fileresponse",
    )
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.kind, args.port, args.file)
        return

    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install -y wrk nginx util-linux)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))

    tmp = Path(tempfile.mkdtemp(prefix="range_bench_"))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        (tmp / "rec.wav").write_bytes(os.urandom(FILE_SIZE))
        # nginx workers drop root privileges (to nobody): they must be able to read the file.
        tmp.chmod(0o755)
        (tmp / "rec.wav").chmod(0o644)
        lua = tmp / "ranges.lua"
        lua.write_text(LUA)
        ports: dict[str, int] = {}
        targets = args.targets.split(",")
        for target in targets:
            port = ports[target] = free_port()
            if target == "nginx":
                (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=port))
                cmd = ["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)]
            else:
                cmd = [
                    sys.executable, __file__, "serve", "--kind", target,
                    "--port", str(port), "--file", str(tmp / "rec.wav"),
                ]  # fmt: skip
            procs.append((target, subprocess.Popen(["taskset", "-c", "0", *cmd])))
        for port in ports.values():
            wait_port(port)

        results: dict[str, dict[str, float]] = {}
        for target in targets:
            print(f"running wrk against {target} ...", file=sys.stderr, flush=True)
            results[target] = run_wrk(ports[target], lua, args, path_for(target))
            time.sleep(2)  # let TIME_WAIT / server queues settle between targets

        base = results.get("nginx", {}).get("rps")
        print(
            f"\n{args.connections} connections, {args.duration}s, random {RANGE_LEN // 1024} KiB "
            f"ranges of a {FILE_SIZE // 2**20} MiB file; servers on CPU 0, wrk on CPU 1\n"
        )
        print(f"{'target':<14}{'req/s':>10}{'vs nginx':>10}{'p50 ms':>9}{'p95 ms':>9}"
              f"{'p99 ms':>9}{'errors':>8}")  # fmt: skip
        for target, r in results.items():
            ratio = f"{r['rps'] / base:.0%}" if base else "-"
            print(
                f"{target:<14}{r['rps']:>10.0f}{ratio:>10}{r['p50'] / 1000:>9.1f}"
                f"{r['p95'] / 1000:>9.1f}{r['p99'] / 1000:>9.1f}{r['errors']:>8.0f}"
            )
    finally:
        for target, proc in procs:
            proc.send_signal(signal.SIGQUIT if target == "nginx" else signal.SIGTERM)
        for _, proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
