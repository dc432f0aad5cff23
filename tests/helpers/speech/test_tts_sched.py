"""The TTS scheduler's ordering and admission logic, with plain functions as 'renders'."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from helpers.speech.tts_sched import SynthesisScheduler


@pytest.fixture
def sched() -> Iterator[SynthesisScheduler]:
    s = SynthesisScheduler(1, safety=1.0, margin_s=0.0, base_s=0.0, per_char_s=0.01,
                           audio_per_char_s=0.05)
    yield s
    s.shutdown()


def blocker(s: SynthesisScheduler) -> threading.Event:
    """Occupy the (single) worker until the event is set."""
    gate = threading.Event()
    s.submit(gate.wait, 5)
    deadline = time.monotonic() + 5
    while s.idle_besides_me() and time.monotonic() < deadline:
        time.sleep(0.001)
    return gate


def test_continuations_go_first_by_deadline_then_prompts_in_order(
    sched: SynthesisScheduler,
) -> None:
    order: list[str] = []
    gate = blocker(sched)
    old = sched.new_prompt(["a" * 10, "b" * 10, "c" * 10])
    new = sched.new_prompt(["x" * 10, "y" * 10])
    futs = [sched.add_sentence(new, 0, lambda: order.append("new0") or b""),
            sched.add_sentence(old, 1, lambda: order.append("old1") or b""),
            sched.add_sentence(old, 2, lambda: order.append("old2") or b""),
            sched.add_sentence(new, 1, lambda: order.append("new1") or b"")]
    # old is playing 10 s of audio: its sentences become continuations with deadlines.
    assert sched.try_admit(old, 1, 10.0)
    gate.set()
    for f in futs:
        f.result(5)
    assert order == ["old1", "old2", "new0", "new1"]


def test_admission_needs_every_sentence_in_time(sched: SynthesisScheduler) -> None:
    gate = blocker(sched)  # the worker is busy: its job is expected to end in ~0.05 s
    plan = sched.new_prompt(["x" * 10, "y" * 100])  # second: 1.0 s of work
    sched.add_sentence(plan, 1, lambda: b"")
    assert not sched.try_admit(plan, 1, 0.5)  # 0.5 s of audio ahead: too little
    assert not plan.admitted
    assert sched.try_admit(plan, 1, 2.0)  # 2 s ahead: fine
    assert plan.admitted and plan.jobs[1].deadline is not None
    gate.set()


def test_admitted_prompts_keep_their_guarantee(sched: SynthesisScheduler) -> None:
    gate = blocker(sched)
    first = sched.new_prompt(["a", "b" * 100])  # 1.0 s of work due in 1.2 s
    sched.add_sentence(first, 1, lambda: b"")
    assert sched.try_admit(first, 1, 1.2)
    # A second prompt with the same need would push one of them past its deadline.
    second = sched.new_prompt(["c", "d" * 100])
    sched.add_sentence(second, 1, lambda: b"")
    assert not sched.try_admit(second, 1, 1.2)
    # With more audio ahead it fits after the first one.
    assert sched.try_admit(second, 1, 2.5)
    gate.set()


def test_estimated_audio_sets_later_deadlines(sched: SynthesisScheduler) -> None:
    gate = blocker(sched)
    plan = sched.new_prompt(["a", "b" * 10, "c" * 10])
    sched.add_sentence(plan, 1, lambda: b"")
    sched.add_sentence(plan, 2, lambda: b"")
    assert sched.try_admit(plan, 1, 0.5, known_s={2: 9.0}, pause_s=0.1)
    d1, d2 = plan.jobs[1].deadline, plan.jobs[2].deadline
    assert d1 is not None and d2 is not None
    # Sentence 2 is due after sentence 1 has played: its estimate (10 chars, 0.85 x
    # 0.05 s/char) plus the pause.
    assert d2 - d1 == pytest.approx(0.85 * 0.05 * 10 + 0.1, abs=1e-6)
    gate.set()


def test_cancel_drops_queued_sentences(sched: SynthesisScheduler) -> None:
    gate = blocker(sched)
    ran: list[int] = []
    plan = sched.new_prompt(["a", "b", "c"])
    futs = [sched.add_sentence(plan, i, lambda i=i: ran.append(i) or b"") for i in (1, 2)]
    sched.cancel(plan)
    gate.set()
    sched.submit(lambda: None).result(5)  # everything queued before has been looked at
    assert ran == [] and all(f.cancelled() for f in futs)


def test_the_cost_model_learns_from_loaded_renders_only(sched: SynthesisScheduler) -> None:
    before = sched.estimate("x" * 100)
    sched.observe(100, 3.0, 6.0, solo=True)  # a solo render teaches the speech rate only
    assert sched.estimate("x" * 100) == before
    assert sched.audio_per_char_s > 0.05
    for _ in range(30):
        sched.observe(100, 3.0, 6.0, solo=False)  # 0.03 s a character under load
    assert sched.estimate("x" * 100) == pytest.approx(3.0, rel=0.01)


def test_errors_reach_the_waiter_and_shutdown_cancels() -> None:
    s = SynthesisScheduler(1)
    plan = s.new_prompt(["a"])
    fut = s.add_sentence(plan, 0, lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    with pytest.raises(ZeroDivisionError):
        fut.result(5)
    gate = blocker(s)
    queued = s.submit(lambda: None)
    s.shutdown()
    gate.set()
    assert queued.cancelled()
    late = s.submit(lambda: None)
    with pytest.raises(RuntimeError):
        late.result(1)
