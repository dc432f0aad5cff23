"""``configure_logging``: our events go straight to the stream, foreign records through the
stdlib handler, and both share one lock, so threads never interleave a line."""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import structlog

from audiosocket.logs import (
    BUFFER_MAX_LINES,
    LINGER_S,
    LOG_LINES_LOST,
    configure_logging,
    flush_logs,
    get_logger,
)


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


def configure(buf: io.StringIO, fmt: str, level: str, *, buffered: bool = False) -> None:
    """configure_logging with ``buf`` as stderr: swapped in only for the call, because
    pytest's capture puts its own stderr back at the start of each test phase."""
    saved, sys.stderr = sys.stderr, buf
    try:
        configure_logging(fmt, level, buffered=buffered)
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


def test_values_json_cannot_hold_natively_still_make_one_line(stream: io.StringIO) -> None:
    """orjson encodes the line; what it refuses (an integer past 64 bits) goes through
    json.dumps, and an object JSON has no type for is written as its repr."""
    configure(stream, "json", "info")

    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    log = get_logger("t", call="c1")
    log.info("big", n=2**70, ratio=0.1, text="caf\u00e9 \u2013 \u5317", none=None)
    log.info("odd", thing=Thing(), when=(1, 2), keys={3: "x"})
    big, odd = _records(stream)
    assert big["n"] == 2**70 and big["ratio"] == 0.1 and big["none"] is None
    assert big["text"] == "caf\u00e9 \u2013 \u5317" and big["call"] == "c1"
    assert odd["thing"] == "<thing>" and odd["when"] == [1, 2] and odd["keys"] == {"3": "x"}


def test_every_timestamp_is_iso_utc_with_microseconds(stream: io.StringIO) -> None:
    """The per-second cache writes what the clock says: the same width on every line, in
    order, within the time the lines were written (across a second boundary too)."""
    configure(stream, "json", "info")
    log = get_logger("t")
    before = time.time()
    end = before + 1.2  # at least one change of second
    while time.time() < end:
        log.info("tick")
        time.sleep(0.01)
    after = time.time()
    stamps = [str(r["timestamp"]) for r in _records(stream)]
    assert len(stamps) > 50
    pattern = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    assert all(pattern.match(t) for t in stamps), stamps[:3]
    parsed = [datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.UTC).timestamp() for t in stamps]
    assert parsed == sorted(parsed)
    assert before - 1e-6 <= parsed[0] and parsed[-1] <= after + 1e-6
    assert len({int(t) for t in parsed}) >= 2


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


class StalledStream(io.StringIO):
    """A stderr whose reader has stopped: every write waits until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.entered = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        self.go.wait(30)
        return super().write(s)


def test_buffered_lines_arrive_whole_in_order_without_a_flush(stream: io.StringIO) -> None:
    """The server's mode: the writer thread writes what gathered, ours and the stdlib's
    records in the order they were logged, with no flush from the caller."""
    configure(stream, "json", "info", buffered=True)
    log = get_logger("t", call="c")
    lib = logging.getLogger("somelib")
    for i in range(200):
        log.info("ours", i=i)
        if i % 50 == 0:
            lib.warning("foreign %d", i)
    deadline = time.monotonic() + 10
    while stream.getvalue().count("\n") < 204 and time.monotonic() < deadline:
        time.sleep(LINGER_S / 2)
    records = _records(stream)
    assert len(records) == 204
    order = [(r["event"] if r["event"] == "ours" else "foreign", r.get("i")) for r in records]
    expected: list[tuple[str, object]] = []
    for i in range(200):
        expected.append(("ours", i))
        if i % 50 == 0:
            expected.append(("foreign", None))
    assert order == expected


def test_a_stalled_stream_never_stalls_the_caller(stream: io.StringIO) -> None:
    """A reader that stops taking lines holds the writer thread, not whoever logs: the
    calls return while the stream is stuck, past ``BUFFER_MAX_LINES`` waiting lines are
    dropped and counted, and once it moves again every line kept is written, in order."""
    stalled = StalledStream()
    configure(stalled, "json", "info", buffered=True)
    log = get_logger("t")
    log.info("first")
    assert stalled.entered.wait(10)  # the writer thread is now stuck in write()
    lost_before = LOG_LINES_LOST._value.get()
    done = threading.Event()

    def flood() -> None:
        for i in range(BUFFER_MAX_LINES + 500):
            log.info("more", i=i)
        done.set()

    caller = threading.Thread(target=flood)
    caller.start()
    assert done.wait(30), "logging waited for the stalled stream"
    assert LOG_LINES_LOST._value.get() - lost_before == 500
    stalled.go.set()
    caller.join()
    flush_logs()
    records = [json.loads(line) for line in stalled.getvalue().splitlines()]
    assert records[0]["event"] == "first"
    assert [r["i"] for r in records[1:]] == list(range(BUFFER_MAX_LINES))


def test_flush_logs_writes_what_the_thread_still_holds(stream: io.StringIO) -> None:
    """What ``os._exit`` paths call first: the lines are on the stream when it returns."""
    configure(stream, "json", "info", buffered=True)
    get_logger("t").info("last_words", code=3)
    flush_logs()
    assert [r["event"] for r in _records(stream)] == ["last_words"]
