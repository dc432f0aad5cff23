"""Integration tests for web.files.serve_file: a real aiohttp server on 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from web.files import content_type_for, serve_file
from web.ranges import format_http_date

SIZE = 100 * 1024


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = os.urandom(SIZE)
    for name in ("rec.wav", "rec.m4a", "rec.mp3", "meta.json"):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "empty.wav").write_bytes(b"")
    # Old mtime: Last-Modified is then a strong validator (RFC 9110 8.8.2.2).
    old = time.time() - 3600
    for path in tmp_path.iterdir():
        os.utime(path, (old, old))
    (tmp_path / "dir.wav").mkdir()
    return tmp_path


@pytest.fixture
def data(root: Path) -> bytes:
    return (root / "rec.wav").read_bytes()


@pytest.fixture
async def base_url(root: Path) -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        path = root / name
        return await serve_file(request, path, content_type_for(path), max_ranges=16)

    app = web.Application()
    app.router.add_route("*", "/f/{name}", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/f/"))
    finally:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def fetch(
    client: aiohttp.ClientSession,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with client.request(method, url, headers=headers) as resp:
        body = await resp.read()
        return resp, body


async def get_range(
    client: aiohttp.ClientSession, base_url: str, value: str, **extra: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    return await fetch(client, base_url + "rec.wav", headers={"Range": value, **extra})


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str, bytes]]:
    """Strict multipart/byteranges parser: (part content-type, content-range, data)."""
    match = re.fullmatch(r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,./:=?-]+)", content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    pos = 0
    parts: list[tuple[str, str, bytes]] = []
    while True:
        assert body.startswith(delimiter, pos), body[pos : pos + 80]
        pos += len(delimiter)
        if body[pos:] == b"--\r\n":
            return parts
        assert body.startswith(b"\r\n", pos)
        head_end = body.index(b"\r\n\r\n", pos)
        lines = body[pos + 2 : head_end].decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines)
        cr = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", fields["Content-Range"])
        assert cr
        start, end = int(cr.group(1)), int(cr.group(2))
        pos = head_end + 4
        parts.append(
            (fields["Content-Type"], fields["Content-Range"], body[pos : pos + end - start + 1])
        )
        pos += end - start + 1
        assert body.startswith(b"\r\n", pos)
        pos += 2


# --- basics ------------------------------------------------------------------------------


async def test_full_get_headers(client: aiohttp.ClientSession, base_url: str, data: bytes) -> None:
    resp, body = await fetch(client, base_url + "rec.wav")
    assert resp.status == 200
    assert body == data
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Content-Length"] == str(SIZE)
    assert resp.headers["Cache-Control"] == "private, no-cache"
    assert "Content-Encoding" not in resp.headers


async def test_strong_etag(client: aiohttp.ClientSession, base_url: str) -> None:
    resp, _ = await fetch(client, base_url + "rec.wav")
    etag = resp.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f-]+"', etag)  # quoted, no W/ prefix


async def test_last_modified(client: aiohttp.ClientSession, base_url: str, root: Path) -> None:
    resp, _ = await fetch(client, base_url + "rec.wav")
    assert resp.headers["Last-Modified"] == format_http_date((root / "rec.wav").stat().st_mtime)


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("rec.wav", "audio/wav"),
        ("rec.m4a", "audio/mp4"),
        ("rec.mp3", "audio/mpeg"),
        ("meta.json", "application/json"),
    ],
)
async def test_content_types(
    client: aiohttp.ClientSession, base_url: str, name: str, ctype: str
) -> None:
    resp, _ = await fetch(client, base_url + name)
    assert resp.headers["Content-Type"] == ctype
    resp, _ = await fetch(client, base_url + name, headers={"Range": "bytes=0-1"})
    assert resp.headers["Content-Type"] == ctype


def test_content_type_for_unknown() -> None:
    assert content_type_for("x.bin") == "application/octet-stream"
    assert content_type_for(Path("A.WAV")) == "audio/wav"


async def test_not_found(client: aiohttp.ClientSession, base_url: str) -> None:
    resp, _ = await fetch(client, base_url + "missing.wav")
    assert resp.status == 404


async def test_directory_is_not_found(client: aiohttp.ClientSession, base_url: str) -> None:
    resp, _ = await fetch(client, base_url + "dir.wav")
    assert resp.status == 404


async def test_other_methods_rejected(client: aiohttp.ClientSession, base_url: str) -> None:
    resp, _ = await fetch(client, base_url + "rec.wav", method="POST")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, HEAD"


# --- single ranges -------------------------------------------------------------------------


async def test_single_range(client: aiohttp.ClientSession, base_url: str, data: bytes) -> None:
    resp, body = await get_range(client, base_url, "bytes=0-499")
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 0-499/{SIZE}"
    assert resp.headers["Content-Length"] == "500"
    assert resp.headers["Content-Type"] == "audio/wav"
    assert body == data[:500]


async def test_safari_probe(client: aiohttp.ClientSession, base_url: str, data: bytes) -> None:
    resp, body = await get_range(client, base_url, "bytes=0-1")
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 0-1/{SIZE}"
    assert body == data[:2]


async def test_open_range(client: aiohttp.ClientSession, base_url: str, data: bytes) -> None:
    resp, body = await get_range(client, base_url, "bytes=1000-")
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 1000-{SIZE - 1}/{SIZE}"
    assert body == data[1000:]


async def test_suffix_range(client: aiohttp.ClientSession, base_url: str, data: bytes) -> None:
    resp, body = await get_range(client, base_url, "bytes=-500")
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {SIZE - 500}-{SIZE - 1}/{SIZE}"
    assert body == data[-500:]


async def test_suffix_larger_than_file(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    resp, body = await get_range(client, base_url, f"bytes=-{SIZE * 3}")
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    assert body == data


async def test_past_the_end_clamped(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    resp, body = await get_range(client, base_url, f"bytes={SIZE - 10}-{SIZE + 1000}")
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}"
    assert body == data[-10:]


async def test_unsatisfiable(client: aiohttp.ClientSession, base_url: str) -> None:
    resp, body = await get_range(client, base_url, f"bytes={SIZE}-")
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{SIZE}"
    assert body == b""


async def test_suffix_zero_unsatisfiable(client: aiohttp.ClientSession, base_url: str) -> None:
    resp, _ = await get_range(client, base_url, "bytes=-0")
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{SIZE}"


async def test_empty_file(client: aiohttp.ClientSession, base_url: str) -> None:
    resp, body = await fetch(client, base_url + "empty.wav")
    assert resp.status == 200 and body == b"" and resp.headers["Content-Length"] == "0"
    resp, _ = await fetch(client, base_url + "empty.wav", headers={"Range": "bytes=0-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */0"


async def test_bad_range_next_to_good(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    resp, body = await get_range(client, base_url, f"bytes={SIZE + 5}-{SIZE + 9}, 10-19")
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 10-19/{SIZE}"
    assert body == data[10:20]


@pytest.mark.parametrize("value", ["bytes=5-2", "bytes=abc", "bytes=", "items=0-1", "bytes=0-1,x"])
async def test_invalid_syntax_full(
    client: aiohttp.ClientSession, base_url: str, data: bytes, value: str
) -> None:
    resp, body = await get_range(client, base_url, value)
    assert resp.status == 200
    assert "Content-Range" not in resp.headers
    assert body == data


# --- multiple ranges ---------------------------------------------------------------------


async def test_multipart(client: aiohttp.ClientSession, base_url: str, data: bytes) -> None:
    resp, body = await get_range(client, base_url, "bytes=0-9, 500-599, -100")
    assert resp.status == 206
    assert "Content-Range" not in resp.headers
    assert resp.headers["Content-Length"] == str(len(body))
    parts = parse_multipart(resp.headers["Content-Type"], body)
    assert parts == [
        ("audio/wav", f"bytes 0-9/{SIZE}", data[0:10]),
        ("audio/wav", f"bytes 500-599/{SIZE}", data[500:600]),
        ("audio/wav", f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}", data[-100:]),
    ]


async def test_overlapping_coalesced(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    resp, body = await get_range(client, base_url, "bytes=600-700,0-9,5-20,650-800,21-30")
    assert resp.status == 206
    parts = parse_multipart(resp.headers["Content-Type"], body)
    assert [(cr, d) for _, cr, d in parts] == [
        (f"bytes 0-30/{SIZE}", data[0:31]),
        (f"bytes 600-800/{SIZE}", data[600:801]),
    ]


async def test_ranges_coalescing_to_one_are_single_part(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    resp, body = await get_range(client, base_url, "bytes=0-9,10-19")
    assert resp.status == 206
    assert resp.headers["Content-Type"] == "audio/wav"
    assert resp.headers["Content-Range"] == f"bytes 0-19/{SIZE}"
    assert body == data[:20]


async def test_too_many_ranges_ignored(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    value = "bytes=" + ",".join(f"{i * 100}-{i * 100 + 1}" for i in range(17))
    resp, body = await get_range(client, base_url, value)
    assert resp.status == 200  # documented policy: >16 ranges -> ignore Range, send all
    assert body == data
    value = "bytes=" + ",".join(f"{i * 100}-{i * 100 + 1}" for i in range(16))
    resp, body = await get_range(client, base_url, value)
    assert resp.status == 206
    assert len(parse_multipart(resp.headers["Content-Type"], body)) == 16


async def test_multipart_head(client: aiohttp.ClientSession, base_url: str) -> None:
    _, body = await get_range(client, base_url, "bytes=0-9,100-109")
    resp_head, head_body = await fetch(
        client, base_url + "rec.wav", "HEAD", headers={"Range": "bytes=0-9,100-109"}
    )
    assert resp_head.status == 206 and head_body == b""
    assert resp_head.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    # The boundary is random per response, but it has a fixed length, so lengths agree.
    assert resp_head.headers["Content-Length"] == str(len(body))


# --- If-Range -------------------------------------------------------------------------------


async def etag_and_date(client: aiohttp.ClientSession, base_url: str) -> tuple[str, str]:
    resp, _ = await fetch(client, base_url + "rec.wav", "HEAD")
    return resp.headers["ETag"], resp.headers["Last-Modified"]


async def test_if_range_strong_etag(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    etag, _ = await etag_and_date(client, base_url)
    resp, body = await get_range(client, base_url, "bytes=0-99", **{"If-Range": etag})
    assert resp.status == 206 and body == data[:100]


async def test_if_range_stale_etag(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    resp, body = await get_range(client, base_url, "bytes=0-99", **{"If-Range": '"stale"'})
    assert resp.status == 200 and body == data


async def test_if_range_weak_etag(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    etag, _ = await etag_and_date(client, base_url)
    resp, body = await get_range(client, base_url, "bytes=0-99", **{"If-Range": "W/" + etag})
    assert resp.status == 200 and body == data


async def test_if_range_exact_date(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    _, date = await etag_and_date(client, base_url)
    resp, body = await get_range(client, base_url, "bytes=0-99", **{"If-Range": date})
    assert resp.status == 206 and body == data[:100]


async def test_if_range_other_date(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    resp, body = await get_range(
        client, base_url, "bytes=0-99", **{"If-Range": "Tue, 15 Nov 1994 08:12:31 GMT"}
    )
    assert resp.status == 200 and body == data


async def test_if_range_date_of_fresh_file_is_weak(
    client: aiohttp.ClientSession, base_url: str, root: Path, data: bytes
) -> None:
    os.utime(root / "rec.wav")  # modified "now": the date cannot be a strong validator
    _, date = await etag_and_date(client, base_url)
    resp, body = await get_range(client, base_url, "bytes=0-99", **{"If-Range": date})
    assert resp.status == 200 and body == data


# --- HEAD and conditionals -----------------------------------------------------------------


async def test_head_with_range(client: aiohttp.ClientSession, base_url: str) -> None:
    resp, body = await fetch(client, base_url + "rec.wav", "HEAD", headers={"Range": "bytes=10-29"})
    assert resp.status == 206
    assert body == b""
    assert resp.headers["Content-Length"] == "20"
    assert resp.headers["Content-Range"] == f"bytes 10-29/{SIZE}"
    assert resp.headers["Accept-Ranges"] == "bytes"


async def test_head_matches_get(client: aiohttp.ClientSession, base_url: str) -> None:
    get, _ = await fetch(client, base_url + "rec.wav")
    head, body = await fetch(client, base_url + "rec.wav", "HEAD")
    assert body == b""
    for name in ("Content-Length", "Content-Type", "ETag", "Last-Modified", "Accept-Ranges"):
        assert head.headers[name] == get.headers[name]


async def test_if_none_match_304(client: aiohttp.ClientSession, base_url: str) -> None:
    etag, _ = await etag_and_date(client, base_url)
    resp, body = await fetch(client, base_url + "rec.wav", headers={"If-None-Match": etag})
    assert resp.status == 304 and body == b""
    assert resp.headers["ETag"] == etag
    resp, _ = await fetch(client, base_url + "rec.wav", headers={"If-None-Match": '"other"'})
    assert resp.status == 200


async def test_if_modified_since_304(client: aiohttp.ClientSession, base_url: str) -> None:
    _, date = await etag_and_date(client, base_url)
    resp, _ = await fetch(client, base_url + "rec.wav", headers={"If-Modified-Since": date})
    assert resp.status == 304
    # Ignored when If-None-Match is present and does not match.
    resp, _ = await fetch(
        client,
        base_url + "rec.wav",
        headers={"If-Modified-Since": date, "If-None-Match": '"other"'},
    )
    assert resp.status == 200


async def test_if_match_412(client: aiohttp.ClientSession, base_url: str) -> None:
    etag, _ = await etag_and_date(client, base_url)
    resp, _ = await fetch(client, base_url + "rec.wav", headers={"If-Match": '"other"'})
    assert resp.status == 412
    resp, _ = await fetch(client, base_url + "rec.wav", headers={"If-Match": etag})
    assert resp.status == 200


async def test_if_unmodified_since_412(client: aiohttp.ClientSession, base_url: str) -> None:
    resp, _ = await fetch(
        client,
        base_url + "rec.wav",
        headers={"If-Unmodified-Since": "Tue, 15 Nov 1994 08:12:31 GMT"},
    )
    assert resp.status == 412


# --- body transport --------------------------------------------------------------------------


async def test_body_uses_loop_sendfile(
    client: aiohttp.ClientSession, base_url: str, data: bytes
) -> None:
    loop = asyncio.get_running_loop()
    with mock.patch.object(loop, "sendfile", wraps=loop.sendfile) as spy:
        resp, body = await fetch(client, base_url + "rec.wav")
        assert body == data
        assert spy.call_count == 1
        assert spy.call_args.args[2:4] == (0, SIZE)
        resp, body = await get_range(client, base_url, "bytes=0-9,100-109")
        assert resp.status == 206
        assert spy.call_count == 3  # one sendfile per part


@pytest.mark.parametrize("path_kind", ["direct", "pread"])
@pytest.mark.parametrize("value", [None, "bytes=100-", "bytes=0-9,100-109,-5"])
async def test_without_loop_sendfile(
    client: aiohttp.ClientSession, base_url: str, value: str | None, path_kind: str
) -> None:
    """uvloop / TLS: loop.sendfile raises NotImplementedError -> direct os.sendfile on the
    socket, or (TLS, buffered transport) pread chunks; the bytes on the wire are the same."""
    loop = asyncio.get_running_loop()

    async def no_sendfile(*args: Any, **kwargs: Any) -> int:
        raise NotImplementedError

    async def no_direct(*args: Any, **kwargs: Any) -> bool:
        return False

    headers = {"Range": value} if value else {}
    expected_resp, expected_body = await fetch(client, base_url + "rec.wav", headers=headers)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(loop, "sendfile", no_sendfile))
        stack.enter_context(mock.patch("web.files.FALLBACK_CHUNK", 4096))
        spy = stack.enter_context(mock.patch("os.sendfile", wraps=os.sendfile))
        if path_kind == "pread":
            stack.enter_context(mock.patch("web.files._direct_sendfile", no_direct))
        resp, body = await fetch(client, base_url + "rec.wav", headers=headers)
    assert (spy.call_count > 0) is (path_kind == "direct")
    assert resp.status == expected_resp.status
    if value and "," in value:

        def strip(parts: list[tuple[str, str, bytes]]) -> list[tuple[str, bytes]]:
            return [(cr, d) for _, cr, d in parts]

        assert strip(parse_multipart(resp.headers["Content-Type"], body)) == strip(
            parse_multipart(expected_resp.headers["Content-Type"], expected_body)
        )
    else:
        assert body == expected_body


async def test_direct_sendfile_waits_for_slow_reader(
    client: aiohttp.ClientSession, base_url: str, root: Path
) -> None:
    """A large body to a slow reader hits EAGAIN and must resume on writability."""
    loop = asyncio.get_running_loop()
    big = os.urandom(8 * 1024 * 1024)
    (root / "big.wav").write_bytes(big)

    async def no_sendfile(*args: Any, **kwargs: Any) -> int:
        raise NotImplementedError

    received = bytearray()
    with (
        mock.patch.object(loop, "sendfile", no_sendfile),
        mock.patch("os.sendfile", wraps=os.sendfile) as spy,
    ):
        async with client.get(base_url + "big.wav", headers={"Range": "bytes=1-"}) as resp:
            assert resp.status == 206
            async for chunk in resp.content.iter_chunked(64 * 1024):
                received += chunk
                await asyncio.sleep(0.001)
    assert bytes(received) == big[1:]
    assert spy.call_count > 1  # it had to wait and resume at least once


async def test_client_abort_is_quiet(
    base_url: str, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Players abort range requests when seeking: no 500 traceback, connection closed."""
    (root / "big.wav").write_bytes(b"\0" * (32 * 1024 * 1024))
    host, port = base_url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /f/big.wav HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.read(1024)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
async def test_large_sparse_file_not_loaded_into_memory(
    client: aiohttp.ClientSession, base_url: str, root: Path
) -> None:
    big = 200 * 1024 * 1024
    # Sparse: takes no disk space and reads as zeros.
    fd = os.open(root / "big.wav", os.O_WRONLY | os.O_CREAT, 0o644)
    os.ftruncate(fd, big)
    os.close(fd)
    baseline = _rss_bytes()
    peak = baseline
    received = 0
    async with client.get(base_url + "big.wav") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(big)
        async for chunk in resp.content.iter_chunked(1 << 20):
            received += len(chunk)
            peak = max(peak, _rss_bytes())
    assert received == big
    assert peak - baseline < 100 * 1024 * 1024, (peak - baseline) / 2**20
