"""What one tick of the C media path costs for N taped lines, and what taking their tapes
costs: the pump in isolation, over real loopback TCP, without the event loop.

Prints figures; not a test. The load benchmark (``load_bench.py``) measures whole servers,
and on a shared VM its CPU figures move by several points between runs of the same build,
more than most single changes to the pump are worth. Here two builds of ``_wire`` run in one
process, alternating every 100 ticks over the same sockets, so both see the same machine:

    .venv/bin/python bench/pump_bench.py                          # this build alone
    .venv/bin/python bench/pump_bench.py --against-rev f581673    # against another commit

``--against-rev`` builds that commit's ``audiosocket/_wire.c`` (renamed ``_wire_base``) into
``bench/results/``. ``--callers silent`` (the default) sends digital silence, so a line is
quiet both ways (a silent caller, the line's own silence out); ``numbered`` sends sound.
``--relay`` also times echo's lines over the same sockets (no tape: each frame read goes to
the line's own queue and out again), so what the tape adds to a tick shows beside it.
``--playing F``: that fraction of the lines (every line at 1.0) plays a prompt, as an IVR
does: its queue holds the frames of one shared 5 s clip, each line at its own place in it
(refilled between rounds, untimed), so its frames go on the tape by reference.
``--idle-ms MS`` sleeps that long before every timed pump, as the server's core idles
between ticks. ``--writer`` also times the taped lines with a recorder's writes beside them:
before each of that variant's pumps, ten fresh 64 KB chunks (a thousand calls' WAV appends
in 20 ms) go to a thread that appends them to a growing file in ``$TMPDIR``; pin the process
to one core (``--cpu 0``) and give the thread room (``--idle-ms 4``), as in the server.
Per tick the generator writes one frame to every socket (not timed) and reads what the
server side sent every 10 ticks; the pump and, every 100 ticks, ``take_tape`` of every line
are timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import queue
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from audiosocket import _wire  # noqa: E402
from audiosocket.playout import Playout  # noqa: E402
from audiosocket.protocol import encode_audio  # noqa: E402

TICKS = 100  # per variant per round: one block's worth at the 2 s default is 100 ticks
WRITER = "this build + writer"
CHUNK = 64 * 1024  # one call's 2 s block of 8 kHz stereo, as the recorder appends it


def build_base(rev: str) -> ModuleType:
    """``rev``'s ``_wire.c``, built as module ``_wire_base`` and loaded."""
    src = subprocess.run(["git", "show", f"{rev}:audiosocket/_wire.c"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    src = src.replace("PyInit__wire(", "PyInit__wire_base(").replace(
        '"audiosocket._wire"', '"audiosocket._wire_base"')
    RESULTS.mkdir(parents=True, exist_ok=True)
    c_file = RESULTS / "_wire_base.c"
    c_file.write_text(src)
    so = RESULTS / "_wire_base.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}",
                    str(c_file), "-o", str(so)], check=True)
    spec = importlib.util.spec_from_file_location("_wire_base", so)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def connect(n: int) -> list[tuple[socket.socket, socket.socket]]:
    """``n`` loopback TCP pairs (ours, the caller's), non-blocking, no Nagle."""
    server = socket.create_server(("127.0.0.1", 0), backlog=n)
    pairs = []
    for _ in range(n):
        caller = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
        for s in (ours, caller):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
        pairs.append((ours, caller))
    server.close()
    return pairs


def lines_for(module: ModuleType, pairs: list[tuple[socket.socket, socket.socket]],
              header: bytes, *, relay: bool = False) -> list[tuple[object, ...]]:
    """A line per socket, as ``Connection._attach_native`` builds them: taped (a recording
    app's), or with ``relay`` echo's (no tape: the sink is the line's own queue)."""
    lines: list[tuple[object, ...]] = []
    for ours, _ in pairs:
        playout = Playout(_Transport(), 8000)
        state = playout.native_state(ours.fileno(), 3 + 320, relay, wake=False)
        sink = playout._frames.append if relay else None
        tape = None if relay else module.Tape(320)
        lines.append((state.buf, object(), playout, playout._frames, sink, 8000, header,
                      tape, playout._silence))
    return lines


