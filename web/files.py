"""Serve a file (call recordings) over aiohttp with RFC 9110 conditional and range requests.

Why not ``aiohttp.web.FileResponse``: it honours Range under a stale If-Range ETag and has no
multipart/byteranges. The decisions live in :mod:`web.ranges` (pure); this module does the
I/O: open + fstat in a worker thread, headers, then the body with ``loop.sendfile`` so file
bytes never pass through Python (falling back to bounded ``pread`` chunks in a thread when
the transport cannot sendfile, e.g. TLS or uvloop).

Caching policy: ``Cache-Control: private, no-cache``. Recordings are personal data, so shared
caches must not store them (``private``); browsers may keep a copy but must revalidate each
use (``no-cache``), which costs a 304 thanks to the strong ETag and makes a replaced or
redacted recording visible at once. Responses are never compressed: audio does not shrink,
and a Content-Encoding would change the byte offsets that Range refers to.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import stat as stat_mod
import time
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web

from helpers.storage import LocalStorage, resolve_stored
from web.ranges import (
    DEFAULT_MAX_RANGES,
    Precondition,
    RangeKind,
    evaluate_if_range,
    evaluate_preconditions,
    format_http_date,
    last_modified_is_strong,
    make_boundary,
    make_etag,
    multipart_content_length,
    multipart_parts,
    multipart_trailer,
    parse_range,
)

__all__ = ["CACHE_CONTROL", "content_type_for", "serve_file", "stored_path"]

_log = logging.getLogger(__name__)

CACHE_CONTROL: Final = "private, no-cache"
# Chunk size for the non-sendfile path: large enough to amortise the thread hop, small
# enough that 1000 concurrent downloads stay well under 300 MB.
FALLBACK_CHUNK: Final = 256 * 1024

_CONTENT_TYPES: Final = {
    ".wav": "audio/wav",
    ".m4a": "audio/mp4",
    ".mp3": "audio/mpeg",
    ".json": "application/json",
}


def content_type_for(path: Path | str) -> str:
    """Content-Type for a recording artefact by extension (application/octet-stream else)."""
    return _CONTENT_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


def stored_path(files: LocalStorage | None, stored: str) -> Path | None:
    """The local file a ``recordings`` row names (the one resolution rule,
    :func:`helpers.storage.resolve_stored`): relative to the files root (the shared
    directory), or absolute as rows from before it hold. None when it cannot name a file
    here: relative with no root, or climbing out of the root."""
    if files is None:
        path = Path(stored)
        return path if path.is_absolute() else None
    try:
        return resolve_stored(files.root, stored)
    except ValueError:
        return None


def _open_regular(path: Path) -> tuple[io.BufferedReader, os.stat_result]:
    """Open ``path`` and fstat the *open* file, so ETag/size describe the bytes we send."""
    fobj = open(path, "rb")  # closed by serve_file
    try:
        st = os.fstat(fobj.fileno())
        if not stat_mod.S_ISREG(st.st_mode):
            raise IsADirectoryError(str(path))
    except BaseException:
        fobj.close()
        raise
    return fobj, st


async def serve_file(
    request: web.Request,
    path: Path,
    content_type: str,
    *,
    max_ranges: int = DEFAULT_MAX_RANGES,
) -> web.StreamResponse:
    """Answer a GET or HEAD for ``path`` with full RFC 9110 semantics.

    200 full / 206 single range (``Content-Range``) / 206 ``multipart/byteranges`` / 304 /
    412 / 416 (``Content-Range: bytes */size``) / 404 when missing or not a regular file /
    405 for other methods. HEAD gets exactly the GET headers without a body. ``path`` must
    already be confined by the caller (no traversal checks here); ``content_type`` is sent
    as is. More than ``max_ranges`` ranges -> the Range header is ignored (200).
    """
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        return web.Response(status=405, headers={hdrs.ALLOW: "GET, HEAD"})
    try:
        # open/fstat can block on a slow or network disk: keep them off the event loop.
        fobj, st = await asyncio.to_thread(_open_regular, path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return web.Response(status=404, text="Not Found")
    except PermissionError:
        return web.Response(status=403, text="Forbidden")
    except ValueError:  # a NUL in the name: no such file, not a 500 with a traceback
        return web.Response(status=404, text="Not Found")
    except OSError as exc:
        if exc.errno not in (errno.ENAMETOOLONG, errno.ELOOP):
            raise  # a real disk fault stays a 500
        return web.Response(status=404, text="Not Found")
    try:
        return await _respond(request, fobj, st, content_type, max_ranges)
    finally:
        # Closing a read-only regular file never flushes anything, so it is cheap enough to
        # do inline rather than paying another thread hop per request.
        fobj.close()


async def _respond(
    request: web.Request,
    fobj: io.BufferedReader,
    st: os.stat_result,
    content_type: str,
    max_ranges: int,
) -> web.StreamResponse:
    size = st.st_size
    now = time.time()
    etag = make_etag(st)
    last_modified = int(st.st_mtime)
    last_modified_http = format_http_date(last_modified)
    headers: dict[str, str] = {
        hdrs.ACCEPT_RANGES: "bytes",
        hdrs.ETAG: etag,
        hdrs.LAST_MODIFIED: last_modified_http,
        hdrs.CACHE_CONTROL: CACHE_CONTROL,
        # Set Date ourselves: the If-Range date-strength rule compares against it.
        hdrs.DATE: format_http_date(now),
    }

    req_headers = request.headers
    verdict = evaluate_preconditions(
        request.method,
        etag,
        last_modified,
        if_match=req_headers.get(hdrs.IF_MATCH),
        if_none_match=req_headers.get(hdrs.IF_NONE_MATCH),
        if_modified_since=req_headers.get(hdrs.IF_MODIFIED_SINCE),
        if_unmodified_since=req_headers.get(hdrs.IF_UNMODIFIED_SINCE),
    )
    if verdict is Precondition.NOT_MODIFIED:
        return web.Response(status=304, headers=headers)
    if verdict is Precondition.PRECONDITION_FAILED:
        return web.Response(status=412, headers=headers)

    ranges: tuple[tuple[int, int], ...] = ()
    range_values = req_headers.getall(hdrs.RANGE, [])
    # Several Range fields cannot be combined into one valid value: ignore them all.
    if len(range_values) == 1 and evaluate_if_range(
        req_headers.get(hdrs.IF_RANGE),
        etag,
        last_modified_http,
        last_modified_strong=last_modified_is_strong(st.st_mtime, now),
    ):
        result = parse_range(range_values[0], size, max_ranges=max_ranges)
        if result.kind is RangeKind.UNSATISFIABLE:
            headers[hdrs.CONTENT_RANGE] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        ranges = result.ranges

    resp = web.StreamResponse(headers=headers)
    parts: list[tuple[bytes, int, int]] = []
    trailer = b""
    if len(ranges) > 1:
        boundary = make_boundary()
        parts = multipart_parts(ranges, size, content_type, boundary)
        trailer = multipart_trailer(boundary)
        resp.set_status(206)
        resp.headers[hdrs.CONTENT_TYPE] = f"multipart/byteranges; boundary={boundary}"
        resp.content_length = multipart_content_length(parts, boundary)
    else:
        if ranges:
            start, end = ranges[0]
            resp.set_status(206)
            resp.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end}/{size}"
        else:
            start, end = 0, size - 1
        resp.headers[hdrs.CONTENT_TYPE] = content_type
        resp.content_length = end - start + 1
        if end >= start:
            parts = [(b"", start, end)]  # a single "part" without a part header
    try:
        await resp.prepare(request)
        if request.method != hdrs.METH_HEAD:
            for part_header, start, end in parts:
                if part_header:
                    await resp.write(part_header)
                await _send_slice(request, resp, fobj, start, end - start + 1)
            if trailer:
                await resp.write(trailer)
        await resp.write_eof()
    except ConnectionError:
        return _abort(request, resp)
    return resp


def _abort(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Kill the connection after a partial response; players abort range requests often.

    Content-Length was promised, so the connection must not be reused. Returning (instead of
    raising) lets aiohttp finish quietly rather than log a 500 traceback per seek.
    """
    if request.transport is not None:
        request.transport.abort()
    return resp


