"""One process-wide limit on concurrent AI inference (Whisper, Flan-T5, ...).

Model inference is CPU-bound and each call already uses its own threads; letting STT workers
and post-call summaries all run at once only makes every one of them slower and the event
loop's thread starve. Every engine therefore takes a slot from the same semaphore around an
inference call::

    with ai_slots():
        model.generate(...)
"""

from __future__ import annotations

import threading

__all__ = ["DEFAULT_AI_LIMIT", "ai_limit", "ai_slots", "set_ai_limit"]

DEFAULT_AI_LIMIT = 2

_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None
_limit: int = DEFAULT_AI_LIMIT


def ai_slots(limit: int | None = None) -> threading.BoundedSemaphore:
    """The shared semaphore, created on first use with ``limit`` (default 2).

    ``limit`` only matters on the first call (configure it once at start-up, or use
    :func:`set_ai_limit`); later calls return the same object whatever they pass.
    """
    global _slots, _limit
    with _lock:
        if _slots is None:
            if limit is not None:
                if limit < 1:
                    raise ValueError(f"AI limit must be >= 1, got {limit}")
                _limit = limit
            _slots = threading.BoundedSemaphore(_limit)
        return _slots


def set_ai_limit(n: int) -> threading.BoundedSemaphore:
    """Replace the shared semaphore with one of ``n`` slots and return it.

    Holders of the old semaphore release that one (``with ai_slots():`` keeps the object it
    acquired), so replacing it while inference runs is safe; for a short moment both limits
    apply side by side.
    """
    global _slots, _limit
    if n < 1:
        raise ValueError(f"AI limit must be >= 1, got {n}")
    with _lock:
        _limit = n
        _slots = threading.BoundedSemaphore(n)
        return _slots


def ai_limit() -> int:
    """The configured number of slots."""
    return _limit
