"""``configure_logging``: our events go straight to the stream, foreign records through the
stdlib handler, and both share one lock, so threads never interleave a line."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import structlog

from audiosocket.logs import LOG_LINES_LOST, configure_logging, get_logger


class ChunkyStream(io.StringIO):
    """A stream that takes a long line in pieces and lets other threads run between them,
    as a pipe's buffered writer may: two writers without a common lock tear each other's
    lines here."""

    def write(self, s: str) -> int:
        for i in range(0, len(s), 512):
            super().write(s[i : i + 512])
            time.sleep(0)
        return len(s)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The stream the tests' ``configure`` points the logging at (restored afterwards)."""
    buf = ChunkyStream()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    try:
        yield buf
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        sys.excepthook, threading.excepthook = saved[2], saved[3]
        logging.captureWarnings(False)
        structlog.reset_defaults()


def configure(buf: io.StringIO, fmt: str, level: str) -> None:
    """configure_logging with ``buf`` as stderr: swapped in only for the call, because
    pytest's capture puts its own stderr back at the start of each test phase."""
    saved, sys.stderr = sys.stderr, buf
    try:
        configure_logging(fmt, level)
    finally:
        sys.stderr = saved


def _records(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_from_many_threads_and_libraries_never_interleave(
        stream: io.StringIO) -> None:
    configure(stream, "json", "info")
    text = "x" * 3000  # longer than one write of some streams: a torn line would show
    per_thread = 300

    def ours(n: int) -> None:
        log = get_logger("t", call=f"call-{n}")
        for i in range(per_thread):
            log.info("ours", i=i, text=text)
            log.debug("hidden", i=i)

    def foreign() -> None:
        lib = logging.getLogger("somelib")
        for i in range(per_thread):
            lib.warning("foreign %d %s", i, text)

    threads = [threading.Thread(target=ours, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=foreign))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = _records(stream)  # raises on any line that is not one JSON object
    mine = [r for r in records if r["event"] == "ours"]
    theirs = [r for r in records if r.get("logger") == "somelib"]
    assert len(mine) == 3 * per_thread and len(theirs) == per_thread
    assert len(records) == 4 * per_thread  # the debug lines were filtered out
    assert all(r["text"] == text and r["level"] == "info" and "timestamp" in r for r in mine)
    seen = sorted(int(str(r["i"])) for r in mine if r["call"] == "call-1")
    assert seen == list(range(per_thread))
    assert all(r["level"] == "warning" for r in theirs)


def test_an_exception_is_one_field(stream: io.StringIO) -> None:
    configure(stream, "json", "info")
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        get_logger("t").exception("failed", k=1)
    (record,) = _records(stream)
    assert record["event"] == "failed" and record["level"] == "error" and record["k"] == 1
    assert isinstance(record["exception"], str) and "ZeroDivisionError: boom" in record["exception"]


def test_a_broken_stream_loses_the_line_not_the_caller(stream: io.StringIO) -> None:
    configure(stream, "json", "info")
    stream.close()  # a closed pipe: write raises ValueError
    before = LOG_LINES_LOST._value.get()
    get_logger("t").warning("lost")  # must not raise
    assert LOG_LINES_LOST._value.get() == before + 1


def test_console_format_renders_our_events(stream: io.StringIO) -> None:
    configure(stream, "console", "warning")
    log = get_logger("t", call="abc")
    log.info("quiet")
    log.warning("loud", n=2)
    out = stream.getvalue()
    assert "quiet" not in out
    assert "loud" in out and "call=abc" in out and "n=2" in out
