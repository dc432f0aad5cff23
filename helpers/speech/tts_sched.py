"""Deadline-aware scheduling of TTS sentence syntheses, and admission of prompts to stream.

Why this exists: a prompt is rendered sentence by sentence so its first sentence can play
while the next one renders. That is safe while the CPU keeps up; with many cold prompts at
once it does not, and a prompt that has started playing then runs dry between sentences
(an underrun: a gap inside the prompt that the caller hears). A jitter buffer solves the
same problem for network audio by delaying the start of playout until what follows will
arrive in time; this module does that for synthesis:

* Every sentence is a job on ``workers`` threads (never the event loop). Jobs come in three
  classes, served in this order:

  0. *continuations*: later sentences of a prompt that is already playing. Each has a
     deadline (when the audio before it will have been played) and they run earliest
     deadline first;
  1. *new prompts*: first sentences, and the rest of prompts not yet playing, first come
     first served by prompt (an older prompt's sentences before a newer prompt's);
  2. *background*: pre-warming the cache and anything else without a caller waiting.

* A prompt starts to play (is *admitted*) only when a feasibility test says every remaining
  sentence will be ready before its deadline: the admitted continuations of every playing
  prompt, plus this prompt's, are laid out earliest-deadline-first on the workers (each
  worker free when its running job is expected to finish) with estimated costs times a
  safety factor. If that fails the prompt waits, its sentences keep rendering as class 1,
  and the test is tried again as each one completes; once all are rendered it starts
  regardless. So a prompt that starts never underruns while the estimates hold, and under
  overload the cost shows up where it is honest: as a later start (time to first audio),
  not as gaps in the middle of speech.

* Costs are estimated per sentence as ``base + per_char * len(text)`` seconds of one worker.
  ``per_char`` is learned (exponential average) from measured renders, so a slower machine
  or a busy one raises it; ``base`` covers the fixed per-run overhead of short sentences.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

__all__ = ["PromptPlan", "SynthesisScheduler"]

CONTINUATION, NEW_PROMPT, BACKGROUND = 0, 1, 2

ADMISSIONS = Counter(
    "audiosocket_tts_admissions_total",
    "Prompts started before all their sentences were rendered (streamed) or after (whole)",
    ["how"],
)
ADMISSION_WAIT = Histogram(
    "audiosocket_tts_admission_wait_seconds",
    "Time a prompt's first sentence was ready but held back until the rest would keep up",
    buckets=(0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
LATE = Counter(
    "audiosocket_tts_continuations_late_total",
    "Admitted continuation sentences that finished after their deadline (estimate missed)",
)


@dataclass(eq=False)
class _Job:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]
    cost: float
    klass: int
    order: tuple[float, int, int]
    index: int = 0
    deadline: float | None = None
    started: float | None = None


@dataclass(eq=False)
class PromptPlan:
    """One prompt's sentences as the scheduler sees them (created by ``new_prompt``)."""

    seq: int
    sentences: Sequence[str]
    jobs: dict[int, _Job] = field(default_factory=dict)
    admitted: bool = False


