"""One process-wide limit on concurrent AI inference (Whisper, Flan-T5, ...).

Model inference is CPU-bound and each call already uses its own threads; letting STT workers
and post-call summaries all run at once only makes every one of them slower and the event
loop's thread starve. Every engine therefore takes a slot from the same semaphore around an
inference call::

    with ai_slots():
        model.generate(...)

Live speech goes first: a live STT worker takes its slot with ``ai_slots().live()``; while
one waits, a freed slot goes to it, never to post-call work (full transcripts, summaries),
which waits in ``with ai_slots():``. Running inference is never interrupted, so live speech
waits at most for the shortest running job (a post-call utterance takes ~0.2 s).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

__all__ = ["DEFAULT_AI_LIMIT", "AiSlots", "ai_limit", "ai_slots", "set_ai_limit"]

DEFAULT_AI_LIMIT = 2



class AiSlots:
    """A bounded semaphore with two classes of waiter: live ones are served first."""

    def __init__(self, n: int) -> None:
        self.limit = n
        self._free = n
        self._live_waiting = 0
        self._cond = threading.Condition()

    def acquire(
        self, blocking: bool = True, timeout: float | None = None, *, live: bool = False
    ) -> bool:
        """Take a slot (as ``threading.Semaphore.acquire``); post-call work also yields to
        any live waiter."""
        with self._cond:
            if live:
                self._live_waiting += 1
            try:
                ok = self._cond.wait_for(
                    lambda: self._free > 0 and (live or self._live_waiting == 0),
                    timeout if blocking else 0,
                )
                if ok:
                    self._free -= 1
                return ok
            finally:
                if live:
                    self._live_waiting -= 1
                    if self._live_waiting == 0:
                        self._cond.notify_all()  # post-call waiters may go again

    def release(self) -> None:
        """Give a slot back; more releases than acquires raise ``ValueError``."""
        with self._cond:
            if self._free >= self.limit:
                raise ValueError("AiSlots released too many times")
            self._free += 1
            self._cond.notify_all()  # each waiter re-checks its own class

    @contextmanager
    def live(self) -> Iterator[None]:
        """Hold a slot for live speech (ahead of post-call work)."""
        self.acquire(live=True)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


_lock = threading.Lock()
_slots: AiSlots | None = None
_limit: int = DEFAULT_AI_LIMIT


def ai_slots(limit: int | None = None) -> AiSlots:
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
            _slots = AiSlots(_limit)
        return _slots


def set_ai_limit(n: int) -> AiSlots:
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
        _slots = AiSlots(n)
        return _slots


def ai_limit() -> int:
    """The configured number of slots."""
    return _limit
