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
"""

from __future__ import annotations

import logging
import sys
import threading
import types
from typing import TextIO

import structlog
from prometheus_client import Counter

__all__ = ["LOG_LINES_LOST", "configure_logging", "get_logger"]

LOG_LINES_LOST = Counter(
    "audiosocket_log_lines_lost_total",
    "Log lines the stream refused (stderr closed or failing); the caller went on",
)


def _shared() -> list[structlog.types.Processor]:
    """The fields every line has, whoever logged it."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderers(fmt: str) -> list[structlog.types.Processor]:
    """The last steps, turning an event dict into its line."""
    final: list[structlog.types.Processor] = [structlog.processors.StackInfoRenderer()]
    if fmt == "json":
        # A traceback becomes one (escaped) string field, never lines of its own.
        final += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
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


class _LineWriter:
    """structlog's logger: writes each rendered line to the handler's stream, under the
    handler's lock (the one the stdlib records take, so lines never interleave)."""

    __slots__ = ("_handler",)

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler

    def msg(self, line: str) -> None:
        """Write one line; a stream that fails (a closed pipe) loses the line, never the
        caller: logging must not end a call."""
        handler = self._handler
        with handler.lock:  # type: ignore[union-attr]  # always made by Handler.__init__
            try:
                stream = handler.stream
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


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """Configure structlog and the stdlib root logger once, at start-up."""
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
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


def get_logger(name: str = "audiosocket", **bound: object) -> structlog.stdlib.BoundLogger:
    """A logger with ``bound`` values on every line (call uuid, caller, app)."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name).bind(**bound)
    return logger
