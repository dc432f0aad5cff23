"""What writing the recordings costs the server's CPU: N files appended to at a call's byte
rate, the way the recorder's writer thread does it. Prints figures; not a test.

A thousand 8 kHz calls record 1000 x 8000 x 2 channels x 2 bytes = 32 MB/s of stereo WAV.
The recorder appends each call's block (``media_block_s`` of audio, 64 kB at 2 s) with one
``pwrite`` and then rewrites the header's two sizes with another. This bench does the same
over ``--files`` files in a temporary directory beside the data (``--dir``), paced in real
time at ``--calls`` calls' worth of bytes, and prints the CPU it took (system and user, of
this one thread) per append and as a share of a core, for each variant:

- ``buffered``: what the recorder does (page cache; the kernel writes back later, on its
  own threads, which this process's CPU time does not include);
- ``fallocate``: the same after reserving each file's space ahead in 1 MiB steps
  (``FALLOC_FL_KEEP_SIZE``, so the file's size stays the audio's);
- ``direct``: ``O_DIRECT`` appends of whole 4 KiB blocks (no page cache copy), header
  included; needs a filesystem that supports it;
- ``alignedK`` (``aligned32``, ``aligned64``): buffered, but each append ends on a K KiB
  boundary in the file, what lies past it waiting for the next append (the kernel may
  then hold each aligned stretch in a large folio; the tail's copy in user space is not
  simulated). Tried in the server in the twenty-third session and not kept
  (``docs/BENCHMARKS.md``).

    .venv/bin/python bench/disk_write_bench.py                       # 64 kB appends, 1000 calls
    .venv/bin/python bench/disk_write_bench.py --block-s 4 --rounds 3
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FALLOC_FL_KEEP_SIZE = 1
PREALLOC = 1 << 20


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return fn


def run(mode: str, directory: Path, files: int, chunk: int, rate: float, seconds: float) -> str:
    """One variant: ``rate`` appends a second of ``chunk`` bytes, round-robin over the files."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
    if mode == "direct":
        flags |= os.O_DIRECT
        chunk = -(-chunk // 4096) * 4096
    fds: list[int] = []
    align = int(mode[len("aligned"):]) * 1024 if mode.startswith("aligned") else 0
    data = mmap.mmap(-1, chunk + align)  # page-aligned, as O_DIRECT needs
    data.write(os.urandom(chunk + align))
    kept = [0] * files
    head = mmap.mmap(-1, 4096) if mode == "direct" else bytearray(44)
    first = 4096 if mode == "direct" else 44
    offset = [first] * files
    reserved = [0] * files
    falloc = _fallocate() if mode == "fallocate" else None
    n = 0
    try:
        # Opened inside the try: a filesystem refusing O_DIRECT fails here, and the files
        # already open are closed below.
        for i in range(files):
            fds.append(os.open(directory / f"c{i}.wav", flags, 0o644))
        start = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        while (now := time.perf_counter()) - start < seconds:
            due = start + n / rate
            if now < due:
                time.sleep(due - now)
            i = n % files
            fd = fds[i]
            if falloc is not None and offset[i] + chunk > reserved[i]:
                falloc(fd, FALLOC_FL_KEEP_SIZE, reserved[i], PREALLOC)
                reserved[i] += PREALLOC
            n += 1
            if align:
                pending = kept[i] + chunk
                cut = (offset[i] + pending) // align * align - offset[i]
                kept[i] = pending - cut
                if cut <= 0:
                    continue
                os.pwrite(fd, memoryview(data)[:cut], offset[i])
                offset[i] += cut
            else:
                os.pwrite(fd, memoryview(data)[:chunk], offset[i])
                offset[i] += chunk
            os.pwrite(fd, head, 0)
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
        wall = time.perf_counter() - start
    finally:
        for fd in fds:
            os.close(fd)
    sys_s, user_s = r1.ru_stime - r0.ru_stime, r1.ru_utime - r0.ru_utime
    return (f"| {mode} | {chunk // 1000} kB | {rate:.0f}/s | {n} | {sys_s / n * 1e6:.0f} "
            f"| {user_s / n * 1e6:.0f} | {100 * (sys_s + user_s) / wall:.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000, help="calls' worth of bytes per second")
    p.add_argument("--rate", type=int, default=8000, help="each call's sample rate")
    p.add_argument("--block-s", type=float, default=2.0, help="audio per append (media_block_s)")
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=12.0, help="per variant and round")
    p.add_argument("--rounds", type=int, default=2, help="the variants in turn, this often")
    p.add_argument("--modes", default="buffered,fallocate,direct")
    p.add_argument("--dir", default=str(ROOT / "var"),
                   help="where the temporary files go (the data directory's filesystem)")
    args = p.parse_args()
    chunk = int(args.rate * 4 * args.block_s)  # stereo 16-bit
    rate = args.calls / args.block_s  # appends per second
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    print(f"{args.calls} calls at {args.rate} Hz: {args.calls * args.rate * 4 / 1e6:.0f} MB/s "
          f"in {chunk // 1000} kB appends over {args.files} files under {base}")
    print("| mode | append | appends | n | sys us/append | user us/append | CPU % of a core |")
    print("|---|---|---|---|---|---|---|")
    for _ in range(args.rounds):
        for mode in args.modes.split(","):
            directory = Path(tempfile.mkdtemp(prefix="diskbench-", dir=base))
            try:
                print(run(mode, directory, args.files, chunk, rate, args.seconds), flush=True)
            except OSError as exc:
                print(f"| {mode} | - | - | - | {exc} | | |", flush=True)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
