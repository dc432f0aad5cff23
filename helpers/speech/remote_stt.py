"""Live speech-to-text on a pool of workers over NATS JetStream (``cluster.stt_remote``).

:class:`RemoteSttEngine` is an :class:`~helpers.speech.stt.SttEngine` whose utterances are
transcribed by ``audiosocket worker --stt`` processes (``audiosocket.root.stt_worker``),
perhaps on a GPU box, instead of by Whisper threads in the server. What a session sees does
not change: ``submit`` never blocks, admits by deadline into the same bounded queue (earliest
deadline first, oldest dropped past the byte bound) and calls back with ``(Segment | None,
outcome)`` from a thread of the engine: :class:`~helpers.speech.stt_result.SttDone` with the
same :class:`~helpers.speech.stt_result.SttResult` as a local result (the worker runs the same
``SttEngine.transcribe``) plus the worker and the round trip, or
:class:`~helpers.speech.stt_result.SttDropped` / :class:`~helpers.speech.stt_result.SttFailed`.

The way there: one thread of its own runs an asyncio loop (the call loop never touches NATS)
with a *sender* that moves the earliest-deadline utterance from the queue into the JetStream
stream ``STT_LIVE`` while fewer than ``inflight`` of this server's are unanswered. The
stream is a memory work queue: ``max_msgs`` = the pool's capacity with ``discard=new`` (a
full pool refuses the publish instead of pushing out work a worker may already hold) and
``max_age`` = the live deadline. The message is the raw PCM (16 kHz if the call's rate would
exceed the server's ``max_payload``); its headers (:data:`H_CALL` ...) carry the call, the
utterance id, its offsets, the rate, the absolute deadline and this server's reply inbox.
The worker answers on the inbox with JSON (:func:`encode_result`): a result, ``expired``
(:class:`WorkerExpired`) or ``error`` (:class:`WorkerError`).

Drops, counted in ``audiosocket_stt_utterances_dropped_total{reason}``:

- ``pool_full``: the stream refused the publish (``maximum messages exceeded``).
- ``timeout``: no answer by the deadline plus ``reply_grace_s``, the worker found it expired,
  its deadline passed while it waited here for an in-flight slot, or the publish timed out.
- ``no_workers``: no worker is alive. Workers publish a heartbeat on :data:`HEARTBEAT_SUBJECT`
  every :data:`HEARTBEAT_S`; with none heard for ``worker_timeout_s`` (3 beats by default),
  or while NATS is unreachable (no heartbeat arrives either), queued and in-flight
  utterances are dropped at once instead of waiting for their deadlines. JetStream's
  consumer info cannot tell this: ``num_waiting`` is 0 as well when every worker is busy.
  For ``worker_timeout_s`` after start-up the pool is presumed alive.

NATS unreachable at start: :meth:`RemoteSttEngine.start` retries for ``connect_timeout_s``,
then raises :class:`EngineUnavailable` (``serve`` exits 1). Lost later: nats-py reconnects on
its own; meanwhile nothing is published and the heartbeat rule drops what waits.

Unlike local STT, an utterance past its deadline is not transcribed late: the stream's
``max_age`` and the worker's expiry check would discard it anyway. Post-call transcripts on
this server (``transcribe``) still load Whisper here, on first use.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError
from prometheus_client import Gauge, Histogram

from helpers.audio import float_to_pcm, pcm_to_float, resample_float
from helpers.speech.lines import Word
from helpers.speech.stt import (
    _LAT_BUCKETS,
    QUEUE_DEPTH,
    QUEUE_WAIT,
    SttCallback,
    SttEngine,
    _Job,
)
from helpers.speech.stt_result import SttFailed, SttResult
from helpers.speech.vad import Utterance
from helpers.speech.whisper import SAMPLE_RATE

__all__ = [
    "DURABLE", "HEARTBEAT_S", "HEARTBEAT_SUBJECT", "STREAM", "SUBJECT", "EngineUnavailable",
    "RemoteSttEngine", "WorkerError", "WorkerExpired", "WorkerReply", "connect",
    "decode_result", "encode_result", "ensure_stream", "pool_capacity",
]

log = structlog.get_logger("helpers.speech.remote_stt")

STREAM = "STT_LIVE"
SUBJECT = "stt.live"
#: The durable pull consumer every worker binds (they share its messages).
DURABLE = "stt-workers"
HEARTBEAT_SUBJECT = "stt.workers.alive"
HEARTBEAT_S = 1.0
#: The pool's capacity (``max_msgs``) when ``stt.queue_capacity`` sets none.
DEFAULT_POOL = 64

# Request headers. Times are seconds on the call's timeline; the deadline is epoch seconds
# (the clocks of the server and the worker agree within NTP's few ms).
H_CALL = "Stt-Call"
H_UTTERANCE = "Stt-Utterance"
H_START = "Stt-Start"
H_END = "Stt-End"
H_PCM_START = "Stt-Pcm-Start"
H_RATE = "Stt-Rate"
H_VOICED = "Stt-Voiced-Ms"
H_DEADLINE = "Stt-Deadline"
H_REPLY = "Stt-Reply"
#: Reply header: which worker answered.
H_WORKER = "Stt-Worker"
# JetStream's error codes for a stream at its max_msgs / max_bytes with discard=new.
_POOL_FULL_CODES = {10077, 10078}

INFLIGHT = Gauge("audiosocket_stt_remote_inflight",
                 "Utterances sent to the remote STT pool and not answered yet")
WORKERS = Gauge("audiosocket_stt_remote_workers", "STT workers heard from lately (heartbeats)")
ROUNDTRIP = Histogram(
    "audiosocket_stt_remote_roundtrip_seconds",
    "Publish to answer of one utterance on the remote STT pool", buckets=_LAT_BUCKETS,
)


class EngineUnavailable(ConnectionError):
    """An engine (here NATS) did not answer within ``cluster.connect_timeout_s``."""


async def connect(
    url: str, timeout_s: float, *, name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Connect to NATS, retrying until ``timeout_s``; reconnects for ever afterwards, then
    awaits ``on_reconnect`` (a restarted server has lost its memory streams)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None

    async def disconnected() -> None:
        log.warning("nats_disconnected", url=url)

    async def reconnected() -> None:
        log.info("nats_reconnected", url=url)
        if on_reconnect is not None:
            try:
                await on_reconnect()
            except Exception:
                log.exception("nats_reconnect_hook_failed")

    async def error(exc: Exception) -> None:
        nonlocal last
        last = exc  # why the first connect fails (refused...), for the final message
        log.debug("nats_error", error=repr(exc))

    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise EngineUnavailable(f"cluster.nats: {url} unreachable for {timeout_s:g} s "
                                    f"({last!r})")
        try:
            # With reconnects for ever, nats-py also retries the first connect for ever
            # (every reconnect_time_wait): the deadline is ours to keep.
            return await asyncio.wait_for(nats.connect(
                url, name=name, connect_timeout=max(0.1, min(2.0, left)),
                max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
            ), left)
        except TimeoutError as exc:
            last = last or exc
        except Exception as exc:  # a bad URL, refused without retry: try again shortly
            last = exc
            await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def pool_capacity(queue_capacity: int | None) -> int:
    """``max_msgs`` of the stream: ``stt.queue_capacity`` when set, else :data:`DEFAULT_POOL`."""
    return int(queue_capacity) if queue_capacity else DEFAULT_POOL


async def ensure_stream(js: JetStreamContext, pool: int, max_age_s: float) -> None:
    """Create ``STT_LIVE`` (servers and workers all do; the same settings are a no-op). One
    created with other settings (another node's config) is used as it is, with a warning."""
    cfg = StreamConfig(
        name=STREAM, subjects=[SUBJECT], retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.MEMORY, max_msgs=pool, discard=DiscardPolicy.NEW,
        max_age=max_age_s,
    )
    try:
        await js.add_stream(cfg)
    except APIError as exc:
        if exc.err_code != 10058:  # "stream name already in use with a different config"
            raise
        info = await js.stream_info(STREAM)
        log.warning("stt_stream_settings_differ", wanted_max_msgs=pool,
                    wanted_max_age_s=max_age_s, max_msgs=info.config.max_msgs,
                    max_age_s=info.config.max_age)


@dataclass(frozen=True)
class WorkerExpired:
    """A worker's answer: the utterance was past its deadline when fetched, so not run."""


@dataclass(frozen=True)
class WorkerError:
    """A worker's answer: its ``transcribe`` raised (``error`` is the exception's repr)."""

    error: str


#: What a worker answers on the server's inbox.
WorkerReply = SttResult | WorkerExpired | WorkerError


def _result_json(r: SttResult) -> dict[str, object]:
    # float(): numpy scalars (float32 is no float subclass) are not JSON.
    return {
        "text": r.text, "confidence": float(r.confidence), "duration_s": float(r.duration_s),
        "dbfs": float(r.dbfs), "voiced_ms": float(r.voiced_ms),
        "processing_ms": float(r.processing_ms), "rejected": r.rejected,
        "words": [[w.text, float(w.start), float(w.end), float(w.probability)]
                  for w in r.words],
        "avg_logprob": _opt_float(r.avg_logprob), "no_speech_prob": _opt_float(r.no_speech_prob),
        "tokens": r.tokens, "path": r.path, "raw_text": r.raw_text,
    }


def _opt_float(v: float | None) -> float | None:
    return None if v is None else float(v)


def _opt_str(v: str | None) -> str | None:
    return None if v is None else str(v)


def _result_from(d: dict[str, Any]) -> SttResult:
    return SttResult(
        text=str(d["text"]), confidence=float(d["confidence"]),
        duration_s=float(d["duration_s"]), dbfs=float(d["dbfs"]),
        voiced_ms=float(d["voiced_ms"]), processing_ms=float(d["processing_ms"]),
        rejected=_opt_str(d["rejected"]),
        words=tuple(Word(str(t), float(a), float(b), float(p)) for t, a, b, p in d["words"]),
        avg_logprob=_opt_float(d["avg_logprob"]), no_speech_prob=_opt_float(d["no_speech_prob"]),
        tokens=None if d["tokens"] is None else int(d["tokens"]),
        path=_opt_str(d["path"]), raw_text=_opt_str(d["raw_text"]),
    )


def encode_result(reply: WorkerReply) -> bytes:
    """A worker's answer as JSON: ``{"status": "done", "result": {...}}``, ``{"status":
    "expired"}`` or ``{"status": "error", "error": ...}``. Floats keep every bit (``-inf``
    dBFS as ``-Infinity``), so :func:`decode_result` gives back an equal value."""
    body: dict[str, object]
    match reply:
        case SttResult():
            body = {"status": "done", "result": _result_json(reply)}
        case WorkerExpired():
            body = {"status": "expired"}
        case WorkerError(error=error):
            body = {"status": "error", "error": error}
    return json.dumps(body).encode()


def decode_result(data: bytes) -> WorkerReply:
    """The inverse of :func:`encode_result`; ValueError when ``data`` is not one."""
    try:
        body = json.loads(data)
        status = body["status"]
        if status == "done":
            return _result_from(body["result"])
        if status == "expired":
            return WorkerExpired()
        if status == "error":
            return WorkerError(str(body["error"]))
    except (KeyError, TypeError, ValueError) as exc:  # JSON errors are ValueErrors
        raise ValueError(f"unreadable STT reply: {exc!r}") from exc
    raise ValueError(f"unreadable STT reply: status {status!r}")


@dataclass
class _Flight:
    job: _Job
    sent: float  # monotonic
    give_up: float  # monotonic: no answer by then is a timeout


class RemoteSttEngine(SttEngine):
    """:class:`SttEngine` whose utterances go to ``audiosocket worker --stt`` over NATS.

    ``inflight``: how many of this server's utterances may be unanswered at once (also the
    parallelism deadline admission assumes). ``pool``: the stream's ``max_msgs``.
    ``reply_grace_s``: how long past its deadline an answer is still awaited (the worker may
    have started it just in time). The other arguments are :class:`SttEngine`'s (its
    queue, admission and, for post-call transcripts here, the local model).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        nats_url: str,
        inflight: int = 4,
        pool: int = DEFAULT_POOL,
        connect_timeout_s: float = 10.0,
        worker_timeout_s: float = 3 * HEARTBEAT_S,
        reply_grace_s: float = 2.0,
        name: str = "audiosocket",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.nats_url = nats_url
        self.inflight = max(1, inflight)
        self.pool = pool
        self.connect_timeout_s = connect_timeout_s
        self.worker_timeout_s = worker_timeout_s
        self.reply_grace_s = reply_grace_s
        self.name = name
        self._flights: dict[int, _Flight] = {}  # on the engine's loop only
        self._workers: dict[str, float] = {}  # worker -> monotonic time of its last beat
        self._presumed_alive_until = 0.0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._inbox = ""
        self._publishes: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to NATS (retrying up to ``connect_timeout_s``) and start the sender; no
        model loads. Raises :class:`EngineUnavailable`. Blocks: call it off the loop."""
        if self._running:
            return
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._thread_main, name="stt-remote",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise self._error
        with self._cond:
            self._running = True
        log.info("stt_remote_ready", nats=self.nats_url, inflight=self.inflight,
                 pool=self.pool, max_age_s=self.live_deadline_s)

    def stop(self, timeout: float = 5.0) -> None:
        """Drop what waits and what is in flight (``stopped``) and close the connection."""
        super().stop(timeout)  # not running any more; the queue dropped as "stopped"
        loop, thread = self._loop, self._thread
        if loop is not None and self._stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:
                pass  # its loop has just ended
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # a failure before ready must reach start()
            if not self._ready.is_set():
                self._error = exc
            else:
                log.exception("stt_remote_failed")
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        nc = await connect(self.nats_url, self.connect_timeout_s, name=self.name,
                           on_reconnect=self._reconnected)
        try:
            self._nc = nc
            self._js = nc.jetstream()
            await ensure_stream(self._js, self.pool, self.live_deadline_s)
            self._inbox = nc.new_inbox()
            await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
            await nc.subscribe(HEARTBEAT_SUBJECT, cb=self._on_heartbeat)
            self._presumed_alive_until = time.monotonic() + self.worker_timeout_s
            self._ready.set()
            await self._send_loop()
        finally:
            for flight in list(self._flights.values()):
                self._give_up(flight.job.utterance_id, "stopped")
            for task in list(self._publishes):
                task.cancel()
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:
                log.warning("nats_close_failed", exc_info=True)

    async def _reconnected(self) -> None:
        if self._js is not None:
            await ensure_stream(self._js, self.pool, self.live_deadline_s)
        self._kick()

    def submit(
        self,
        call_uuid: str,
        utt: Utterance,
        callback: SttCallback,
        speech_end_monotonic: float | None = None,
        deadline_s: float | None = None,
    ) -> bool:
        """:meth:`SttEngine.submit`, then a nudge to the sender (a thread-safe call, no wait)."""
        admitted = super().submit(call_uuid, utt, callback, speech_end_monotonic, deadline_s)
        if admitted:
            self._kick()
        return admitted

    def _kick(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass  # the engine has stopped

    def _parallel(self) -> int:
        return self.inflight

    # -- the sender ------------------------------------------------------------------------

    def workers_alive(self) -> bool:
        """Whether a worker was heard within ``worker_timeout_s`` (presumed so at start)."""
        now = time.monotonic()
        if now < self._presumed_alive_until:
            return True
        return any(now - seen < self.worker_timeout_s for seen in self._workers.values())

    async def _send_loop(self) -> None:
        assert self._wake is not None and self._stopping is not None
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wait = self._housekeeping()
                while (job := self._next_job()) is not None:
                    self._send(job)
            except Exception:  # a bug here must not leave the calls' queue unserved
                log.exception("stt_sender_failed")
                wait = 0.1
            if self._stopping.is_set():
                break
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    def _housekeeping(self) -> float:
        """Drop what cannot be answered any more; returns how long the sender may sleep."""
        now = time.monotonic()
        alive = self.workers_alive()
        for worker, seen in list(self._workers.items()):
            if now - seen > 60.0:  # long gone (a worker's name changes with its pid)
                del self._workers[worker]
        WORKERS.set(sum(now - seen < self.worker_timeout_s for seen in self._workers.values()))
        for uid, flight in list(self._flights.items()):
            if not alive:
                self._give_up(uid, "no_workers")
            elif now >= flight.give_up:
                self._give_up(uid, "timeout")
        with self._cond:
            if alive:
                gone = [j for j in self._queue if j.deadline <= now]
            else:
                gone = list(self._queue)
            for job in gone:
                self._queue.remove(job)
                self._queued_bytes -= len(job.utt.pcm)
            depth = len(self._queue)
            first = self._queue[0].deadline if self._queue else math.inf
        QUEUE_DEPTH.set(depth)
        for job in gone:
            self._drop(job, "timeout" if alive else "no_workers", now)
        nxt = min([first, *(f.give_up for f in self._flights.values())])
        return max(0.01, min(0.5, nxt - now))

    def _next_job(self) -> _Job | None:
        """The earliest-deadline job, if an in-flight slot is free and NATS is up."""
        nc = self._nc
        if len(self._flights) >= self.inflight or nc is None or not nc.is_connected:
            return None
        with self._cond:
            if not self._running or not self._queue:
                return None
            job = self._queue.pop(0)
            self._queued_bytes -= len(job.utt.pcm)
            job.started = time.monotonic()
            self._in_progress[job.utterance_id] = job
            depth = len(self._queue)
        QUEUE_DEPTH.set(depth)
        QUEUE_WAIT.observe(job.started - job.enqueued)
        return job

    def _send(self, job: _Job) -> None:
        now = job.started
        self._flights[job.utterance_id] = _Flight(job, now, job.deadline + self.reply_grace_s)
        INFLIGHT.set(len(self._flights))
        task = asyncio.get_running_loop().create_task(self._publish(job))
        self._publishes.add(task)
        task.add_done_callback(self._publishes.discard)

    async def _publish(self, job: _Job) -> None:
        assert self._js is not None and self._nc is not None
        utt = job.utt
        pcm, rate = utt.pcm, utt.rate
        if len(pcm) + 4096 > self._nc.max_payload and rate > SAMPLE_RATE:
            # Whisper hears 16 kHz anyway; only a long utterance at a high rate gets here.
            pcm = await asyncio.to_thread(
                lambda: float_to_pcm(resample_float(pcm_to_float(utt.pcm), rate, SAMPLE_RATE)))
            rate = SAMPLE_RATE
        uid = job.utterance_id
        headers = {
            H_CALL: job.call_uuid, H_UTTERANCE: str(uid), H_START: repr(utt.start),
            H_END: repr(utt.end), H_PCM_START: repr(utt.pcm_start), H_RATE: str(rate),
            H_DEADLINE: repr(time.time() + (job.deadline - time.monotonic())),
            H_REPLY: f"{self._inbox}.{uid}",
        }
        if utt.voiced_ms is not None:
            headers[H_VOICED] = repr(utt.voiced_ms)
        try:
            await self._js.publish(SUBJECT, pcm, timeout=max(0.1, min(2.0, job.deadline
                                   - time.monotonic())), stream=STREAM, headers=headers)
        except APIError as exc:
            full = exc.err_code in _POOL_FULL_CODES or "exceeded" in str(exc.description)
            if not full:
                log.warning("stt_publish_failed", error=repr(exc), description=exc.description)
            self._give_up(uid, "pool_full" if full else "no_workers")
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            self._give_up(uid, "no_workers")  # no stream (deleted?): nobody would answer
        except Exception as exc:  # timed out, connection lost in the middle
            log.warning("stt_publish_failed", error=repr(exc))
            self._give_up(uid, "timeout")

    def _give_up(self, uid: int, reason: str) -> None:
        flight = self._flights.pop(uid, None)
        if flight is None:
            return  # answered meanwhile
        INFLIGHT.set(len(self._flights))
        with self._cond:
            self._in_progress.pop(uid, None)
            if reason != "stopped":
                self.stats.dropped += 1
        self._drop(flight.job, reason, time.monotonic())
        self._kick()  # a slot is free

    # -- answers ---------------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            worker = str(json.loads(msg.data)["worker"])
        except (ValueError, KeyError, TypeError):
            return
        fresh = worker not in self._workers
        self._workers[worker] = time.monotonic()
        if fresh:
            log.info("stt_worker_seen", worker=worker)
            self._kick()

    async def _on_reply(self, msg: Msg) -> None:
        headers = msg.headers or {}
        try:
            uid = int(headers.get(H_UTTERANCE) or msg.subject.rsplit(".", 1)[1])
        except (ValueError, IndexError):
            return
        flight = self._flights.pop(uid, None)
        if flight is None:
            log.debug("stt_reply_late", utterance_id=uid)
            return
        INFLIGHT.set(len(self._flights))
        self._kick()
        worker = headers.get(H_WORKER, "")
        if worker:
            self._workers[worker] = time.monotonic()
        job = flight.job
        with self._cond:
            self._in_progress.pop(uid, None)
        try:
            reply = decode_result(msg.data)
        except ValueError as exc:
            log.warning("stt_reply_unreadable", error=repr(exc), worker=worker)
            self._safe_callback(job, None, SttFailed(uid, repr(exc)))
            return
        if isinstance(reply, WorkerExpired):  # the worker found it past its deadline
            with self._cond:
                self.stats.dropped += 1
            self._drop(job, "timeout", time.monotonic())
            return
        if isinstance(reply, WorkerError):
            self._safe_callback(job, None, SttFailed(uid, reply.error, worker or None))
            return
        roundtrip = time.monotonic() - flight.sent
        ROUNDTRIP.observe(roundtrip)
        # Admission estimates from what the pool really takes, the way there included.
        self._note_rtf(roundtrip, job.utt.duration)
        self._finish(job, reply, worker=worker or None, remote_ms=roundtrip * 1000)

