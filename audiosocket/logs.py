"""structlog set-up: JSON lines for machines, coloured console for people.

Everything that logs ends on one stream (stderr) behind one lock, the lock of a stdlib
handler on the root logger: our own structlog events and the "foreign" records of aiohttp,
asyncio ("Task exception was never retrieved"), warnings and any other library alike render
through the same processors. So in ``json`` mode every line on stderr is exactly one JSON
object, a traceback included (as the ``exception`` string field), and no two writers'
lines interleave.

Our own events do not go through stdlib ``logging`` on the way (a ``LogRecord``, the
handler chain, ``ProcessorFormatter``): that route cost ~26 us a line here against ~13 us
rendered straight to the stream, and an IVR at a thousand calls logs a few hundred lines a
second on the core that paces the audio. Foreign records keep the stdlib route, and the
handler's formatter gives them the same fields.

For the same reason a JSON line is encoded by orjson (one C call; ``json.dumps`` with a
``default`` builds a new encoder per line) and stamped from a per-second cache of the date
and time. Measured inside the server at 1000 silent IVR calls, a ``server_said`` line cost
~64 us with structlog's ``TimeStamper`` and ``json.dumps``, ~48 us with these two (the
stream's write and flush, ~11 us of it, unchanged). Lines are compact JSON (no spaces after
``:`` and ``,``), non-ASCII text is written as UTF-8, and the timestamp always has its
microseconds, so every line's is the same width.

The server (and the worker) hand lines to a writer thread instead of writing them on the
event loop (``buffered``): a stderr pipe whose reader stalls (a busy journald, a paused
``docker logs``) then stalls that thread, never the 20 ms clock, and up to
``BUFFER_MAX_LINES`` lines wait for it before new ones are dropped and counted in
``audiosocket_log_lines_lost_total``. The thread writes what gathered in ``LINGER_S`` as one
write: the line's own write and flush cost ~11 us on the loop at a thousand calls, the
append ~1. A ``kill -9`` can lose the last ``LINGER_S`` of lines; every other exit writes
them first (``flush_logs``).
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from prometheus_client import Counter

__all__ = ["BUFFER_MAX_LINES", "LINGER_S", "LOG_LINES_LOST", "configure_logging",
           "flush_logs", "get_logger"]

#: How long the writer thread gathers lines before it writes them, in seconds.
LINGER_S = 0.05
#: Lines that may wait for a stream that does not take them before new ones are dropped.
BUFFER_MAX_LINES = 20_000

LOG_LINES_LOST = Counter(
    "audiosocket_log_lines_lost_total",
    "Log lines the stream refused (stderr closed or failing); the caller went on",
)


class _Stamper:
    """``timestamp``: the UTC time in ISO 8601 with microseconds and ``Z`` (what structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes, but always with the microseconds). The
    date and time of the current second are formatted once per second, not per line."""

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        # (second, its text) in one object: threads log too, and a line must never pair
        # one second's text with another's microseconds.
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, _logger: object, _name: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        cached = self._cached
        if cached[0] != second:
            cached = (second, datetime.datetime.fromtimestamp(second, datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%S"))
            self._cached = cached
        micros = min(999_999, int((now - second) * 1_000_000))
        event["timestamp"] = f"{cached[1]}.{micros:06d}Z"
        return event


def _dumps(obj: dict[str, Any], default: Callable[[Any], Any] | None = None,
           **_kw: object) -> str:
    """One JSON line: orjson, and ``json.dumps`` for what orjson refuses (an integer past
    64 bits); ``default`` turns anything else into something JSON can hold (structlog's
    fallback: ``__structlog__()`` or ``repr``)."""
    try:
        return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(obj, default=default)


def _shared() -> list[structlog.types.Processor]:
    """The fields every line has, whoever logged it."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _Stamper(),
    ]


def _renderers(fmt: str) -> list[structlog.types.Processor]:
    """The last steps, turning an event dict into its line."""
    final: list[structlog.types.Processor] = [structlog.processors.StackInfoRenderer()]
    if fmt == "json":
        # A traceback becomes one (escaped) string field, never lines of its own.
        final += [structlog.processors.format_exc_info,
                  structlog.processors.JSONRenderer(serializer=_dumps)]
    else:
        # The console renderer prints exc_info itself: a plain traceback, never rich's
        # locals (they may hold the portal token or call data).
        final.append(structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback))
    return final


def _formatter(fmt: str) -> logging.Formatter:
    """The stdlib records' formatter: the same fields and rendering as our own events."""
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *_renderers(fmt)],
        # Records from plain ``logging`` get the same fields, plus which logger it was.
        foreign_pre_chain=[*_shared(), structlog.stdlib.add_logger_name],
    )


