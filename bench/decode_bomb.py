"""Decompression bomb: memory and time to refusal, through import and through HTTP upload.

Builds two small FLAC files holding 6 hours of tone (issue 13, point 2; see
``tests/helpers/decode_bombs.py``): one whose header says 6 hours, one whose header says
20 s. Then, side by side in one run:

- ``whole decode``: what the importer did before, the file decoded into memory
  (``helpers.ffmpeg.decode_to_pcm``), in a fresh interpreter, for comparison;
- ``import``: ``helpers.postcall.importer.import_file`` in a fresh interpreter (peak RSS growth from
  ``ru_maxrss``, time to the ``ValidationError``);
- ``upload``: ``POST /api/uploads`` to a real ``audiosocket serve --app echo`` (portal on),
  the server's peak RSS growth read from ``/proc/<pid>/status`` (``VmHWM``), one upload at a
  time and then two at once (``MAX_CONCURRENT_IMPORTS``).

Medians over ``--repeat`` runs. Target: under 50 MB and refused within 2 s.

    .venv/bin/python bench/decode_bomb.py [--rate 8000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.decode_bombs import honest_bomb, lying_bomb  # noqa: E402

BIN = Path(sys.executable).parent / "audiosocket"

CHILD = """
import json, resource, sys, time
from pathlib import Path
from helpers.ffmpeg import decode_to_pcm
from helpers.postcall.importer import ValidationError, import_file
from helpers.store.db import CallStore

mode, src, data, rate = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
store = CallStore(data).open()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
outcome = "accepted"
if mode == "whole":
    pcm = decode_to_pcm(src, min(rate, 16000))
    outcome = f"{len(pcm) / 2 / min(rate, 16000):.0f} s decoded"
    del pcm
else:
    try:
        import_file(store, None, src, data)
    except ValidationError as exc:
        outcome = exc.reason
print(json.dumps({"seconds": time.monotonic() - started, "outcome": outcome,
                  "mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
store.close()
"""


def in_child(mode: str, src: Path, work: Path, rate: int) -> dict[str, object]:
    data = Path(tempfile.mkdtemp(dir=work))
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(data), str(rate)],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=True)
    result: dict[str, object] = json.loads(
        [line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} never opened")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(http: int, path: Path) -> tuple[float, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{http}/api/uploads", data=path.read_bytes(), method="POST",
        headers={"Content-Type": "audio/flac", "X-Filename": path.name})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=900) as resp:
            body = json.loads(resp.read())
            return time.monotonic() - started, f"{resp.status} accepted {body.get('duration')}"
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
        return time.monotonic() - started, f"{exc.code} {body.get('reason')}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=8000, help="sample rate of the bombs")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="decode-bomb-"))
    tag = f"{args.rate // 1000}k"
    t0 = time.monotonic()
    bombs = {
        "honest header": honest_bomb(work / f"honest-{tag}.flac", args.rate),
        "lying header": lying_bomb(work / f"lying-{tag}.flac", args.rate),
    }
    print(f"bombs built in {time.monotonic() - t0:.1f} s: " + ", ".join(
        f"{k} {p.stat().st_size / 1e6:.2f} MB" for k, p in bombs.items())
        + f", 6 h at {args.rate} Hz each; limit 3 h")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")

    print("\n| path | file | outcome | peak RSS growth MB (median) | time s (median, max) |")
    print("|---|---|---|---|---|")
    for mode in ("whole", "import"):
        for name, path in bombs.items():
            runs = [in_child(mode, path, work, args.rate) for _ in range(args.repeat)]
            mb = statistics.median(float(str(r["mb"])) for r in runs)
            secs = [float(str(r["seconds"])) for r in runs]
            label = "whole decode (old way)" if mode == "whole" else "import_file"
            print(f"| {label} | {name} | {runs[0]['outcome']} | {mb:.1f} | "
                  f"{statistics.median(secs):.2f}, {max(secs):.2f} |")

    port, http = free_port(), free_port()
    server = subprocess.Popen(
        [str(BIN), "serve", "--app", "echo", "--port", str(port), "--http-port", str(http),
         "--data-dir", str(work / "var")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    try:
        wait_port(http)
        time.sleep(1.0)  # let start-up allocations settle before the baseline
        base = peak_rss_mb(server.pid)
        print(f"\nserver: RSS {rss_mb(server.pid):.0f} MB at start")
        for name, path in bombs.items():
            times, outcome = [], ""
            for _ in range(args.repeat):
                took, outcome = upload(http, path)
                times.append(took)
            print(f"| HTTP upload | {name} | {outcome} | {peak_rss_mb(server.pid) - base:.1f} "
                  f"(peak so far) | {statistics.median(times):.2f}, {max(times):.2f} |")
        results: list[tuple[float, str]] = []
        threads = [threading.Thread(target=lambda p=p: results.append(upload(http, p)))
                   for p in bombs.values()]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"| HTTP upload, both at once | both | {', '.join(r[1] for r in results)} | "
              f"{peak_rss_mb(server.pid) - base:.1f} (peak so far) | "
              f"{time.monotonic() - started:.2f} (both done) |")
        print(f"\nserver: peak RSS {peak_rss_mb(server.pid):.0f} MB, "
              f"RSS now {rss_mb(server.pid):.0f} MB")
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
