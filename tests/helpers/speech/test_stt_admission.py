"""STT admission by deadline (issue 16.6): earliest deadline first, drops only what cannot
make its deadline, counted by reason; live speech ahead of post-call work for AI slots.

A fake backend stands in for Whisper: these test the scheduling, not the recognition.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from helpers import ai
from helpers.speech.stt import (
    RawResult,
    Segment,
    SttCallback,
    SttDropped,
    SttEngine,
    SttOutcome,
)
from helpers.speech.vad import Utterance


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value(
        "audiosocket_stt_utterances_dropped_total", {"reason": reason}
    ) or 0.0


class HeldBackend:
    """Returns a fixed text; holds every call while ``release`` is clear."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.release.set()

    def recognize(self, audio: np.ndarray) -> RawResult:
        self.calls += 1
        self.release.wait(10)
        return RawResult("sales please", -0.2, 0.01, 3)


def _voiced(seconds: float, rate: int = 8000) -> Utterance:
    """An utterance the VAD gate lets through (voiced_ms given, so no VAD runs)."""
    pcm = (np.sin(np.arange(int(seconds * rate)) / 3) * 8000).astype("<i2").tobytes()
    return Utterance(pcm, rate, 1.0, 1.0 + seconds, False, 1.0, seconds * 1000)


