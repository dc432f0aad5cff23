"""Per-call memory is bounded in bytes, and a big call's memory goes back after hang-up.

Two callers flood 192 kHz audio faster than real time (a peer Asterisk does not pace): the
server must hold a few MB per call, not the audio sent (the record app kept all of it until
hang-up: +250 MB for 2 × 120 s), and its RSS must come back near the baseline after.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.audiosocket.root.test_cli import free_port, serve

RATE = 192000
FRAME = 3840 * 2  # 20 ms at 192 kHz
#: What the record app may hold per 192 kHz call (docs/CONFIG.md: recorder slots and writer
#: queue, decoder, playout of silence), twice, plus slack for a busy machine's allocator.
PER_CALL_MB = 12
SLACK_MB = 40


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def flood(port: int, seconds: float, speed: float) -> int:
    """One call sending ``seconds`` of 192 kHz noise at ``speed`` × real time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x01\x00\x10" + uuid.uuid4().bytes)
    rng = np.random.default_rng(7)
    header = bytes([0x18, FRAME >> 8, FRAME & 0xFF])
    frames = [
        header + (rng.standard_normal(FRAME // 2) * 3000).astype("<i2").tobytes()
        for _ in range(50)
    ]

    async def discard() -> None:
        while await reader.read(1 << 16):
            pass

    drain = asyncio.create_task(discard())
    t0 = time.monotonic()
    n = int(seconds * 50)
    for k in range(n):
        writer.write(frames[k % 50])
        if k % 50 == 49:
            await writer.drain()
            ahead = (k + 1) / 50 / speed - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
    await writer.drain()
    writer.close()
    drain.cancel()
    return n


async def test_two_192khz_floods_cost_bounded_bytes_and_give_memory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Post-call jobs load Whisper after hang-up (150 MB of model, not of calls).
    monkeypatch.setenv("AUDIOSOCKET_POSTCALL__ENABLED", "0")
    port = free_port()
    proc = serve(tmp_path, "record", port, 0)
    try:
        await asyncio.sleep(1.0)
        base = rss_mb(proc.pid)
        peak = base
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_mb(proc.pid))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        sent = await asyncio.gather(flood(port, 120, 10), flood(port, 120, 10))
        await asyncio.sleep(1.0)
        stop.set()
        await sampler
        assert sum(sent) == 2 * 120 * 50  # 92 MB each: all of it was sent
        growth = peak - base
        assert growth < 2 * PER_CALL_MB + SLACK_MB, (base, peak)
        after = rss_mb(proc.pid)
        for _ in range(50):  # the calls end and the heap is trimmed within seconds
            if after < base + 15:
                break
            await asyncio.sleep(0.2)
            after = rss_mb(proc.pid)
        assert after < base + 15, (base, peak, after)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    log = proc.stdout.read().decode() if proc.stdout else ""
    assert log.count('"call_ended"') == 2, log[-2000:]
    wavs = list((tmp_path / "var" / "recordings").glob("*.wav"))
    assert len(wavs) == 2 and all(w.stat().st_size > 44 for w in wavs)
