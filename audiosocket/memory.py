"""Giving memory back to the system after calls that moved a lot of audio.

glibc's malloc keeps what a call freed in its heaps: after two 192 kHz calls the process
stayed hundreds of MB above its baseline. ``malloc_trim(0)`` returns the free pages. It walks
every arena under their locks, so it runs on a thread of its own, never the event loop, at
most once per ``delay`` however many calls end together.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import structlog

__all__ = ["TRIM_AFTER_BYTES", "trim_soon"]

log = structlog.get_logger("audiosocket.memory")

#: A call that received at least this much audio is followed by a trim (8 MiB: 22 s of a
#: 192 kHz call, 9 minutes of an 8 kHz one).
TRIM_AFTER_BYTES = 8 * 2**20

_lock = threading.Lock()
_timer: threading.Timer | None = None


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (musl and others have none)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def trim_soon(delay: float = 1.0) -> bool:
    """Trim the heap ``delay`` seconds from now (the call's last buffers, such as recording
    chunks on the writer thread, are gone by then). False when this libc cannot."""
    global _timer
    if _LIBC is None:
        return False
    with _lock:
        if _timer is None:
            _timer = threading.Timer(delay, _trim)
            _timer.name = "malloc-trim"
            _timer.daemon = True
            _timer.start()
    return True


def _trim() -> None:
    global _timer
    with _lock:
        _timer = None
    assert _LIBC is not None
    released = _LIBC.malloc_trim(0)
    log.debug("malloc_trimmed", released=bool(released))
