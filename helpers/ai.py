"""What AI engines share in a process: one limit on concurrent inference (Whisper,
Flan-T5, ...) and the loaded models.

The composition root creates one :class:`AiSlots` (``postcall.ai_limit`` slots, default 2)
and one :class:`ModelCache`, and hands them to the engines; nothing here is module state.

Model inference is CPU-bound and each call already uses its own threads; letting STT workers
and post-call summaries all run at once only makes every one of them slower and the event
loop's thread starve. Every engine therefore takes a slot from the same semaphore around an
inference call::

    with slots:
        model.generate(...)

Live speech goes first: a live STT worker takes its slot with ``slots.live()``; while
one waits, a freed slot goes to it, never to post-call work (full transcripts, summaries),
which waits in ``with slots:``. Running inference is never interrupted, so live speech
waits at most for the shortest running job (a post-call utterance takes ~0.2 s).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar, cast

__all__ = ["DEFAULT_AI_LIMIT", "AiSlots", "ModelCache"]

DEFAULT_AI_LIMIT = 2
T = TypeVar("T")


class AiSlots:
    """A bounded semaphore with two classes of waiter: live ones are served first."""

    def __init__(self, n: int = DEFAULT_AI_LIMIT) -> None:
        if n < 1:
            raise ValueError(f"AI limit must be >= 1, got {n}")
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


class ModelCache:
    """Models loaded once per process, by key: Whisper checkpoints, Piper voices, Silero.

    The composition root makes one and hands it to every engine that loads weights, so two
    engines asking for the same model share it. A key loads under its own lock: a Whisper
    load (seconds) never holds up a Silero session asked for on a call's start.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._items: dict[Hashable, object] = {}
        self._seen: set[Hashable] = set()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The model under ``key``, loaded by ``load`` the first time (once, even when
        several threads ask at the same moment)."""
        with self._lock:
            if key in self._items:
                return cast(T, self._items[key])
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return cast(T, self._items[key])
            item = load()
            with self._lock:
                self._items[key] = item
            return item

    def first_time(self, key: Hashable) -> bool:
        """True the first time ``key`` is asked about (for "logged once per process")."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True
