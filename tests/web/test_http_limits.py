"""Limits of the HTTP port over real sockets, on both serving paths (issue 13, points 1, 6).

Each test runs against two portals on the same store: one with the range fast path in
front (``fast``), one with aiohttp alone (``slow``). Timeouts are set to one second so the
tests are quick; the bounds they check leave several seconds for a busy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid as uuid_mod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from audiosocket.config import Config, WebConfig
from audiosocket.root.app import Services
from helpers.store.db import CallStore
from web.app import make_app, start_http
from web.limits import MAX_FIELD_SIZE, MAX_HEADERS, fd_budget

#: Seconds a connection the server should have closed may stay open before the test fails
#: (the timeouts are 1 s; the sweep runs every quarter second).
CLOSE_WITHIN = 8.0


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Both loops: the server runs on uvloop, whose transports differ."""
    if request.param == "uvloop":
        import uvloop

        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start(store: CallStore, data_dir: Path, *, fast: bool, **web: Any) -> tuple[int, Any]:
    cfg = Config(data_dir=str(data_dir), web=WebConfig(fast_ranges=fast, **web))
    app = make_app(cfg, Services(store=store))
    port = free_port()
    runner = await start_http(app, "127.0.0.1", port, cfg)
    return port, runner


@pytest.fixture
async def portals(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    store = CallStore(tmp_path / "calls.db").open()
    cid = str(uuid_mod.uuid4())
    (tmp_path / "archive").mkdir()
    mp3 = tmp_path / "archive" / f"{cid}.mp3"
    mp3.write_bytes(os.urandom(10_000))
    store.call_started(cid, "ivr", 8000, "127.0.0.1:5000", time.time() - 60)
    store.call_ended(cid, time.time(), "remote_closed", 100, 100)
    store.set_recording(cid, "mp3", mp3, 10_000, 1.0)
    store.flush()
    fast = await start(store, tmp_path, fast=True, head_timeout_s=1.0, body_timeout_s=1.0)
    slow = await start(store, tmp_path, fast=False, head_timeout_s=1.0, body_timeout_s=1.0)
    yield {"fast": fast[0], "slow": slow[0], "path": f"/api/calls/{cid}/recording.mp3"}
    await fast[1].cleanup()
    await slow[1].cleanup()
    store.close()


async def trickle(port: int, first: bytes, slow: bytes, gap: float = 0.2,
                  limit: float = 20.0) -> float | None:
    """Send ``first`` at once, then ``slow`` a byte every ``gap`` s (then nothing).

    Returns the seconds until the server closed the connection, or None if it was still
    open after ``limit`` s. Whatever the server answers before closing is ignored.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    try:
        if first:
            writer.write(first)
        i = 0
        while time.monotonic() - t0 < limit:
            if i < len(slow):
                with contextlib.suppress(ConnectionError):
                    writer.write(slow[i : i + 1])
                i += 1
            try:
                data = await asyncio.wait_for(reader.read(65536), gap)
            except TimeoutError:
                continue
            except ConnectionError:
                return time.monotonic() - t0
            if not data:
                return time.monotonic() - t0
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def status_of(port: int, head: bytes) -> int:
    """The status code the server answers ``head`` with (0: closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1]) if line else 0
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# -- head and body timeouts --------------------------------------------------------------


@pytest.mark.parametrize("which", ["fast", "slow"])
async def test_slowloris_head_is_closed_by_the_head_timeout(
    portals: dict[str, Any], which: str
) -> None:
    """Issue 13.1: one byte every 0.2 s kept a head open for ever on both paths."""
    port = portals[which]
    # A recording request (stays with the fast path on the fast portal) and a POST (handed
    # to aiohttp at its first byte): both trickled, never finished.
    recording = f"GET {portals['path']} HTTP/1.1\r\nHost: x\r\n".encode() + b"X-A: b\r\n" * 50
    post = b"POST /login HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 50
    before = sample("audiosocket_http_timeouts_total", {"phase": "head"})
    closed = await asyncio.gather(trickle(port, b"", recording), trickle(port, b"", post))
    for took in closed:
        assert took is not None and took < CLOSE_WITHIN, closed
    if which == "fast":  # the fast path's own close is counted
        assert sample("audiosocket_http_timeouts_total", {"phase": "head"}) >= before + 1


@pytest.mark.parametrize("which", ["fast", "slow"])
async def test_idle_connection_is_closed(portals: dict[str, Any], which: str) -> None:
    took = await trickle(portals[which], b"", b"")
    assert took is not None and took < CLOSE_WITHIN


