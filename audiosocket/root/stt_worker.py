"""``audiosocket worker --stt``: live utterances from the servers' ``STT_LIVE`` stream.

Loads Whisper as a server would (``ensure_stt``, with ``stt.workers`` slots), binds the
durable pull consumer every worker shares (:data:`~helpers.speech.remote_stt.DURABLE`) and
asks for one message per *free* slot, never more than it can run at once, so an idle
worker elsewhere gets the next one. A message past its deadline is acked unread, counted
(``audiosocket_stt_worker_expired_total``) and answered ``expired`` so its server frees the
slot at once. The others are transcribed in a thread (the loop keeps fetching and beating),
answered on the server's reply inbox with the
:class:`~helpers.speech.stt_result.SttResult` (the same ``SttEngine.transcribe`` a server runs
locally), then acked; while one runs its
message is marked in progress, so ``ack_wait`` can stay short and a message whose worker
died is redelivered to another while it may still be in time.

Every :data:`~helpers.speech.remote_stt.HEARTBEAT_S` the worker says it is alive: servers
drop utterances as ``no_workers`` when none has for a while. SIGTERM (``stop``): no more
fetches; what runs finishes and is answered, what has not finished within the grace is
nak'ed for another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

import nats.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import Counter

from audiosocket.config import Config
from audiosocket.root.app import AppContext
from audiosocket.root.services import close_services, ensure_stt
from helpers.speech import remote_stt as rs
from helpers.speech.remote_stt import (
    DURABLE,
    H_UTTERANCE,
    H_WORKER,
    HEARTBEAT_S,
    HEARTBEAT_SUBJECT,
    STREAM,
    SUBJECT,
    ensure_stream,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from helpers.speech.stt import SttEngine

__all__ = ["ACK_WAIT_S", "SttWorker", "run_stt_worker"]

log = structlog.get_logger("audiosocket.stt_worker")

#: Redelivery after a worker stops answering for a message; a running one is marked in
#: progress every third of it.
ACK_WAIT_S = 3.0
#: How long a stopping worker lets running transcriptions finish before it naks them.
STOP_GRACE_S = 10.0
EXPIRED = Counter("audiosocket_stt_worker_expired_total",
                  "Live utterances a worker skipped: their deadline had passed")
ANSWERED = Counter("audiosocket_stt_worker_answered_total",
                   "Live utterances a worker transcribed and answered")


def _worker_name(config: Config) -> str:
    base = config.cluster.node or socket.gethostname()
    return f"{base}/stt/{os.getpid()}"


class SttWorker:
    """Takes utterances off ``STT_LIVE`` for ``engine``, at most ``slots`` at a time."""

    def __init__(self, nc: NATS, engine: SttEngine, *, slots: int, pool: int,
                 max_age_s: float, name: str) -> None:
        self.nc = nc
        self.engine = engine
        self.slots = max(1, slots)
        self.pool = pool
        self.max_age_s = max_age_s
        self.name = name
        self.running: set[asyncio.Task[None]] = set()
        self.expired = 0
        self.answered = 0
        self._executor = ThreadPoolExecutor(self.slots, thread_name_prefix="stt-remote")
        self._rebind = False

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, transcribe and answer until ``stop`` is set; then finish or nak."""
        sub = await self._bind()
        beat = asyncio.create_task(self._heartbeat(stop))
        log.info("stt_worker_ready", worker=self.name, slots=self.slots, stream=STREAM)
        try:
            await self._fetch_loop(sub, stop)
        finally:
            beat.cancel()
            await self._finish_running()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _bind(self) -> JetStreamContext.PullSubscription:
        """The stream (created if absent) and the shared durable consumer."""
        js = self.nc.jetstream()
        await ensure_stream(js, self.pool, self.max_age_s)
        return await js.pull_subscribe(
            SUBJECT, durable=DURABLE, stream=STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
                                  max_deliver=3),
        )

    def reconnected(self) -> None:
        """NATS came back: bind again before the next fetch (a restarted server has lost
        its memory stream and the consumer with it)."""
        self._rebind = True

    async def _fetch_loop(self, sub: JetStreamContext.PullSubscription,
                          stop: asyncio.Event) -> None:
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if self._rebind:
                    self._rebind = False
                    try:
                        old, sub = sub, await self._bind()
                        with contextlib.suppress(Exception):
                            await old.unsubscribe()
                        log.info("stt_worker_rebound", worker=self.name)
                    except Exception as exc:
                        log.warning("stt_rebind_failed", error=repr(exc))
                        self._rebind = True
                        await asyncio.sleep(0.5)
                        continue
                free = self.slots - len(self.running)
                if free <= 0:  # every slot busy: wait for one (or the stop)
                    await asyncio.wait({stopper, *self.running},
                                       return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(free, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue  # nothing to do for a second
                except Exception as exc:  # NATS away: nats-py reconnects; try again soon
                    log.warning("stt_fetch_failed", error=repr(exc))
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg))
                    self.running.add(task)
                    task.add_done_callback(self.running.discard)
        finally:
            stopper.cancel()

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            body = {"worker": self.name, "slots": self.slots, "busy": len(self.running)}
            with contextlib.suppress(Exception):  # disconnected: the servers notice
                await self.nc.publish(HEARTBEAT_SUBJECT, json.dumps(body).encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT_S)

    async def _handle(self, msg: Msg) -> None:
        h = msg.headers or {}
        reply = h.get(rs.H_REPLY, "")
        uid = h.get(rs.H_UTTERANCE, "")
        try:
            deadline = float(h[rs.H_DEADLINE])
            rate = int(h[rs.H_RATE])
            voiced = float(h[rs.H_VOICED]) if rs.H_VOICED in h else None
        except (KeyError, ValueError):
            log.warning("stt_message_unreadable", headers=h)
            await msg.term()  # it will not get better on another worker
            return
        if time.time() >= deadline:
            self.expired += 1
            EXPIRED.inc()
            log.info("stt_expired_skipped", utterance_id=uid, call_uuid=h.get(rs.H_CALL),
                     late_s=round(time.time() - deadline, 3))
            await msg.ack()
            await self._answer(reply, uid, rs.encode_result(rs.WorkerExpired()))
            return
        keep = asyncio.create_task(self._in_progress(msg))
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._executor,
                lambda: self.engine.transcribe(msg.data, rate, voiced=voiced, live=True))
            body = rs.encode_result(result)
        except Exception as exc:
            log.exception("stt_failed", utterance_id=uid)
            body = rs.encode_result(rs.WorkerError(repr(exc)))
        except asyncio.CancelledError:  # stopping, past the grace: back to the pool
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        finally:
            keep.cancel()
        await self._answer(reply, uid, body)
        self.answered += 1
        ANSWERED.inc()
        with contextlib.suppress(Exception):  # lost connection: it is redelivered, answered
            await msg.ack()                   # twice, and the server keeps the first

    async def _answer(self, reply: str, uid: str, body: bytes) -> None:
        if not reply:
            return
        try:
            await self.nc.publish(reply, body, headers={H_UTTERANCE: uid, H_WORKER: self.name})
        except Exception as exc:
            log.warning("stt_answer_failed", error=repr(exc), utterance_id=uid)

    async def _in_progress(self, msg: Msg) -> None:
        """Hold the message while it is transcribed (no redelivery to another worker)."""
        while True:
            await asyncio.sleep(ACK_WAIT_S / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _finish_running(self) -> None:
        if not self.running:
            return
        log.info("stt_worker_finishing", running=len(self.running))
        _, late = await asyncio.wait(set(self.running), timeout=STOP_GRACE_S)
        for task in late:
            task.cancel()  # its thread runs on; the message is nak'ed for another worker
        await asyncio.gather(*late, return_exceptions=True)


async def run_stt_worker(config: Config, stop: asyncio.Event) -> int:
    """Serve ``STT_LIVE`` until ``stop``: 0; 2 without ``cluster.nats``; 1 when NATS is
    unreachable for ``cluster.connect_timeout_s``."""
    cluster = config.cluster
    if not cluster.nats:
        print("audiosocket worker: --stt needs cluster.nats (a nats:// URL)", file=sys.stderr)
        return 2
    name = _worker_name(config)
    worker: SttWorker | None = None

    async def reconnected() -> None:
        if worker is not None:
            worker.reconnected()

    try:
        nc = await rs.connect(cluster.nats, cluster.connect_timeout_s, name=name,
                              on_reconnect=reconnected)
    except rs.EngineUnavailable as exc:
        log.error("cannot_start", error=str(exc))
        return 1
    # The worker transcribes here: its engine is local whatever the shared file says.
    ctx = AppContext(replace(config, cluster=replace(cluster, stt_remote=False)))
    try:
        engine = await ensure_stt(ctx)
        worker = SttWorker(nc, engine, slots=config.stt.workers,
                           pool=rs.pool_capacity(config.stt.queue_capacity),
                           max_age_s=config.stt.live_deadline_s, name=name)
        await worker.run(stop)
    finally:
        # Answers are out (flush), nothing is left to take: close, not drain (a drain waits
        # on the pull subscription's queue, which fetch never marks done).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.flush(), 1.0)
        with contextlib.suppress(Exception):
            await nc.close()
        await close_services(ctx)
    return 0