class ChunkWriter:
    """A thread appending each queued chunk to a growing file, as the recorder's writer
    does (fresh page-cache pages every time; the file is cut back at 1 GB)."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="pump-bench-")
        self.fd = fd
        self.queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        offset = 0
        while (chunk := self.queue.get()) is not None:
            os.pwrite(self.fd, chunk, offset)
            offset += len(chunk)
            if offset >= 1 << 30:
                os.ftruncate(self.fd, 0)
                offset = 0

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        os.close(self.fd)
        os.unlink(self.path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--callers", choices=["silent", "numbered"], default="silent")
    p.add_argument("--playing", type=float, default=0.0, metavar="F",
                   help="fraction of the lines playing a prompt (0 to 1)")
    p.add_argument("--against-rev", metavar="REV", help="also time this commit's _wire.c")
    p.add_argument("--relay", action="store_true",
                   help="also time echo's relay lines (no tape) over the same sockets")
    p.add_argument("--idle-ms", type=float, default=0.0, metavar="MS",
                   help="sleep before every timed pump (the server's core idles between ticks)")
    p.add_argument("--writer", action="store_true",
                   help="also time the taped lines with a recorder's appends beside them")
    p.add_argument("--cpu", type=int, default=None, help="pin the process to this core")
    args = p.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # before any thread: they inherit it
    variants: dict[str, ModuleType] = {"this build": _wire}
    if args.against_rev:
        variants[args.against_rev] = build_base(args.against_rev)
    pairs = connect(args.calls)
    frame = encode_audio(bytes(320) if args.callers == "silent"
                         else bytes(range(256)) + bytes(range(64)))
    lines = {name: lines_for(m, pairs, frame[:3]) for name, m in variants.items()}
    if args.relay:
        variants["echo relay"] = _wire
        lines["echo relay"] = lines_for(_wire, pairs, frame[:3], relay=True)
    writer = ChunkWriter() if args.writer else None
    if writer is not None:  # the same lines, taken in turn: only the writes differ
        variants[WRITER] = _wire
        lines[WRITER] = lines["this build"]
    source = bytes(range(256)) * (CHUNK // 256)
    idle_s = args.idle_ms / 1000
    # One prompt's frames, shared by every line that plays it (as the prompt cache does).
    clip = [encode_audio(bytes([k % 251 + 1]) * 320) for k in range(250)]
    playing = int(args.calls * args.playing)
    pump_s = dict.fromkeys(variants, 0.0)
    take_s = dict.fromkeys(variants, 0.0)
    names = list(variants)
    for rnd in range(args.rounds + 1):  # round 0 warms up, uncounted
        for name in names if rnd % 2 else names[::-1]:
            module, ls = variants[name], lines[name]
            # Echo plays no prompt: its queue holds only what it read.
            for k, line in enumerate(ls[:playing] if line_taped(ls) else ()):
                frames = line[3]
                frames.clear()  # type: ignore[attr-defined]
                at = (k * 37 + rnd * TICKS) % len(clip)
                frames.extend((clip[at:] + clip[:at])[:TICKS])  # type: ignore[attr-defined]
            for t in range(TICKS):
                for _, caller in pairs:
                    caller.send(frame)
                if t % 10 == 9:
                    for _, caller in pairs:
                        try:
                            caller.recv(65536)
                        except BlockingIOError:
                            pass
                if writer is not None and name == WRITER:
                    for _ in range(10):  # fresh objects, as each block's interleave makes
                        writer.queue.put(bytes(bytearray(source)))
                if idle_s:
                    time.sleep(idle_s)
                a = time.perf_counter()
                events = module.pump(ls, 1)
                b = time.perf_counter()
                if events:
                    raise SystemExit(f"{name}: the pump reported {events[:2]}")
                if rnd:
                    pump_s[name] += b - a
            a = time.perf_counter()
            for line in ls:
                if line[7] is not None:
                    module.take_tape(line[7], 320)
            b = time.perf_counter()
            if rnd:
                take_s[name] += b - a
    if writer is not None:
        writer.close()
    print(f"{args.calls} taped lines ({playing} playing a prompt), {args.callers} callers, "
          f"{args.rounds} rounds of "
          f"{TICKS} ticks per build, alternating")
    for name in names:
        per_tick = pump_s[name] / (args.rounds * TICKS)
        per_take = take_s[name] / (args.rounds * args.calls)
        take = (f"take_tape {per_take * 1e6:.2f} us/line" if line_taped(lines[name])
                else "no tape")
        print(f"  {name:>19}: pump {per_tick * 1e3:.3f} ms/tick ({per_tick * 50 * 100:.1f} % "
              f"of a core at 50 ticks/s), {take}")
    for base in (args.against_rev, "echo relay"):
        if base in pump_s:
            d = pump_s["this build"] / pump_s[base] - 1
            print(f"  pump, this build's taped lines against {base}: {100 * d:+.1f} %")
    if WRITER in pump_s:
        d = pump_s[WRITER] / pump_s["this build"] - 1
        print(f"  pump, with the writer's appends against without: {100 * d:+.1f} %")


def line_taped(lines: list[tuple[object, ...]]) -> bool:
    """The lines carry a tape, not echo's relay (``lines_for``)."""
    return bool(lines) and lines[0][7] is not None


if __name__ == "__main__":
    main()
