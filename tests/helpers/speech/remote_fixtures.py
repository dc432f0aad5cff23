"""Pieces the remote-STT tests share: an in-process STT worker on a thread of its own, fake
worker heartbeats, a result collector and the drop counter by reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY

from audiosocket.root.stt_worker import SttWorker
from helpers.speech.remote_stt import DEFAULT_POOL, HEARTBEAT_SUBJECT, connect, ensure_stream
from helpers.speech.stt import Segment, SttDropped, SttEngine, SttOutcome
from helpers.speech.vad import Utterance


def dropped(reason: str) -> float:
    """``audiosocket_stt_utterances_dropped_total{reason}`` now."""
    return REGISTRY.get_sample_value("audiosocket_stt_utterances_dropped_total",
                                     {"reason": reason}) or 0.0


def utterance(pcm: bytes, rate: int = 8000, start: float = 1.0) -> Utterance:
    return Utterance(pcm, rate, start, start + len(pcm) / 2 / rate, False, start, None)


class Results:
    """The engine's callback: collects ``(segment, outcome)`` from whatever thread calls it."""

    def __init__(self) -> None:
        self.items: list[tuple[Segment | None, SttOutcome]] = []
        self._cond = threading.Condition()

    def __call__(self, seg: Segment | None, outcome: SttOutcome) -> None:
        with self._cond:
            self.items.append((seg, outcome))
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 20.0) -> list[tuple[Segment | None, SttOutcome]]:
        """The first ``n`` results, waiting up to ``timeout`` for them."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= n, timeout), self.items
            return list(self.items[:n])

    def reasons(self) -> list[str]:
        with self._cond:
            return [out.reason for _, out in self.items if isinstance(out, SttDropped)]


class WorkerThread:
    """``SttWorker`` for ``engine`` on a thread with its own loop, as ``worker --stt`` runs
    it (tests in-process so Whisper loads once per module)."""

    def __init__(self, url: str, engine: SttEngine, *, slots: int = 1, pool: int = DEFAULT_POOL,
                 max_age_s: float = 10.0, name: str = "test-worker") -> None:
        self.url, self.engine, self.slots, self.pool = url, engine, slots, pool
        self.max_age_s, self.name = max_age_s, name
        self.worker: SttWorker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        async def reconnected() -> None:
            if self.worker is not None:
                self.worker.reconnected()

        nc = await connect(self.url, 5.0, name=self.name, on_reconnect=reconnected)
        self.worker = SttWorker(nc, self.engine, slots=self.slots, pool=self.pool,
                                max_age_s=self.max_age_s, name=self.name)
        # The stream exists before start() returns: a test that publishes at once got "no
        # responders" while run() had not made it yet (a busy machine, the suite on -n 2).
        await ensure_stream(nc.jetstream(), self.pool, self.max_age_s)
        self._ready.set()
        try:
            await self.worker.run(self._stop)
        finally:
            await nc.close()

    def start(self) -> WorkerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


@contextlib.contextmanager
def heartbeats(url: str, name: str = "fake-worker", every_s: float = 0.2) -> Iterator[None]:
    """A worker that says it is alive and never takes anything."""
    stop = threading.Event()

    async def beat() -> None:
        nc = await connect(url, 5.0, name=name)
        while not stop.is_set():
            await nc.publish(HEARTBEAT_SUBJECT, json.dumps({"worker": name}).encode())
            await nc.flush()
            await asyncio.sleep(every_s)
        await nc.close()

    thread = threading.Thread(target=lambda: asyncio.run(beat()), daemon=True)
    thread.start()
    time.sleep(every_s)
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def wait_for(pred: Callable[[], object], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition never held"
        time.sleep(0.02)