class SynthesisScheduler:
    """Runs sentence syntheses on worker threads in deadline order; admits prompts to stream.

    ``workers`` threads (each runs one synthesis at a time). ``safety`` multiplies every
    cost estimate in the admission test; ``margin_s`` is kept free before each deadline for
    the thread hop and the clock's next tick. ``audio_per_char`` (seconds of speech per
    character, learned too) estimates how long unrendered sentences will play.
    """

    def __init__(
        self,
        workers: int,
        *,
        safety: float = 1.5,
        margin_s: float = 0.1,
        base_s: float = 0.05,
        per_char_s: float = 0.009,
        audio_per_char_s: float = 0.06,
        name: str = "tts",
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.safety = safety
        self.margin_s = margin_s
        self.base_s = base_s
        self.per_char_s = per_char_s
        self.audio_per_char_s = audio_per_char_s
        self._cond = threading.Condition()
        self._queue: list[tuple[tuple[int, float, int, int, int], int, _Job]] = []
        self._stale: set[int] = set()  # ids of heap entries superseded by a re-priority
        self._running: list[_Job] = []
        self._seq = itertools.count()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    # -- cost model -----------------------------------------------------------------------

    def estimate(self, text: str) -> float:
        """Seconds of one worker to render ``text`` (the learned model)."""
        return self.base_s + self.per_char_s * len(text)

    def estimate_audio(self, text: str) -> float:
        """Seconds of speech ``text`` will probably give (low side: deadlines come early)."""
        return 0.85 * self.audio_per_char_s * len(text)

    def observe(self, chars: int, seconds: float, audio_seconds: float, *, solo: bool) -> None:
        """Feed one measured render back into the model. Renders that had the machine to
        themselves (``solo``: more threads) are not costs under load, so they only teach
        the speech rate."""
        if chars <= 0:
            return
        with self._cond:
            if audio_seconds > 0:
                self.audio_per_char_s += 0.2 * (audio_seconds / chars - self.audio_per_char_s)
            if not solo:
                sample = max(0.0, seconds - self.base_s) / chars
                self.per_char_s += 0.2 * (sample - self.per_char_s)

    # -- submitting -----------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` as background work (cache pre-warming and the like)."""
        job = _Job(lambda: fn(*args), concurrent.futures.Future(), 0.0, BACKGROUND,
                   (0.0, next(self._seq), 0))
        self._push(job)
        return job.future

    def new_prompt(self, sentences: Sequence[str]) -> PromptPlan:
        """Start planning a prompt; add its sentences with :meth:`add_sentence`."""
        return PromptPlan(next(self._seq), sentences)

    def add_sentence(
        self, plan: PromptPlan, index: int, fn: Callable[[], bytes], *, cost: float | None = None
    ) -> concurrent.futures.Future[bytes]:
        """Queue sentence ``index`` of ``plan`` (class *new prompt* until the plan is admitted)."""
        text = plan.sentences[index]
        job = _Job(fn, concurrent.futures.Future(), self.estimate(text) if cost is None else cost,
                   NEW_PROMPT, (0.0, plan.seq, index), index)
        plan.jobs[index] = job
        self._push(job)
        return job.future

    def idle_besides_me(self) -> bool:
        """Nothing runs or waits except the caller's own job (if the caller is a worker):
        a render may then use every core."""
        with self._cond:
            mine = threading.current_thread() in self._threads
            return len(self._running) - (1 if mine else 0) <= 0 and not self._live_queue()

    # -- admission ------------------------------------------------------------------------

    def try_admit(
        self,
        plan: PromptPlan,
        first: int,
        buffered_s: float,
        *,
        known_s: dict[int, float] | None = None,
        pause_s: float = 0.0,
        start_at: float | None = None,
    ) -> bool:
        """Admit ``plan`` to play now if sentences ``first..`` will each be ready in time.

        ``buffered_s`` is the audio rendered and about to play (the sentences before
        ``first``, pauses included); ``known_s`` gives the length of later sentences that are
        already rendered (the others are estimated); ``pause_s`` follows each sentence.
        Playback is assumed to begin at ``start_at`` (default: now). On success the
        remaining sentences become continuations with deadlines.
        """
        known = known_s or {}
        now = time.monotonic()
        start = now if start_at is None else start_at
        with self._cond:
            deadlines: dict[int, float] = {}
            t = start + buffered_s
            for i in range(first, len(plan.sentences)):
                deadlines[i] = t
                t += known.get(i, self.estimate_audio(plan.sentences[i])) + pause_s
            remaining = [job for i, job in plan.jobs.items()
                         if i >= first and not job.future.done()]
            work = [(job.deadline or now, job.cost) for job in self._admitted_waiting()]
            work += [(deadlines[j.index], j.cost) for j in remaining if j.started is None]
            ends = [(deadlines[j.index], self._expected_end(j, now))
                    for j in remaining if j.started is not None]
            if not self._feasible(now, work, ends):
                return False
            plan.admitted = True
            for job in remaining:
                job.deadline = deadlines[job.index]
                if job.started is None:
                    job.klass = CONTINUATION
                    job.order = (job.deadline, plan.seq, job.index)
                    self._push_locked(job)  # re-queued at its new priority; old entry stale
        ADMISSIONS.labels(how="streamed").inc()
        return True

    def cancel(self, plan: PromptPlan) -> None:
        """The prompt is no longer wanted (barge-in, hang-up): drop its queued sentences.
        A sentence already rendering finishes (into the cache)."""
        with self._cond:
            for job in plan.jobs.values():
                if job.started is None:
                    job.future.cancel()

    def _admitted_waiting(self) -> list[_Job]:
        return [job for _, ident, job in self._queue
                if ident not in self._stale and job.klass == CONTINUATION
                and job.started is None and not job.future.done()]

    def _expected_end(self, job: _Job, now: float) -> float:
        # A render past its estimate is assumed nearly done: it cannot be interrupted anyway.
        assert job.started is not None
        return now + max(0.05, job.cost * self.safety - (now - job.started))

    def _feasible(self, now: float, work: list[tuple[float, float]],
                  ends: list[tuple[float, float]]) -> bool:
        """Earliest-deadline-first list schedule of ``work`` (deadline, cost) on the workers,
        each free when its running render ends; ``ends`` (deadline, expected end) are this
        prompt's sentences already rendering."""
        if any(end > deadline - self.margin_s for deadline, end in ends):
            return False
        free = [self._expected_end(job, now) for job in self._running]
        free += [now] * max(0, self.workers - len(free))
        heapq.heapify(free)
        for deadline, cost in sorted(work):
            done = heapq.heappop(free) + cost * self.safety
            if done > deadline - self.margin_s:
                return False
            heapq.heappush(free, done)
        return True

    # -- the queue ------------------------------------------------------------------------

    def _push(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                job.future.set_exception(RuntimeError("TTS scheduler is shut down"))
                return
            self._push_locked(job)

    def _push_locked(self, job: _Job) -> None:
        # Each push gets a fresh entry id; an earlier entry of the same job turns stale.
        for _, ident, queued in self._queue:
            if queued is job and ident not in self._stale:
                self._stale.add(ident)
        ident = next(self._seq)
        heapq.heappush(self._queue, ((job.klass, *job.order, ident), ident, job))
        self._cond.notify()

    def _live_queue(self) -> bool:
        return any(ident not in self._stale and not job.future.done()
                   for _, ident, job in self._queue)

    def _take(self) -> _Job | None:
        with self._cond:
            while True:
                while self._queue:
                    _, ident, job = heapq.heappop(self._queue)
                    if ident in self._stale:
                        self._stale.discard(ident)
                        continue
                    if not job.future.set_running_or_notify_cancel():
                        continue  # cancelled while queued
                    job.started = time.monotonic()
                    self._running.append(job)
                    return job
                if self._closed:
                    return None
                self._cond.wait()

    def _worker(self) -> None:
        while (job := self._take()) is not None:
            try:
                result = job.fn()
            except BaseException as exc:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
            finally:
                finished = time.monotonic()
                with self._cond:
                    self._running.remove(job)
                if job.deadline is not None and finished > job.deadline:
                    LATE.inc()

    def shutdown(self) -> None:
        """Stop the workers after their current job; queued jobs are cancelled."""
        with self._cond:
            self._closed = True
            for _, _, job in self._queue:
                job.future.cancel()
            self._queue.clear()
            self._stale.clear()
            self._cond.notify_all()

