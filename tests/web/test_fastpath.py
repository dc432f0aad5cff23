"""The recording range fast path against real sockets, compared byte for byte with aiohttp's."""

from __future__ import annotations

import asyncio
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
from web.fastpath import FAST_INDEX

SIZE = 300_000


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: the server runs on uvloop, whose transports differ."""
    if request.param == "uvloop":
        import uvloop

        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


def fast_count(status: str) -> float:
    return REGISTRY.get_sample_value("audiosocket_http_fast_responses_total",
                                     {"status": status}) or 0.0


def handoffs(why: str) -> float:
    return REGISTRY.get_sample_value("audiosocket_http_fast_handoffs_total", {"why": why}) or 0.0


class Portal:
    def __init__(self, port: int, runner: Any, app: Any) -> None:
        self.port, self.runner, self.app = port, runner, app


async def start(store: CallStore, data_dir: Path, *, fast: bool, host: str = "127.0.0.1",
                token: str = "") -> Portal:
    cfg = Config(data_dir=str(data_dir), host=host, web=WebConfig(token=token, fast_ranges=fast))
    app = make_app(cfg, Services(store=store))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = await start_http(app, "127.0.0.1", port)
    return Portal(port, runner, app)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    store = CallStore(tmp_path / "calls.db").open()
    cid = str(uuid_mod.uuid4())
    (tmp_path / "archive").mkdir()
    mp3 = tmp_path / "archive" / f"{cid}.mp3"
    body = os.urandom(SIZE)
    mp3.write_bytes(body)
    os.utime(mp3, (time.time() - 3600, time.time() - 3600))  # a strong Last-Modified
    store.call_started(cid, "ivr", 8000, "127.0.0.1:5000", time.time() - 60)
    store.call_ended(cid, time.time(), "remote_closed", 100, 100)
    store.set_recording(cid, "mp3", mp3, SIZE, 10.0)
    store.flush()
    fast = await start(store, tmp_path, fast=True)
    slow = await start(store, tmp_path, fast=False)
    yield {"store": store, "uuid": cid, "body": body, "fast": fast, "slow": slow,
           "path": f"/api/calls/{cid}/recording.mp3", "tmp": tmp_path, "file": mp3}
    await fast.runner.cleanup()
    await slow.runner.cleanup()
    store.close()


async def exchange(port: int, raw: bytes, count: int = 1, *, read_delay: float = 0.0
                   ) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``raw`` on one connection and read ``count`` responses (HTTP/1.1, no chunking)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        writer.write(raw)
        await writer.drain()
        for _ in range(count):
            if read_delay:
                await asyncio.sleep(read_delay)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if raw.startswith(b"HEAD"):
                length = 0
            body = await asyncio.wait_for(reader.readexactly(length), 10)
            out.append((status, headers, body))
    finally:
        writer.close()
    return out


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def comparable(headers: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k not in ("date", "server")}
    if "boundary=" in out.get("content-type", ""):  # random per response
        out["content-type"] = out["content-type"].split("boundary=")[0] + "boundary=B"
    return out


def unboundary(headers: dict[str, str], body: bytes) -> bytes:
    ctype = headers.get("content-type", "")
    if "boundary=" not in ctype:
        return body
    return body.replace(ctype.split("boundary=")[1].encode(), b"B")


CASES = [
    (),
    ("Range: bytes=0-1",),  # Safari's probe
    ("Range: bytes=100-65635",),
    ("Range: bytes=299000-",),
    ("Range: bytes=-500",),
    ("Range: bytes=0-999999999",),  # clamped
    ("Range: bytes=5-2",),  # invalid: ignored, 200
    ("Range: items=0-5",),  # foreign unit: ignored, 200
    ("Range: bytes=400000-",),  # unsatisfiable: 416 (by aiohttp)
    ("Range: bytes=0-10, 20-30",),  # multipart (by aiohttp)
    ("Range: bytes=0-10", "If-Range: \"stale\""),  # conditional (by aiohttp)
    ("If-None-Match: *",),
    ("Range: bytes=0-10", "Connection: close"),
]


@pytest.mark.parametrize("extra", CASES, ids=[" ".join(c) or "plain" for c in CASES])
async def test_same_answer_as_aiohttp(setup: dict[str, Any], extra: tuple[str, ...]) -> None:
    raw = get(setup["path"], *extra)
    [(fs, fh, fb)] = await exchange(setup["fast"].port, raw)
    [(ss, sh, sb)] = await exchange(setup["slow"].port, raw)
    fb, sb = unboundary(fh, fb), unboundary(sh, sb)
    cf, cs = comparable(fh), comparable(sh)
    assert fs == ss, (fs, ss)
    diff = {k: (cf.get(k), cs.get(k)) for k in cf.keys() | cs.keys() if cf.get(k) != cs.get(k)}
    assert diff == {}
    assert fb == sb


async def test_simple_ranges_take_the_fast_path(setup: dict[str, Any]) -> None:
    body = setup["body"]
    before = fast_count("206"), fast_count("200")
    [(status, headers, got)] = await exchange(setup["fast"].port,
                                              get(setup["path"], "Range: bytes=10-19"))
    assert status == 206 and got == body[10:20]
    assert headers["content-range"] == f"bytes 10-19/{SIZE}"
    assert headers["content-security-policy"].startswith("default-src 'self'")
    [(status, _, got)] = await exchange(setup["fast"].port, get(setup["path"]))
    assert status == 200 and got == body
    assert (fast_count("206"), fast_count("200")) == (before[0] + 1, before[1] + 1)
    # The aiohttp-only site never uses it.
    await exchange(setup["slow"].port, get(setup["path"], "Range: bytes=10-19"))
    assert fast_count("206") == before[0] + 1


async def test_pipelined_keepalive_then_handoff_on_the_same_connection(
    setup: dict[str, Any],
) -> None:
    body, path = setup["body"], setup["path"]
    raw = (get(path, "Range: bytes=0-99") + get(path, "Range: bytes=-100")
           + get(f"/api/calls/{setup['uuid']}") + get(path, "Range: bytes=5-9"))
    before = handoffs("not_fast")
    responses = await exchange(setup["fast"].port, raw, count=4)
    assert [r[0] for r in responses] == [206, 206, 200, 206]
    assert responses[0][2] == body[:100] and responses[1][2] == body[-100:]
    assert b'"uuid"' in responses[2][2]
    assert responses[3][2] == body[5:10]  # answered by aiohttp after the handoff
    assert handoffs("not_fast") == before + 1


async def test_slow_reader_gets_every_byte(setup: dict[str, Any]) -> None:
    # Three whole files on one connection, read late: sendfile fills the socket, the path
    # waits for writability and goes on where it stopped.
    body = setup["body"]
    responses = await exchange(setup["fast"].port, get(setup["path"]) * 3, count=3,
                               read_delay=0.2)
    assert [r[2] == body for r in responses] == [True, True, True]


async def test_unknown_recordings_and_deleted_calls_are_404(setup: dict[str, Any]) -> None:
    port, path = setup["fast"].port, setup["path"]
    other = f"/api/calls/{uuid_mod.uuid4()}/recording.mp3"
    [(status, _, body)] = await exchange(port, get(other, "Range: bytes=0-1"))
    assert status == 404 and b"not_found" in body
    [(status, _, _)] = await exchange(port, get(path, "Range: bytes=0-1"))
    assert status == 206  # now cached by the fast path
    [(status, _, _)] = await exchange(port, get(f"/api/calls/{setup['uuid']}",
                                                method="DELETE"))
    assert status == 200
    [(status, _, _)] = await exchange(port, get(path, "Range: bytes=0-1"))
    assert status == 404


async def test_a_replaced_file_is_seen_after_the_ttl(setup: dict[str, Any]) -> None:
    port, path = setup["fast"].port, setup["path"]
    setup["fast"].app[FAST_INDEX].ttl_s = 0.2
    [(_, h1, b1)] = await exchange(port, get(path, "Range: bytes=0-9"))
    new = os.urandom(1000)
    tmp = setup["file"].with_suffix(".new")
    tmp.write_bytes(new)
    tmp.replace(setup["file"])  # how archives are published: atomic rename
    [(_, h_cached, _)] = await exchange(port, get(path, "Range: bytes=0-9"))
    assert h_cached["etag"] == h1["etag"]  # within the TTL the open file is served
    await asyncio.sleep(0.25)
    [(_, h2, b2)] = await exchange(port, get(path, "Range: bytes=0-9"))
    assert b1 != b2 and b2 == new[:10]
    assert h2["etag"] != h1["etag"] and h2["content-range"] == "bytes 0-9/1000"


async def test_auth_off_loopback(tmp_path: Path, setup: dict[str, Any]) -> None:
    portal = await start(setup["store"], setup["tmp"], fast=True, host="0.0.0.0",
                         token="s3cret-token")
    try:
        path = setup["path"]
        before = fast_count("206")
        [(status, _, _)] = await exchange(portal.port, get(path, "Range: bytes=0-9"))
        assert status == 401
        [(status, _, _)] = await exchange(
            portal.port, get(path, "Range: bytes=0-9", "Authorization: Bearer wrong"))
        assert status == 401
        [(status, _, got)] = await exchange(
            portal.port, get(path, "Range: bytes=0-9", "Authorization: Bearer s3cret-token"))
        assert status == 206 and got == setup["body"][:10]
        from web.auth import AUTH_KEY

        cookie = portal.app[AUTH_KEY].new_session()
        [(status, _, got)] = await exchange(
            portal.port, get(path, "Range: bytes=0-9", f"Cookie: a=b; portal_session={cookie}"))
        assert status == 206
        assert fast_count("206") == before + 2
    finally:
        await portal.runner.cleanup()


@pytest.mark.parametrize("raw", [
    b"GET /api/calls/x/recording.mp3 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /api/calls/%s/recording.mp3 HTTP/1.0\r\n\r\n",
    b"GET /api/calls/%s/recording.mp3 HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET /api/calls/%s/recording.mp3 HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    b"GET /api/calls/%s/recording.mp3 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /api/calls/%s/recording.mp3 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"GARBAGE\r\n\r\n",
])
async def test_odd_requests_get_aiohttps_answer(setup: dict[str, Any], raw: bytes) -> None:
    if b"%s" in raw:
        raw = raw % setup["uuid"].encode()
    fast = await _status_line(setup["fast"].port, raw)
    slow = await _status_line(setup["slow"].port, raw)
    assert fast == slow


async def _status_line(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