class _LineBuffer:
    """The stream lines go to in ``buffered`` mode: ``write`` appends a line (no I/O, no
    lock: ``deque.append`` is atomic), and a daemon thread writes what gathered to the real
    stream every ``linger_s``, oldest first, as one write. Every writer of the process (our
    lines and the stdlib handler's records) shares it, so the order is the order of the
    calls."""

    def __init__(self, stream: TextIO, *, linger_s: float = LINGER_S,
                 max_lines: int = BUFFER_MAX_LINES) -> None:
        self.stream = stream
        self.linger_s = linger_s
        self.max_lines = max_lines
        self._lines: deque[str] = deque()
        self._wake = threading.Event()
        self._io = threading.Lock()  # the thread and flush_logs: one writer at a time
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def write(self, text: str) -> int:
        """Queue ``text`` (one whole line); past ``max_lines`` waiting it is dropped."""
        if len(self._lines) >= self.max_lines:
            LOG_LINES_LOST.inc()
            return len(text)
        self._lines.append(text)
        if not self._wake.is_set():  # one wake per batch, not per line
            self._wake.set()
        return len(text)

    def flush(self) -> None:
        """What a stream's flush means here: write soon (never waits on the stream)."""
        self._wake.set()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def drain(self, timeout: float = -1) -> bool:
        """Write everything queued now (the exits); False when the stream stayed busy
        ``timeout`` seconds (a stalled pipe)."""
        if not self._io.acquire(timeout=timeout):
            return False
        try:
            batch: list[str] = []
            lines = self._lines
            while lines:
                batch.append(lines.popleft())
            if batch:
                try:
                    self.stream.write("".join(batch))
                    self.stream.flush()
                except Exception:  # whatever the stream raises, the thread must go on
                    LOG_LINES_LOST.inc(len(batch))
        finally:
            self._io.release()
        return True

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.linger_s)
            self._wake.clear()  # before the drain: a line queued after it wakes the next
            self.drain()


class _LineWriter:
    """structlog's logger: writes each rendered line to the handler's stream, under the
    handler's lock (the one the stdlib records take, so lines never interleave); in
    ``buffered`` mode appends it to the :class:`_LineBuffer` that stream is."""

    __slots__ = ("_handler",)

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler

    def msg(self, line: str) -> None:
        """Write one line; a stream that fails (a closed pipe) loses the line, never the
        caller: logging must not end a call."""
        stream = self._handler.stream
        if isinstance(stream, _LineBuffer):
            stream.write(line + "\n")  # a queue: no lock, no I/O here
            return
        with self._handler.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                LOG_LINES_LOST.inc()

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg


def _log_uncaught(exc_type: type[BaseException], exc: BaseException,
                  tb: types.TracebackType | None, where: str) -> None:
    structlog.get_logger("audiosocket").error(
        "uncaught_exception", where=where, exc_info=(exc_type, exc, tb)
    )


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _log_uncaught(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback,
                  f"thread {name}")


def _main_hook(exc_type: type[BaseException], exc: BaseException,
               tb: types.TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _log_uncaught(exc_type, exc, tb, "main")


def configure_logging(fmt: str = "console", level: str = "info", *,
                      buffered: bool = False) -> None:
    """Configure structlog and the stdlib root logger once, at start-up. ``buffered``: lines
    go to stderr from a writer thread (the long-running server and worker; see above)."""
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    stream: TextIO = sys.stderr
    if buffered:
        stream = _LineBuffer(stream)  # type: ignore[assignment]  # write/flush/isatty
        # Before logging's own flush at exit, which only wakes the thread.
        atexit.register(flush_logs)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_formatter(fmt))
    writer = _LineWriter(handler)
    structlog.configure(
        processors=[*_shared(), *_renderers(fmt)],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    # warnings.warn goes through logging ("py.warnings") instead of two raw lines.
    logging.captureWarnings(True)
    if fmt == "json":
        # Uncaught exceptions would print a bare multi-line traceback: log them instead.
        sys.excepthook = _main_hook
        threading.excepthook = _thread_hook


def flush_logs(timeout: float = 5.0) -> None:
    """Write the lines a writer thread still holds (before ``os._exit``, which skips
    logging's own flush at exit); waits at most ``timeout`` for a stalled stream."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(stream, _LineBuffer):
            stream.drain(timeout)


def get_logger(name: str = "audiosocket", **bound: object) -> structlog.stdlib.BoundLogger:
    """A logger with ``bound`` values on every line (call uuid, caller, app)."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name).bind(**bound)
    return logger