class Results:
    """Callbacks by label, in the order they arrive."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.outcomes: dict[str, SttOutcome] = {}
        self.lock = threading.Lock()

    def cb(self, label: str) -> SttCallback:
        def cb(seg: Segment | None, outcome: SttOutcome) -> None:
            with self.lock:
                self.order.append(label)
                self.outcomes[label] = outcome
        return cb

    def wait(self, n: int, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while len(self.order) < n and time.monotonic() < end:
            time.sleep(0.01)
        assert len(self.order) >= n, self.order


def _started(workers: int = 1, **kw: Any) -> tuple[SttEngine, HeldBackend]:
    fake = HeldBackend()
    eng = SttEngine(backend=fake, workers=workers, **kw)
    eng.start()  # the warm-up call goes through
    return eng, fake


def _hold_worker(eng: SttEngine, fake: HeldBackend, res: Results) -> None:
    """Give the single worker a job and keep it busy until ``fake.release`` is set."""
    fake.release.clear()
    calls = fake.calls
    assert eng.submit("c0", _voiced(0.5), res.cb("busy"))
    end = time.monotonic() + 5
    while fake.calls == calls and time.monotonic() < end:
        time.sleep(0.005)


def test_eight_answers_at_once_are_all_admitted() -> None:
    # The old capacity formula gave floor(4 / (15 × 0.15)) = 1: seven of these were dropped.
    eng, fake = _started(workers=2, rtf_estimate=0.15)
    res = Results()
    before = sum(_dropped(r) for r in ("deadline", "queue_bytes", "queue_full"))
    fake.release.clear()
    now = time.monotonic()
    assert all(eng.submit(f"c{i}", _voiced(1.2), res.cb(f"a{i}"), now, deadline_s=3.0)
               for i in range(8))
    fake.release.set()
    res.wait(8)
    eng.stop()
    assert not any(isinstance(o, SttDropped) for o in res.outcomes.values())
    assert sum(_dropped(r) for r in ("deadline", "queue_bytes", "queue_full")) == before


def test_earliest_deadline_first_puts_answers_before_live_lines() -> None:
    eng, fake = _started(workers=1, rtf_estimate=0.1)
    res = Results()
    _hold_worker(eng, fake, res)
    now = time.monotonic()
    for i in range(3):
        assert eng.submit("live", _voiced(2.0), res.cb(f"live{i}"), now, deadline_s=10.0)
    assert eng.submit("ivr", _voiced(1.0), res.cb("answer1"), now, deadline_s=3.0)
    assert eng.submit("ivr", _voiced(1.0), res.cb("answer0"), now - 0.5, deadline_s=3.0)
    fake.release.set()
    res.wait(6)
    eng.stop()
    # The answer whose speech ended first is due first; live lines keep arrival order.
    assert res.order == ["busy", "answer0", "answer1", "live0", "live1", "live2"]


def test_drops_only_what_cannot_meet_its_deadline() -> None:
    # RTF 1.0: 2 s of audio costs an estimated 2 s on the single worker.
    eng, fake = _started(workers=1, rtf_estimate=1.0)
    res = Results()
    _hold_worker(eng, fake, res)  # 0.5 s estimated, running
    before = _dropped("deadline")
    now = time.monotonic()
    assert eng.submit("a", _voiced(2.0), res.cb("fits"), now, deadline_s=3.0)  # ends ~2.5 s
    # Behind it this one would end at ~4.5 s: it cannot make 3 s, so it goes at once, and
    # says why; it does not push the admitted one out.
    assert not eng.submit("b", _voiced(2.0), res.cb("late"), now, deadline_s=3.0)
    assert res.outcomes["late"] == SttDropped(res.outcomes["late"].utterance_id, "deadline")
    assert _dropped("deadline") == before + 1
    # One with room in its deadline is still admitted behind both.
    assert eng.submit("c", _voiced(2.0), res.cb("roomy"), now, deadline_s=10.0)
    # An earlier deadline that would make an admitted one miss is refused, too.
    assert not eng.submit("d", _voiced(1.0), res.cb("jumper"), now, deadline_s=2.9)
    fake.release.set()
    res.wait(5)
    eng.stop()
    assert res.order[:2] == ["late", "jumper"]  # refused at once, on the submitting thread
    assert res.order[2:] == ["busy", "fits", "roomy"]
    assert eng.stats.dropped == 2


def test_the_estimate_follows_the_measured_rtf() -> None:
    eng, fake = _started(workers=1, rtf_estimate=1.0)
    res = Results()
    _hold_worker(eng, fake, res)
    now = time.monotonic()
    assert eng.submit("a", _voiced(2.0), res.cb("a"), now, deadline_s=3.0)
    assert not eng.submit("b", _voiced(2.0), res.cb("b"), now, deadline_s=3.0)
    eng._note_rtf(0.5, 10.0)  # measured: RTF 0.05 (EMA from the first sample)
    assert eng.submit("c", _voiced(2.0), res.cb("c"), now, deadline_s=3.0)
    fake.release.set()
    res.wait(4)
    eng.stop()


def test_stop_drops_waiting_utterances_with_reason_stopped() -> None:
    eng, fake = _started(workers=1)
    res = Results()
    _hold_worker(eng, fake, res)
    before = _dropped("stopped")
    assert eng.submit("a", _voiced(1.0), res.cb("waiting"), deadline_s=3.0)
    threading.Timer(0.2, fake.release.set).start()
    eng.stop()
    res.wait(2)
    assert res.outcomes["waiting"] == SttDropped(2, "stopped")  # 1 is the busy one
    assert _dropped("stopped") == before + 1


def test_byte_bound_still_drops_the_oldest() -> None:
    eng, fake = _started(workers=1, queue_max_bytes=3 * 16000)
    res = Results()
    _hold_worker(eng, fake, res)
    before = _dropped("queue_bytes")
    for i in range(4):  # 16 000 bytes each
        assert eng.submit("a", _voiced(1.0), res.cb(f"u{i}"), deadline_s=30.0) is True
    assert eng.queue_depth == 3 and res.order == ["u0"]
    assert res.outcomes["u0"] == SttDropped(2, "queue_bytes")  # 1 is the busy one
    assert _dropped("queue_bytes") == before + 1
    fake.release.set()
    res.wait(5)
    eng.stop()


def test_live_speech_takes_an_ai_slot_before_post_call_work() -> None:
    slots = ai.AiSlots(1)
    order: list[str] = []
    slots.acquire()  # a post-call job is running
    batch = threading.Thread(target=lambda: (slots.acquire(), order.append("post-call"),
                                             slots.release()))
    batch.start()
    time.sleep(0.1)  # the post-call waiter queued first
    live = threading.Thread(target=lambda: (slots.acquire(live=True), order.append("live"),
                                            time.sleep(0.05), slots.release()))
    live.start()
    time.sleep(0.1)
    slots.release()
    batch.join(5)
    live.join(5)
    assert order == ["live", "post-call"]
    with pytest.raises(ValueError):
        slots.release()
    with slots.live():
        assert not slots.acquire(blocking=False)
    with slots:
        assert not slots.acquire(live=True, blocking=False)


def test_workers_take_live_slots_and_post_call_does_not() -> None:
    seen: list[bool] = []
    real = ai.AiSlots

    class Spy(real):  # type: ignore[misc, valid-type]
        def acquire(self, blocking: bool = True, timeout: float | None = None, *,
                    live: bool = False) -> bool:
            seen.append(live)
            return super().acquire(blocking, timeout, live=live)

    eng, _fake = _started(workers=1, ai=Spy(2))
    res = Results()
    eng.submit("a", _voiced(1.0), res.cb("live"))
    res.wait(1)
    eng.transcribe(_voiced(1.0).pcm, 8000, voiced=1000.0)  # as the post-call step does
    eng.stop()
    assert seen == [True, False]