@pytest.mark.parametrize("which", ["fast", "slow"])
async def test_slow_body_is_closed_by_the_body_timeout(
    portals: dict[str, Any], which: str
) -> None:
    """A body at one byte per 0.2 s (far under body_min_rate) is cut off; a body that
    arrives at once is answered as before."""
    port = portals[which]
    head = (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
            b"urlencoded\r\nContent-Length: 1000\r\n\r\n")
    before = sample("audiosocket_http_timeouts_total", {"phase": "body"})
    took = await trickle(port, head, b"next=/&token=" + b"a" * 987)
    assert took is not None and took < CLOSE_WITHIN
    assert sample("audiosocket_http_timeouts_total", {"phase": "body"}) == before + 1
    body = b"next=/&token=" + b"a" * 987
    assert await status_of(port, head + body) == 303


async def test_keep_alive_request_after_a_pause_is_served(portals: dict[str, Any]) -> None:
    """The head timeout counts from the last response, not from the connection's start."""
    reader, writer = await asyncio.open_connection("127.0.0.1", portals["fast"])
    head = f"GET {portals['path']} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n".encode()
    try:
        for _ in range(3):
            await asyncio.sleep(0.6)  # each pause under the 1 s timeout, all three over it
            writer.write(head)
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 206")
            while (await asyncio.wait_for(reader.readline(), 10)) != b"\r\n":
                pass
            assert len(await asyncio.wait_for(reader.readexactly(10), 10)) == 10
    finally:
        writer.close()


# -- one set of head limits ----------------------------------------------------------------


def heads(path: str) -> dict[str, tuple[bytes, int]]:
    """Request heads near and over aiohttp's limits, with the status aiohttp gives them."""
    start = f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode()
    line_max = MAX_FIELD_SIZE - len("X-Pad: ")  # the longest line the fast path serves
    return {
        "64 KiB header": (start + b"X-Pad: " + b"a" * 65536 + b"\r\n\r\n", 400),
        "1000 headers": (start + b"".join(b"X-%d: v\r\n" % i for i in range(1000)) + b"\r\n",
                         400),
        "line at the fast path's limit": (
            start + b"X-Pad: " + b"a" * line_max + b"\r\n\r\n", 200),
        # Longer than the fast path takes, within aiohttp's limit (a value of 8190 bytes).
        "value at the limit": (start + b"X-Pad: " + b"a" * MAX_FIELD_SIZE + b"\r\n\r\n", 200),
        "value one over": (start + b"X-Pad: " + b"a" * (MAX_FIELD_SIZE + 1) + b"\r\n\r\n", 400),
        "headers at the limit": (  # Host + 127 = 128
            start + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS - 1)) + b"\r\n",
            200),
        "headers one over": (
            start + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS)) + b"\r\n", 400),
        "20 KiB in small headers": (
            start + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 200) for i in range(100)) + b"\r\n",
            200),
    }


async def test_oversized_heads_get_the_same_status_on_both_paths(
    portals: dict[str, Any]
) -> None:
    """Issue 13.6: a 64 KiB header or 1,000 headers got 200 from the fast path, 400 from
    aiohttp. Now the same head gets the same status on both, at and over each limit."""
    for name, (head, expected) in heads(portals["path"]).items():
        fast = await status_of(portals["fast"], head)
        slow = await status_of(portals["slow"], head)
        assert (name, fast, slow) == (name, expected, expected)


# -- the connection cap ---------------------------------------------------------------------


async def test_connections_over_the_cap_are_refused_and_the_flood_counted_once(
    tmp_path: Path,
) -> None:
    store = CallStore(tmp_path / "calls.db").open()
    ports = [await start(store, tmp_path, fast=fast, max_connections=10)
             for fast in (True, False)]
    try:
        for port, _ in ports:
            floods = sample("audiosocket_http_floods_total")
            refused = sample("audiosocket_http_connections_refused_total",
                             {"reason": "max_connections"})
            held = []
            for _ in range(10):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"G")
                held.append((r, w))
            answers = []
            for _ in range(5):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                answers.append(await asyncio.wait_for(r.read(), 10))
                w.close()
            assert all(a.startswith(b"HTTP/1.1 503") for a in answers), answers
            assert sample("audiosocket_http_connections_refused_total",
                          {"reason": "max_connections"}) == refused + 5
            assert sample("audiosocket_http_floods_total") == floods + 1
            for _, w in held:
                w.close()
            # Once the flood's connections are gone, the port serves again.
            for _ in range(100):
                await asyncio.sleep(0.1)
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if await status_of(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == 200:
                        break
            else:
                raise AssertionError("the port never served again")
    finally:
        for _, runner in ports:
            await runner.cleanup()
        store.close()


def test_budget_keeps_descriptors_for_calls() -> None:
    """The derived cap leaves the calls their share, or a quarter when the limit is small."""
    big = fd_budget(1 << 20, 2000)
    assert big.max_connections == 4096 and big.calls_fit >= 2000
    small = fd_budget(1024, 2000)
    assert small.max_connections * 2 + small.index_files <= 1024 // 4
    assert small.fd_ceiling == 1024 - 128
    assert fd_budget(1024, 2000, max_connections=50).max_connections == 50
