"""structlog set-up: JSON lines for machines, coloured console for people.

Everything that logs ends in one stdlib handler on the root logger whose formatter is
structlog's :class:`~structlog.stdlib.ProcessorFormatter`: our own structlog events and the
"foreign" records of aiohttp, asyncio ("Task exception was never retrieved"), warnings and
any other library alike. So in ``json`` mode every line on stderr is exactly one JSON object,
a traceback included (as the ``exception`` string field), and one lock orders all writers.
"""

from __future__ import annotations

import logging
import sys
import threading
import types

import structlog

__all__ = ["configure_logging", "get_logger"]


def _formatter(fmt: str) -> logging.Formatter:
    """The one formatter: renders structlog events and stdlib records the same way."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[structlog.types.Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        # A traceback becomes one (escaped) string field, never lines of its own.
        final += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        # The console renderer prints exc_info itself: a plain traceback, never rich's
        # locals (they may hold the portal token or call data).
        final.append(structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback))
    return structlog.stdlib.ProcessorFormatter(
        processors=final,
        # Records from plain ``logging`` get the same fields, plus which logger it was.
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
    )


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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt))
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
