"""Durable post-call jobs: archive (AAC, echo-filtered MP3), peaks, full transcript, summary.

When a call's recording is complete, one job row per step is written to the store *before*
anything runs. Workers (asyncio tasks, in the server process or in ``audiosocket worker``
processes sharing the store) claim jobs atomically under a lease that they heartbeat, so a
crash loses nothing: the job of a worker that died goes back to pending once its lease
expires and is done again (every step is idempotent, archives are published by atomic
rename, and the transcript's segments are written in the same transaction as the job's
fenced finish, so a job done twice never doubles them). See docs/SCALE-OUT.md.

Steps run side by side: archiving beside the AI steps, as in the reference design. The caps
are elsewhere and shared: FFmpeg processes (``helpers.postcall.archive``, default 2) and AI
inference, STT and summary together (``helpers.ai``, default 2). The summary waits for the
transcript (deferred, not failed). Failures retry with exponential backoff up to ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import threading
import time
import wave
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from prometheus_client import Counter, Gauge, Histogram

from helpers.audio import resample_pcm
from helpers.postcall.archive import (
    ArchiveSettings,
    FFmpegCap,
    archive_aac,
    archive_mp3,
    wav_duration,
)
from helpers.postcall.peaks import write_peaks
from helpers.speech.loop import SpeechLoop
from helpers.speech.vad import VadSegmenter
from helpers.storage import resolve_stored
from helpers.store.db import CallStore
from helpers.store.jobs import DEFAULT_LEASE_S, JOBS_LOST_LEASE, WriteOp
from helpers.store.rows import JobRow

__all__ = ["STEPS", "PostCallJobs", "Wakeup", "transcribe_recording"]

log = structlog.get_logger("audiosocket.jobs")

STEPS = ("archive_aac", "archive_mp3", "peaks", "transcript", "summary")
DEPENDS = {"summary": ("transcript",)}

JOBS = Counter("audiosocket_jobs_total", "Post-call job outcomes", ["step", "status"])
JOB_SECONDS = Histogram(
    "audiosocket_job_seconds", "Post-call step durations", ["step"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
QUEUE = Gauge("audiosocket_jobs_queued", "Post-call jobs pending or running")

#: An idle worker's wake-up seam: awaited with the poll interval, returns when new work may
#: be in the store (PostgreSQL LISTEN/NOTIFY plugs in here; by default the store is polled).
Wakeup = Callable[[float], Awaitable[object]]
#: The ``<n>`` of ``<node>/<pid>/<n>``: unique among every pool of the process.
_WORKER_SEQ = itertools.count()


class Stopped(Exception):
    """The worker pool is shutting down: leave the job for the next start."""


def transcribe_recording(
    stt: Any, wav: Path, vad_aggressiveness: int = 2, stop: threading.Event | None = None
) -> list[dict[str, Any]]:
    """The full caller transcript of a recording: the left (caller) leg of a stereo call
    recording, or the whole of a mono file, cut into utterances by the VAD and transcribed
    one by one, each utterance in sentence-sized lines (the live loop,
    :class:`helpers.speech.loop.SpeechLoop`). Blocking (runs in a thread)."""
    with wave.open(str(wav), "rb") as wf:
        rate, channels = wf.getframerate(), wf.getnchannels()
        raw = wf.readframes(wf.getnframes())
    data = np.frombuffer(raw, "<i2")
    if channels > 1:
        data = data[0::channels]
    if rate not in (8000, 16000, 32000, 48000):
        data = np.frombuffer(resample_pcm(data.tobytes(), rate, 16000), "<i2")
        rate = 16000
    loop = SpeechLoop(VadSegmenter(rate, aggressiveness=vad_aggressiveness, max_utterance_s=25.0))
    out = []
    for utt in loop.feed_all(data.tobytes()):
        if stop is not None and stop.is_set():
            raise Stopped("shutting down")  # a thread cannot be cancelled; it can stop
        out += [{"start": round(ln.start, 3), "end": round(ln.end, 3), "text": ln.text,
                 "confidence": ln.confidence, "latency_ms": None}
                for ln in SpeechLoop.recognise(stt, utt)]
    return out


class PostCallJobs:
    """The worker pool and the steps; ``submit`` when a recording is done.

    ``workers`` asyncio tasks each claim a job under a lease of ``lease_s`` seconds as
    ``<node>/<pid>/<n>`` (:attr:`worker_ids`), heartbeat it every ``lease_s / 3`` while the
    step runs, and finish it fenced (a result of a job that was taken away is discarded).
    ``steps`` limits which steps they take (``audiosocket worker --steps``); ``listener``
    False makes a pure worker (no submissions, no scan for recordings without jobs: it has
    no recordings of its own); ``workers=0`` a pure producer (a server that leaves the work
    to ``audiosocket worker``). Idle workers poll the store every ``poll_s``: another process
    may have enqueued. ``wakeup`` is the seam for a push instead (PostgreSQL LISTEN/NOTIFY):
    an async callable that returns when there may be new work (it is given the poll timeout
    and may return earlier or later); an in-process :meth:`submit` wakes them at once anyway.
    """

    def __init__(
        self,
        store: CallStore,
        data_dir: str | Path,
        *,
        archive: ArchiveSettings | None = None,
        ffmpeg: FFmpegCap | None = None,
        stt: Callable[[], Awaitable[Any]] | None = None,
        summarizer: Callable[[], Any] | None = None,
        workers: int = 4,
        max_attempts: int = 4,
        poll_s: float = 0.5,
        node: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        steps: Iterable[str] | None = None,
        listener: bool = True,
        wakeup: Wakeup | None = None,
    ) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.archive = archive or ArchiveSettings()
        #: The process's FFmpeg cap (from the composition root); None: one of its own.
        self.ffmpeg = ffmpeg if ffmpeg is not None else FFmpegCap()
        self._stt_factory = stt
        self._summarizer_factory = summarizer
        self._summarizer: Any = None
        self.workers = workers
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        #: This process's name in ``calls.node`` (whose recordings it scans) and in job ids.
        self.node = node or socket.gethostname()
        self.lease_s = lease_s
        unknown = sorted(set(steps or ()) - set(STEPS))
        if unknown:
            raise ValueError(f"unknown post-call step(s): {', '.join(unknown)}")
        #: The steps this pool takes; None: all of them.
        self.steps: frozenset[str] | None = frozenset(steps) if steps is not None else None
        self.listener = listener
        self._wakeup = wakeup
        #: The worker names its tasks claim under (``<node>/<pid>/<n>``), once started.
        self.worker_ids: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_reap = 0.0
        self.running = 0

    def _takes(self, step: str) -> bool:
        return self.steps is None or step in self.steps

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Requeue jobs whose worker died, pick up orphaned recordings, start workers."""
        self._loop = asyncio.get_running_loop()
        for folder in ("archive", "peaks"):
            await asyncio.to_thread((self.data_dir / folder).mkdir, parents=True, exist_ok=True)
        # Only expired leases: with workers in other processes, a running job with a live
        # lease is theirs. Ours from before a crash expire within lease_s (the reaper).
        resumed = await asyncio.to_thread(self.store.reset_running_jobs, self.max_attempts)
        if resumed:
            log.warning("jobs_resumed", count=resumed)
        self._last_reap = time.monotonic()
        if self.listener:
            orphans = await asyncio.to_thread(self._orphans)
            for call_uuid, wav in orphans:
                log.warning("recording_without_jobs", call=call_uuid, path=str(wav))
                self.submit(call_uuid, wav)
        if self.workers and self._takes("summary") and self._summarizer_factory is not None:
            # Load now so "no Flan-T5 checkpoint installed" is said once, at start-up.
            self._summarizer = await asyncio.to_thread(self._summarizer_factory)
        pid = os.getpid()
        for _ in range(self.workers):
            worker_id = f"{self.node}/{pid}/{next(_WORKER_SEQ)}"
            self.worker_ids.append(worker_id)
            self._tasks.append(asyncio.create_task(self._worker(worker_id),
                                                   name=f"jobs-{worker_id}"))

    async def aclose(self) -> None:
        """Stop the workers. A job still running is abandoned cleanly: put back to pending
        (the attempt not counted) for the next worker; if even that write fails, its lease
        simply expires."""
        self._stop.set()
        self._wake.set()
        pending = {t for t in self._tasks if not t.done()}
        while pending:
            # Cancel again each round: a worker that absorbed one cancel (it landed as an
            # await finished) still sees the stop flag at the top of its loop.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("job_worker_failed", error=repr(task.exception()))
        self._tasks.clear()
        closer = getattr(self._wakeup, "aclose", None)
        if closer is not None:  # a LISTEN connection (helpers.store.pg_listen)
            await closer()

    def _orphans(self) -> list[tuple[str, Path]]:
        """Recordings of this node's ended calls that have no job rows (a crash before
        submit). With a shared recordings folder other nodes' calls are theirs to submit:
        a call whose ``node`` (``calls.node``, when the store has it) names another node is
        skipped; rows without a node (older stores) count as ours."""
        rec_dir = self.data_dir / "recordings"
        if not rec_dir.is_dir():
            return []
        out = []
        for wav in rec_dir.glob("*.wav"):
            row = self.store.get_call_row(wav.stem)
            if row is None or row.ended_at is None:
                continue
            owner = getattr(row, "node", None)
            if owner is not None and owner != self.node:
                continue
            if not self.store.jobs_for(wav.stem):
                out.append((wav.stem, wav))
        return out

    # -- producers -----------------------------------------------------------------------

    def submit(self, call_uuid: str, wav: str | Path) -> None:
        """The call's recording is complete: record it and queue every step (durably).

        Reads the file's size and header, so from the event loop use :meth:`asubmit`; safe
        to call from any thread (the importer calls it from its own).
        """
        if not self.listener:
            raise RuntimeError("this PostCallJobs only works jobs (listener=False)")
        wav = Path(wav)
        try:
            size = wav.stat().st_size
            duration: float | None = wav_duration(wav)
        except (OSError, EOFError, ValueError, wave.Error):
            size, duration = 0, None  # recorded anyway: the archive step will say why
        self.store.set_recording(call_uuid, "wav", str(wav), size, duration)
        self.store.enqueue_jobs(call_uuid, STEPS)
        self._poke()

    async def asubmit(self, call_uuid: str, wav: str | Path) -> None:
        """:meth:`submit` with its file reads off the event loop."""
        await asyncio.to_thread(self.submit, call_uuid, wav)

    def _poke(self) -> None:
        """Wake an idle worker; asyncio.Event is not thread-safe, so hop to the loop."""
        loop = self._loop
        if loop is None:
            return  # not started: the workers look at the store when they start
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            self._wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def wait_idle(self, timeout: float = 120.0) -> None:
        """Until no job is pending or running (tests, import)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            await self.store.aflush()
            if await self.store.aread(self.store.pending_job_count) == 0 and not self.running:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("post-call jobs still pending")

    # -- workers -------------------------------------------------------------------------

    async def _worker(self, worker_id: str) -> None:
        # The stop flag, not cancellation alone, ends the loop: a cancel that lands as an
        # await completes can be lost (3.11's wait_for did exactly that), and then
        # aclose() would wait on this task forever.
        steps = set(self.steps) if self.steps is not None else None
        idle = False
        while not self._stop.is_set():
            if idle:
                # After an idle wait, look before claiming: a read costs nothing, a claim
                # takes the store's write lock, which other processes wait on.
                await self._reap_if_due()
                with contextlib.suppress(Exception):
                    if not await self.store.aread(self.store.claimable_jobs, steps):
                        await self._idle()
                        continue
            try:
                job = await asyncio.wrap_future(self.store.claim_job_async(
                    steps, worker=worker_id, lease_s=self.lease_s))
            except Exception as exc:
                log.error("job_claim_failed", error=str(exc))
                job = None
            if job is None:
                if not idle:
                    await self._refresh_gauge()  # work just ran out: say so once
                idle = True
                await self._idle()
                continue
            idle = False
            self.running += 1
            try:
                await self._run(job, worker_id)
            finally:
                self.running -= 1
                await self._refresh_gauge()

    async def _idle(self) -> None:
        """Wait for a poke, the ``wakeup`` seam or ``poll_s``, whichever comes first."""
        self._wake.clear()
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        if self._wakeup is not None:
            waits.append(asyncio.ensure_future(self._wakeup(self.poll_s)))
        try:
            await asyncio.wait(waits, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _reap_if_due(self) -> None:
        """Every ``lease_s / 4``, requeue jobs whose worker stopped heartbeating (any
        process's: that is how a killed worker's job comes back)."""
        now = time.monotonic()
        if now - self._last_reap < self.lease_s / 4:
            return
        self._last_reap = now
        try:
            n = await asyncio.wrap_future(
                self.store.requeue_expired_jobs_async(self.max_attempts))
        except Exception as exc:
            log.error("job_requeue_failed", error=str(exc))
            return
        if n:
            log.warning("jobs_lease_expired", count=n)

    async def _refresh_gauge(self) -> None:
        """Set ``audiosocket_jobs_queued`` from the store once the writes queued so far
        (the job just finished) are committed: counted before, the job still looked
        running and the gauge kept a stale 1 after every job was done."""
        with contextlib.suppress(Exception):
            await self.store.aflush()
            QUEUE.set(await self.store.aread(self.store.pending_job_count))

    async def _heartbeat(self, job_id: int, worker_id: str, step: asyncio.Task[Any],
                         lost: asyncio.Event) -> None:
        """Extend the job's lease every ``lease_s / 3``; if it was taken from us (we were
        frozen past its end), stop the step: its result would be discarded anyway."""
        loop = asyncio.get_running_loop()
        beat_at = loop.time()
        while True:
            # On a fixed schedule, not a fixed pause: a slow beat does not delay the next.
            beat_at = max(beat_at + self.lease_s / 3, loop.time())
            await asyncio.sleep(beat_at - loop.time())
            try:
                held = await asyncio.wrap_future(
                    self.store.extend_lease(job_id, worker_id, self.lease_s))
            except Exception as exc:  # a store hiccup: the lease outlasts two more beats
                log.warning("job_heartbeat_failed", job=job_id, error=str(exc))
                continue
            if not held:
                JOBS_LOST_LEASE.labels(op="heartbeat").inc()
                log.warning("job_lost_lease", op="heartbeat", job=job_id, worker=worker_id)
                lost.set()
                step.cancel()
                return

    async def _finish(self, job_id: int, worker_id: str, status: str, **kw: Any) -> bool:
        """The fenced finish, awaited: False when the job was no longer ours."""
        try:
            return await asyncio.wrap_future(
                self.store.finish_job(job_id, status, worker=worker_id, **kw))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("job_finish_failed", job=job_id, error=str(exc))
            return False

    async def _run(self, job: JobRow, worker_id: str) -> None:
        step, call_uuid, job_id = job.step, job.call_uuid, job.id
        bound = log.bind(call=call_uuid, step=step, attempt=job.attempts, worker=worker_id)
        for dep in DEPENDS.get(step, ()):
            jobs = await self.store.aread(self.store.jobs_for, call_uuid)
            status = next((j.status for j in jobs if j.step == dep), None)
            if status == "failed":
                await self._finish(job_id, worker_id, "failed", error=f"{dep} failed")
                JOBS.labels(step=step, status="failed").inc()
                return
            if status != "done":
                # A transcript takes ~0.3 s: look again soon.
                self.store.defer_job(job_id, 0.25, worker=worker_id)
                return
        started = time.monotonic()
        lost = asyncio.Event()
        work: asyncio.Task[WriteOp | None] = asyncio.create_task(
            getattr(self, f"_step_{step}")(call_uuid), name=f"job-{job_id}")
        beat = asyncio.create_task(self._heartbeat(job_id, worker_id, work, lost))
        try:
            write = await work
        except asyncio.CancelledError:
            if lost.is_set() and not self._stop.is_set():
                JOBS.labels(step=step, status="lost").inc()
                return  # someone else has the job now; logged by the heartbeat
            # Shutting down: hand the job back now rather than when its lease expires.
            self.store.defer_job(job_id, 0.0, worker=worker_id)
            bound.info("job_abandoned")
            raise
        except Exception as exc:
            seconds = time.monotonic() - started
            detail = getattr(exc, "stderr", "") or ""
            error = f"{type(exc).__name__}: {exc}" + (f"\n{detail}" if detail else "")
            if job.attempts < self.max_attempts:
                delay = min(60.0, 2.0 ** job.attempts)
                await self._finish(job_id, worker_id, "failed", error=error[-4000:],
                                   duration=seconds, retry_delay=delay)
                JOBS.labels(step=step, status="retry").inc()
                bound.warning("job_retry", error=str(exc), retry_in=delay)
            else:
                await self._finish(job_id, worker_id, "failed", error=error[-4000:],
                                   duration=seconds)
                JOBS.labels(step=step, status="failed").inc()
                bound.error("job_failed", error=str(exc))
            self._wake.set()
            return
        finally:
            beat.cancel()
        seconds = time.monotonic() - started
        # The step's own store write (if any) commits with the finish, or not at all.
        if not await self._finish(job_id, worker_id, "done", duration=seconds, write=write):
            JOBS.labels(step=step, status="lost").inc()
            return
        JOB_SECONDS.labels(step=step).observe(seconds)
        JOBS.labels(step=step, status="done").inc()
        bound.info("job_done", seconds=round(seconds, 3))
        self._wake.set()

    # -- the steps -------------------------------------------------------------------------

    async def _wav(self, call_uuid: str) -> Path:
        files = await self.store.aread(self.store.recordings_for, call_uuid)
        if "wav" not in files:
            raise FileNotFoundError(f"no recording stored for {call_uuid}")
        # Stored relative to the files root (``data_dir`` here: the shared directory when
        # there is one), or absolute in rows from before: helpers.storage resolves both.
        path = resolve_stored(self.data_dir, files["wav"].path)
        if not await asyncio.to_thread(path.exists):
            raise FileNotFoundError(f"recording {path} is gone")
        return path

    def _out(self, folder: str, call_uuid: str, suffix: str) -> Path:
        # The folders are made once at start-up; this only names the file (the store
        # keeps it relative to the files root: CallStore.files).
        return resolve_stored(self.data_dir, f"{folder}/{call_uuid}{suffix}")

    async def _step_archive_aac(self, call_uuid: str) -> None:
        wav = await self._wav(call_uuid)
        res = await archive_aac(wav, self._out("archive", call_uuid, ".m4a"), self.archive,
                                cap=self.ffmpeg)
        self.store.set_recording(call_uuid, "m4a", str(res.path), res.bytes, res.duration)

    async def _step_archive_mp3(self, call_uuid: str) -> None:
        wav = await self._wav(call_uuid)
        res = await archive_mp3(wav, self._out("archive", call_uuid, ".mp3"), self.archive,
                                cap=self.ffmpeg)
        self.store.set_recording(call_uuid, "mp3", str(res.path), res.bytes, res.duration)

    async def _step_peaks(self, call_uuid: str) -> None:
        wav = await self._wav(call_uuid)
        out = self._out("peaks", call_uuid, ".json")
        await asyncio.to_thread(write_peaks, wav, out)
        self.store.set_recording(call_uuid, "peaks", str(out), out.stat().st_size, None)

    async def _step_transcript(self, call_uuid: str) -> WriteOp:
        if self._stt_factory is None:
            raise RuntimeError("no STT engine configured")
        wav = await self._wav(call_uuid)
        stt = await self._stt_factory()
        segments = await asyncio.to_thread(transcribe_recording, stt, wav, 2, self._stop)
        call = await self.store.aread(self.store.get_call, call_uuid)
        live = [s for s in (call.transcript if call else ()) if s.speaker != "server"]
        for seg in segments:
            # Keep the live latency of the same stretch of speech: it is what the caller
            # experienced; the post-call pass has no latency of its own.
            overlap = [s for s in live if s.start < seg["end"] and s.end > seg["start"]]
            if overlap and overlap[0].latency_ms is not None:
                seg["latency_ms"] = overlap[0].latency_ms
        # Not written here: the fenced finish writes it, so a job that was taken from us
        # (lease lost) adds nothing, and a job done twice replaces rather than doubles.
        return self.store.final_transcript_op(call_uuid, segments)

    async def _step_summary(self, call_uuid: str) -> None:
        if self._summarizer is None:
            if self._summarizer_factory is None:
                raise RuntimeError("no summariser configured")
            self._summarizer = await asyncio.to_thread(self._summarizer_factory)
        call = await self.store.aread(self.store.get_call, call_uuid)
        if call is None:
            raise LookupError(f"call {call_uuid} is not in the store")
        # The caller's words: the prompts are the same on every call and would make every
        # IVR call's summary about the menu (a left message is in the caller's lines too).
        text = " ".join(s.text for s in call.transcript if s.speaker != "server")
        path = (call.ivr.path if call.ivr is not None else None) or None
        summary = await asyncio.to_thread(self._summarizer.summarize, text, path)
        self.store.set_summary(call_uuid, summary.title, summary.text, summary.method,
                               summary.model)
        log.info("summary", call=call_uuid, title=summary.title, method=summary.method)
