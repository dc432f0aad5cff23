"""Batch import throughput: the parallel pipeline against a naive one-file-at-a-time loop.

Makes N short WAV files of Piper speech (each slightly different, since imports are keyed by
content), then in the same run:

- naive: for each file, import it and wait until all of its jobs are done, then the next;
- parallel: import them all at once within the caps (FFmpeg 2, AI 2), as
  `audiosocket import` does.

Both use the real pipeline (FFmpeg archives, peaks, the bundled Whisper, the summariser)
with separate data directories. Prints files per minute for each.

    .venv/bin/python bench/import_bench.py --files 200
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audiosocket.config import load_config  # noqa: E402
from audiosocket.root.app import AppContext  # noqa: E402
from audiosocket.root.services import close_services, ensure_jobs  # noqa: E402
from helpers.audio import write_wav  # noqa: E402
from helpers.postcall.importer import import_file  # noqa: E402
from tests.helpers.speech_fixtures import silence, synth_speech  # noqa: E402

SENTENCES = [
    "I would like to check the status of my order.",
    "My internet connection has been down since yesterday.",
    "Please cancel my subscription at the end of the month.",
    "I was charged twice on my last invoice.",
]


def make_files(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(1)
    base = [np.frombuffer(silence(0.3) + synth_speech(s) + silence(0.3), "<i2") for s in SENTENCES]
    files = []
    for i in range(n):
        noise = rng.integers(-3, 4, size=base[i % len(base)].size)
        pcm = np.clip(base[i % len(base)].astype(int) + noise, -32768, 32767).astype("<i2")
        path = folder / f"call-{i:04d}.wav"
        write_wav(path, pcm.tobytes(), 8000)
        files.append(path)
    return files


async def run(files: list[Path], data: Path, naive: bool) -> float:
    ctx = AppContext(load_config(overrides={"data_dir": str(data)}, environ={}))
    jobs = await ensure_jobs(ctx)
    store = ctx.services.store
    started = time.monotonic()
    if naive:
        for path in files:
            await asyncio.to_thread(import_file, store, jobs, path, data)
            await jobs.wait_idle(600)
    else:
        gate = asyncio.Semaphore(ctx.services.ffmpeg.limit)

        async def one(path: Path) -> None:
            async with gate:
                await asyncio.to_thread(import_file, store, jobs, path, data)

        await asyncio.gather(*(one(p) for p in files))
        await jobs.wait_idle(3600)
    elapsed = time.monotonic() - started
    done = await store.aread(lambda: store.list_calls(limit=1, has_summary=True).total)
    await close_services(ctx)
    assert done == len(files), f"only {done} of {len(files)} summarised"
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="importbench-"))
    src = tmp / "in"
    src.mkdir()
    files = make_files(src, args.files)
    print(f"loadavg {open('/proc/loadavg').read().split()[:3]}; {len(files)} files of "
          f"~2.5 s speech (8 kHz WAV)")
    naive = asyncio.run(run(files, tmp / "naive", naive=True))
    parallel = asyncio.run(run(files, tmp / "parallel", naive=False))
    print("| mode | seconds | files/min |")
    print("|---|---|---|")
    print(f"| naive, one file at a time | {naive:.1f} | {len(files) / naive * 60:.0f} |")
    print(f"| parallel within the caps | {parallel:.1f} | {len(files) / parallel * 60:.0f} |")
    print(f"speed-up {naive / parallel:.2f}x")


if __name__ == "__main__":
    main()