async def _send_slice(
    request: web.Request,
    resp: web.StreamResponse,
    fobj: io.BufferedReader,
    offset: int,
    count: int,
) -> None:
    """Send ``count`` file bytes from ``offset`` after whatever ``resp`` already wrote.

    Raises ConnectionError when the client is gone or the file shrank; the caller then
    aborts the connection.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("connection lost")
    loop = asyncio.get_running_loop()
    if not resp.compression:  # compression would need the bytes; we never enable it
        try:
            # Headers and part headers went to the transport already (StreamResponse sends
            # headers immediately); asyncio waits for its write buffer to drain before
            # calling os.sendfile, so ordering on the wire is preserved.
            sent = await loop.sendfile(transport, fobj, offset, count, fallback=False)
        except (NotImplementedError, asyncio.SendfileNotAvailableError) as exc:
            # uvloop has no loop.sendfile and TLS transports cannot sendfile: use the
            # fallbacks. asyncio also raises SendfileNotAvailableError when os.sendfile
            # fails before the first byte, typically because the client hung up.
            if transport.is_closing():
                raise ConnectionResetError("connection lost") from exc
        else:
            if sent != count:
                _file_shrank()
            return
        if await _direct_sendfile(loop, transport, fobj.fileno(), offset, count):
            return
    fd = fobj.fileno()
    while count > 0:
        # pread is positional, so no shared file offset is touched from the thread.
        chunk = await asyncio.to_thread(os.pread, fd, min(FALLBACK_CHUNK, count), offset)
        if not chunk:
            _file_shrank()
        await resp.write(chunk)
        offset += len(chunk)
        count -= len(chunk)


async def _direct_sendfile(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    file_fd: int,
    offset: int,
    count: int,
) -> bool:
    """Zero-copy ``os.sendfile`` straight to the socket when the loop cannot (uvloop).

    Only possible for a plain (non-TLS) socket whose transport has nothing buffered, since
    our bytes must follow the headers already handed to the transport; returns False
    (nothing sent) otherwise. Waits for writability on a dup() of the socket fd because
    uvloop refuses add_writer() on an fd owned by a transport (and handles dup'ed fds in
    epoll correctly, uvloop issue #61).
    """
    sock = transport.get_extra_info("socket")
    if (
        sock is None
        or not hasattr(os, "sendfile")
        or transport.get_extra_info("sslcontext") is not None
        or transport.get_write_buffer_size() != 0
    ):
        return False
    sock_fd = sock.fileno()
    if sock_fd < 0:
        return False
    wait_fd = -1
    try:
        while count > 0:
            try:
                sent = os.sendfile(sock_fd, file_fd, offset, count)
            except BlockingIOError:
                sent = -1
            if sent == 0:
                _file_shrank()
            if sent > 0:
                offset += sent
                count -= sent
                continue
            if wait_fd < 0:
                wait_fd = os.dup(sock_fd)
            writable = loop.create_future()
            loop.add_writer(wait_fd, _set_done, writable)
            try:
                await writable
            finally:
                loop.remove_writer(wait_fd)
    finally:
        if wait_fd >= 0:
            os.close(wait_fd)
    return True


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _file_shrank() -> None:
    """The file shrank under us: Content-Length is already promised, so the connection dies.

    A client must see a truncated response as an error rather than as a complete body.
    """
    _log.warning("file shrank while being sent; aborting the connection")
    raise ConnectionResetError("file shrank while being sent")
