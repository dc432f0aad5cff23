"""The live-call hub's pure logic: fan-out, bounded queues, slow readers, the listen-in mix."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from audiosocket.config import Config
from audiosocket.live import DROPPED, LISTENERS, SUBSCRIBERS, ListenError, LiveHub
from audiosocket.root.app import AppContext
from audiosocket.root.services import install_live


def fake_call(call_id: str = "c1", app: str = "ivr", rate: int = 8000) -> Any:
    return SimpleNamespace(id=call_id, app=app, peer="10.0.0.7:4000", meta={},
                           started_at=time.time() - 3, rate=rate, frame_bytes=rate // 25,
                           end_reason=None, ended_at=None, wake_media=lambda: None)


def end(hub: LiveHub, call: Any, reason: str = "remote_closed") -> None:
    call.end_reason, call.ended_at = reason, time.time()
    hub.call_ended(call)


def metric(m: Any, **labels: str) -> float:
    return float((m.labels(**labels) if labels else m)._value.get())


async def test_fan_out_in_order_to_every_subscriber() -> None:
    hub = LiveHub()
    a, b = hub.subscribe(), hub.subscribe()
    assert a is not None and b is not None
    call = fake_call()
    hub.call_started(call)
    entry = hub.attach(call)
    entry.set_path(["greeting"])
    entry.set_path(["greeting"])  # the same node saved again: no event
    entry.add_line(1.234, 2.5, "sales please")
    entry.set_path(["greeting", "menu"])
    end(hub, call)
    for sub in (a, b):
        events = await sub.next(0.1)
        assert events is not None
        assert [e.kind for e in events] == ["call_started", "node", "line", "node",
                                            "call_ended"]
        assert [e.id for e in events] == sorted(e.id for e in events)
        assert events[2].data == {"uuid": "c1", "start": 1.23, "end": 2.5,
                                  "text": "sales please"}
        assert events[3].data["path"] == ["greeting", "menu"]
        assert events[4].data["end_reason"] == "remote_closed"
    assert hub.snapshot()["calls"] == []


def test_snapshot_holds_the_state_of_calls_in_progress() -> None:
    hub = LiveHub()
    call = fake_call()
    entry = hub.attach(call)  # the session attaches before the server announces the call
    entry.tap = True
    assert hub.snapshot()["calls"] == []
    hub.call_started(call)
    entry.set_path(["greeting", "menu"])
    entry.add_line(0.5, 1.0, "hello")
    snap = hub.snapshot()
    (c,) = snap["calls"]
    assert c["uuid"] == "c1" and c["app"] == "ivr" and c["caller"] == "10.0.0.7:4000"
    assert c["node"] == "menu" and c["lines"][0]["text"] == "hello" and c["listenable"]
    assert snap["last_event_id"] == hub.last_id
    # A line recognised after the hang-up does not resurrect the call.
    end(hub, call)
    entry.add_line(2.0, 3.0, "late")
    entry.set_path(["greeting", "menu", "bye"])
    assert hub.snapshot()["calls"] == []


async def test_a_slow_subscriber_is_cut_off_without_slowing_the_others() -> None:
    hub = LiveHub(queue_events=4)
    slow, fast = hub.subscribe(), hub.subscribe()
    assert slow is not None and fast is not None
    before = metric(DROPPED, what="events")
    call = fake_call()
    hub.call_started(call)
    entry = hub.attach(call)
    got = 0
    for n in range(10_000):
        entry.add_line(n, n + 1, f"line {n}")
        if n % 3 == 0:  # the fast one reads as it goes
            events = await fast.next(0)
            assert events is not None
            got += len(events)
    # The slow one held at most its queue, then was cut off; publishing went on.
    assert slow.overflowed and len(slow) <= 4
    assert await slow.next(0) is None  # its stream ends; a reconnect gets a snapshot
    assert metric(DROPPED, what="events") - before == 5  # 4 queued + the one that overflowed
    rest = await fast.next(0)
    assert rest is not None
    assert got + len(rest) == 10_001  # call_started + every line, none lost
    hub.unsubscribe(slow)
    hub.unsubscribe(slow)  # idempotent
    assert hub.subscribers == 1


async def test_subscriber_cap_and_gauge() -> None:
    hub = LiveHub(max_subscribers=2)
    gauge = metric(SUBSCRIBERS)
    a, b = hub.subscribe(), hub.subscribe()
    assert a is not None and b is not None
    assert hub.subscribe() is None
    assert metric(SUBSCRIBERS) - gauge == 2
    hub.unsubscribe(a)
    assert hub.subscribe() is not None
    assert metric(SUBSCRIBERS) - gauge == 2


async def test_heartbeat_timeout_and_shutdown() -> None:
    hub = LiveHub()
    sub = hub.subscribe()
    assert sub is not None
    assert await sub.next(0.05) == []  # nothing happened: the handler sends a heartbeat
    waiter = asyncio.create_task(sub.next(10))
    await asyncio.sleep(0)
    hub.close()
    assert await asyncio.wait_for(waiter, 1) is None


def test_listen_refusals() -> None:
    hub = LiveHub(max_listeners=1)
    with pytest.raises(ListenError) as info:
        hub.listen("nope")
    assert info.value.status == 404
    echo = fake_call("e1", app="echo")
    hub.call_started(echo)  # no session tap: the echo app's media stays in C
    with pytest.raises(ListenError) as info:
        hub.listen("e1")
    assert info.value.status == 409 and "C media path" in info.value.detail
    call = fake_call("r1", app="record")
    hub.attach(call).tap = True
    hub.call_started(call)
    entry, listener = hub.listen("r1")
    with pytest.raises(ListenError) as info:
        hub.listen("r1")
    assert info.value.status == 503
    hub.unlisten(entry, listener)
    hub.unlisten(entry, listener)
    assert hub.listening == 0


async def test_listen_mixes_both_directions_frame_by_frame() -> None:
    hub = LiveHub()
    call = fake_call("r1", app="record")
    entry = hub.attach(call)
    entry.tap = True
    hub.call_started(call)
    gauge = metric(LISTENERS)
    _, listener = hub.listen("r1")
    assert metric(LISTENERS) - gauge == 1
    caller = np.full(160, 1000, "<i2")
    ours = np.full(160, 30000, "<i2")
    entry.heard(caller.tobytes())
    entry.sent(ours.tobytes())  # 31000: summed
    entry.heard((caller * 3).tobytes())
    entry.sent(ours.tobytes())  # 33000: clipped, not wrapped
    entry.sent(None)  # nobody spoke: silence
    entry.heard(caller.tobytes())
    entry.sent(None)  # the caller alone
    pcm = await listener.next(0.1)
    assert pcm is not None
    got = np.frombuffer(pcm, "<i2").reshape(4, 160)
    assert (got[0] == 31000).all() and (got[1] == 32767).all()
    assert (got[2] == 0).all() and (got[3] == 1000).all()
    # The call ends: what is queued is delivered, then the stream ends.
    entry.sent(None)
    end(hub, call)
    assert await listener.next(0.1) == bytes(320)
    assert await listener.next(0.1) is None
    hub.unlisten(entry, listener)
    assert metric(LISTENERS) == gauge


async def test_a_lagging_listener_skips_old_audio_and_the_caller_backlog_is_bounded() -> None:
    hub = LiveHub()
    call = fake_call("r1", app="record")
    entry = hub.attach(call)
    entry.tap = True
    hub.call_started(call)
    _, listener = hub.listen("r1")
    before = metric(DROPPED, what="audio_frames")
    # A burst of 30 caller frames (a network stall released): only the last 10 are kept.
    for n in range(30):
        entry.heard(np.full(160, n, "<i2").tobytes())
    for _ in range(70):  # 70 ticks unread: the listener keeps the newest 50
        entry.sent(None)
    assert len(listener) == 50 and listener.skipped == 20
    assert metric(DROPPED, what="audio_frames") - before == 20
    pcm = await listener.next(0)
    assert pcm is not None
    frames = np.frombuffer(pcm, "<i2").reshape(50, 160)
    # The 20 skipped were the oldest (the burst among them): what is left is silence.
    assert (frames[:, 0] == 0).all()


def test_the_composition_root_makes_one_hub_and_observes_calls_with_it() -> None:
    ctx = AppContext(Config())
    hub = install_live(ctx)
    assert install_live(ctx) is hub and ctx.services.live is hub
    assert ctx.observers.count(hub) == 1
