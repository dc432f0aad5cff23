"""The sans-I/O call state machine, driven by events only: no sockets, no loop, no clock."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket import call_state
from audiosocket.call import END_REASONS
from audiosocket.call_state import (
    RATE_PROBE_S,
    Action,
    Admission,
    Admit,
    BadFrame,
    CallState,
    CancelTimer,
    Close,
    Connected,
    ConnectionLost,
    DeliverAudio,
    DeliverDtmf,
    EndCall,
    EndRequested,
    Event,
    Finished,
    LocalError,
    NonCall,
    OpenCall,
    PeerError,
    ProtocolViolation,
    RateSeen,
    Refuse,
    SetTimer,
    StartApp,
    State,
    Timer,
    TimerFired,
    UlawDetected,
    frame_event,
)
from audiosocket.protocol import (
    AUDIO_KINDS,
    Audio,
    CallId,
    Dtmf,
    ErrorFrame,
    Hangup,
    Kind,
)
from audiosocket.ulaw import lin2ulaw, ulaw2lin

U = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
DETECT = 10  # the config's default ulaw_detect_frames


def new(detect: int = DETECT) -> CallState:
    m = CallState(uuid_timeout_s=5.0, ulaw_detect_frames=detect)
    assert m.handle(Connected()) == [SetTimer(Timer.UUID, 5.0)]
    return m


def probing(detect: int = DETECT) -> CallState:
    m = new(detect)
    assert m.handle(CallId(U)) == [CancelTimer(Timer.UUID), Admit(U)]
    assert m.handle(Admission(overloaded=False, duplicate_live=False)) == [
        OpenCall(U), SetTimer(Timer.PROBE, RATE_PROBE_S)
    ]
    assert m.state is State.PROBING
    return m


def in_call(rate: int = 8000) -> CallState:
    m = probing()
    m.handle(Audio(bytes(rate // 25), rate))
    assert m.state is State.IN_CALL
    return m


def voice(samples: int, seed: int = 3) -> bytes:
    """Low-passed noise with a syllable-rate envelope: speech-like for the μ-law test."""
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.standard_normal(samples + 7), np.ones(8) / 8, mode="valid")
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(samples) / 8000)
    return (x / np.abs(x).max() * 3000 * env).astype("<i2").tobytes()


def chunks(data: bytes, n: int = 160) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data) - n + 1, n)]


# -- before the UUID ---------------------------------------------------------------------


def test_uuid_timeout_is_a_non_call_refused_with_a_hangup() -> None:
    m = new()
    assert m.handle(TimerFired(Timer.UUID)) == [NonCall("uuid_timeout"), Close(True)]
    assert m.state is State.CLOSED and m.ended
    assert m.handle(CallId(U)) == []  # too late: nothing happens any more


@pytest.mark.parametrize(("error", "reason"), [(False, "closed_before_uuid"),
                                               (True, "reset_before_uuid")])
def test_close_before_uuid_is_a_non_call(error: bool, reason: str) -> None:
    m = new()
    # The peer is gone: no hang-up frame, no close.
    assert m.handle(ConnectionLost(error)) == [CancelTimer(Timer.UUID), NonCall(reason)]
    assert m.state is State.CLOSED
    assert m.handle(TimerFired(Timer.UUID)) == []  # a callback that raced the cancel


@pytest.mark.parametrize("frame", [Audio(bytes(320), 8000), Dtmf("1"), Hangup(),
                                   ErrorFrame(1)])
def test_any_frame_before_the_uuid_is_a_protocol_error(frame: Any) -> None:
    m = new()
    assert m.handle(frame) == [
        ProtocolViolation("no_uuid", f"{type(frame).__name__} frame before the UUID"),
        CancelTimer(Timer.UUID), NonCall("protocol_error"), Close(True),
    ]


def test_garbage_before_the_uuid_is_refused() -> None:
    m = new()
    bad = frame_event(0x47, b"ET / HTTP/1.1")  # "GET / ..." read as a header
    assert isinstance(bad, BadFrame) and bad.error_type == "unknown_kind"
    actions = m.handle(bad)
    assert actions[0] == ProtocolViolation("unknown_kind", bad.message)
    assert actions[1:] == [CancelTimer(Timer.UUID), NonCall("protocol_error"), Close(True)]


def test_shutdown_before_the_uuid_closes_with_a_hangup_and_no_end_reason() -> None:
    m = new()
    assert m.handle(EndRequested("shutdown")) == [CancelTimer(Timer.UUID), Close(True)]
    assert m.state is State.CLOSED


@pytest.mark.parametrize(
    ("overloaded", "duplicate", "reason"),
    [(True, False, "overload"), (False, True, "duplicate_uuid"), (True, True, "overload")],
)
def test_refusals(overloaded: bool, duplicate: bool, reason: str) -> None:
    m = new()
    m.handle(CallId(U))
    assert m.handle(Admission(overloaded, duplicate)) == [Refuse(reason), Close(True)]
    assert m.state is State.CLOSED
    assert m.handle(ConnectionLost()) == []  # no non-call counted on top of the refusal


def test_an_unanswered_admit_is_the_adapters_bug() -> None:
    m = new()
    m.handle(CallId(U))
    with pytest.raises(LocalError):
        m.handle(Audio(bytes(320), 8000))
    with pytest.raises(LocalError):
        new().handle(Admission(False, False))


# -- the rate probe ----------------------------------------------------------------------


@pytest.mark.parametrize("rate", sorted(AUDIO_KINDS.values()))
def test_the_first_audio_frame_sets_the_rate_and_starts_the_app(rate: int) -> None:
    m = probing()
    pcm = bytes(range(256)) * (rate // 6400 + 1)
    pcm = pcm[: rate // 25]
    assert m.handle(Audio(pcm, rate)) == [
        RateSeen(rate), CancelTimer(Timer.PROBE), StartApp(rate, False), DeliverAudio(pcm, rate)
    ]
    assert m.state is State.IN_CALL
    nxt = Audio(b"\x01\x02" * 7, rate)  # any size once in the call
    assert m.handle(nxt) == [DeliverAudio(nxt.payload, rate)]


def test_no_audio_within_the_probe_starts_at_8k_without_a_rate_seen() -> None:
    m = probing()
    assert m.handle(TimerFired(Timer.PROBE)) == [StartApp(8000, False)]
    assert m.state is State.IN_CALL
    assert m.handle(TimerFired(Timer.PROBE)) == []  # fires once


def test_keys_before_the_app_starts_are_released_in_order_after_it() -> None:
    m = probing()
    assert m.handle(Dtmf("1")) == [] and m.handle(Dtmf("#")) == [] and m.handle(Dtmf("9")) == []
    actions = m.handle(TimerFired(Timer.PROBE))
    assert actions == [StartApp(8000, False), DeliverDtmf("1"), DeliverDtmf("#"), DeliverDtmf("9")]
    assert m.handle(Dtmf("5")) == [DeliverDtmf("5")]


# -- μ-law or 10 ms slin -----------------------------------------------------------------


def test_ulaw_frames_are_detected_decoded_and_released_in_order() -> None:
    m = probing()
    frames = chunks(lin2ulaw(voice(1600)))
    first = m.handle(Audio(frames[0], 8000))
    assert first == [RateSeen(8000)]  # held: one frame does not decide
    m.handle(Dtmf("4"))
    actions = m.handle(Audio(frames[1], 8000))  # speech is sure after two frames
    assert actions == [
        UlawDetected(), CancelTimer(Timer.PROBE), StartApp(8000, True),
        DeliverAudio(ulaw2lin(frames[0]), 8000), DeliverAudio(ulaw2lin(frames[1]), 8000),
        DeliverDtmf("4"),
    ]
    assert m.ulaw
    # Later frames are decoded too, whatever their size.
    assert m.handle(Audio(frames[2][:24], 8000)) == [DeliverAudio(ulaw2lin(frames[2][:24]), 8000)]


def test_10ms_slin_frames_are_slin() -> None:
    m = probing()
    frames = chunks(voice(1600))
    assert m.handle(Audio(frames[0], 8000)) == [RateSeen(8000)]
    assert m.handle(Audio(frames[1], 8000)) == [
        CancelTimer(Timer.PROBE), StartApp(8000, False),
        DeliverAudio(frames[0], 8000), DeliverAudio(frames[1], 8000),
    ]
    assert not m.ulaw
    assert m.handle(Audio(frames[2], 8000)) == [DeliverAudio(frames[2], 8000)]


def test_slin_silence_in_10ms_frames_is_slin_and_ulaw_silence_is_ulaw() -> None:
    slin = probing()
    slin.handle(Audio(bytes(160), 8000))
    assert StartApp(8000, False) in slin.handle(Audio(bytes(160), 8000))
    ulaw = probing()
    ulaw.handle(Audio(b"\xff" * 160, 8000))
    assert StartApp(8000, True) in ulaw.handle(Audio(b"\xff" * 160, 8000))


def test_ambiguous_frames_wait_for_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(call_state, "ulaw_odds", lambda payload: 1.2)  # a loud tone's score
    m = probing(detect=4)
    frames = chunks(lin2ulaw(voice(1600)))
    for f in frames[:3]:
        assert not any(isinstance(a, StartApp) for a in m.handle(Audio(f, 8000)))
    actions = m.handle(Audio(frames[3], 8000))
    assert actions[:3] == [UlawDetected(), CancelTimer(Timer.PROBE), StartApp(8000, True)]
    assert [a for a in actions if isinstance(a, DeliverAudio)] == [
        DeliverAudio(ulaw2lin(f), 8000) for f in frames[:4]
    ]


def test_probe_timeout_decides_on_the_frames_held_so_far(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(call_state, "ulaw_odds", lambda payload: 1.0)
    m = probing()
    frames = chunks(voice(800))
    for f in frames[:3]:
        m.handle(Audio(f, 8000))
    actions = m.handle(TimerFired(Timer.PROBE))
    assert actions[0] == StartApp(8000, False)  # real content test: slin speech
    assert actions[1:] == [DeliverAudio(f, 8000) for f in frames[:3]]


def test_a_whole_frame_after_held_ones_starts_slin_and_keeps_the_order() -> None:
    m = probing()
    held, whole = bytes(160), b"\x05\x00" * 160
    m.handle(Audio(held, 8000))
    assert m.handle(Audio(whole, 8000)) == [
        CancelTimer(Timer.PROBE), StartApp(8000, False),
        DeliverAudio(held, 8000), DeliverAudio(whole, 8000),
    ]


# -- end reasons -------------------------------------------------------------------------

#: The events that end an app-started call with each reason, and whether a hang-up goes out.
ENDINGS: dict[str, tuple[list[Event], bool]] = {
    "remote_closed": ([ConnectionLost(False)], False),
    "remote_reset": ([ConnectionLost(True)], False),
    "remote_hangup": ([Hangup()], False),
    "protocol_error": ([BadFrame("odd_audio", "audio kind 0x10 with odd length 3")], True),
    **{reason: ([EndRequested(reason)], True)
       for reason in ("app_hangup", "app_error", "max_duration", "inactivity", "shutdown")},
    "write_stalled": ([EndRequested("write_stalled", send_hangup=False)], False),
}


@pytest.mark.parametrize("reason", sorted(ENDINGS))
def test_each_end_reason_ends_the_call_once(reason: str) -> None:
    events, hangup = ENDINGS[reason]
    m = in_call()
    actions = [a for e in events for a in m.handle(e)]
    assert actions[-1] == EndCall(reason, hangup, app_started=True)
    assert m.state is State.ENDING and m.ended
    # Whatever comes after, the reason stays the first one.
    for later in (Hangup(), ConnectionLost(), EndRequested("shutdown"), Audio(bytes(320), 8000),
                  Dtmf("1"), TimerFired(Timer.PROBE)):
        assert m.handle(later) == []
    assert m.handle(Finished()) == [] and m.state is State.CLOSED


def test_every_end_reason_is_reachable_by_events() -> None:
    assert set(ENDINGS) | {"overload", "duplicate_uuid"} == set(END_REASONS)


def test_peer_error_frames_end_the_call_only_when_they_ask_for_a_hangup() -> None:
    m = in_call()
    assert m.handle(ErrorFrame(0x02)) == [PeerError(0x02, ("frame_forwarding",))]
    assert m.state is State.IN_CALL
    assert m.handle(ErrorFrame(0x05)) == [
        PeerError(0x05, ("hangup", "memory")), EndCall("remote_hangup", False, True)
    ]


def test_a_second_uuid_is_a_protocol_error() -> None:
    m = in_call()
    assert m.handle(CallId(uuid.uuid4())) == [
        ProtocolViolation("duplicate_uuid_frame", "a second UUID frame on a live call"),
        EndCall("protocol_error", True, True),
    ]


def test_an_end_while_probing_drops_what_was_held_and_cancels_the_probe() -> None:
    m = probing()
    m.handle(Audio(bytes(160), 8000))
    m.handle(Dtmf("3"))
    assert m.handle(ConnectionLost()) == [
        CancelTimer(Timer.PROBE), EndCall("remote_closed", False, app_started=False)
    ]
    assert m.handle(TimerFired(Timer.PROBE)) == []


def test_finished_before_the_end_is_the_adapters_bug() -> None:
    with pytest.raises(LocalError):
        in_call().handle(Finished())


# -- any input -----------------------------------------------------------------------------

# Weighted towards 8 kHz audio and keys, where the probe and the μ-law decision are.
_KINDS = [0x10] * 8 + [0x03] * 3 + [int(k) for k in Kind] + [0x02, 0x04, 0x19, 0x7F]
_frames = st.tuples(
    st.sampled_from(_KINDS) | st.integers(0, 255),
    st.sampled_from([0, 1, 2, 16, 160, 160, 160, 320, 640]).flatmap(lambda n: st.binary(min_size=n,
                                                                              max_size=n))
    | st.binary(max_size=400),
)
_others = st.sampled_from([
    TimerFired(Timer.UUID), TimerFired(Timer.PROBE), ConnectionLost(False), ConnectionLost(True),
    EndRequested("app_hangup"), EndRequested("write_stalled", send_hangup=False),
])
_steps = st.lists(_frames | _others, max_size=40)

_TERMINAL = (EndCall, NonCall, Refuse)


@given(
    first=st.sampled_from([True, True, True, False]), steps=_steps,
    admission=st.sampled_from([(False, False)] * 4 + [(True, False), (False, True)]),
    detect=st.integers(1, 12),
)
@settings(max_examples=400, deadline=None)
def test_any_input_gives_only_documented_actions_and_no_audio_before_the_start(
    first: bool, steps: list[Any], admission: tuple[bool, bool], detect: int
) -> None:
    m = CallState(uuid_timeout_s=5.0, ulaw_detect_frames=detect)
    armed: set[Timer] = set()
    out: list[Action] = []

    def feed(event: Event) -> None:
        actions = m.handle(event)  # must never raise on the peer's input
        for a in actions:
            if isinstance(a, Admit):
                actions = actions + m.handle(Admission(*admission))
        for a in actions:
            if isinstance(a, SetTimer):
                armed.add(a.timer)
            elif isinstance(a, CancelTimer):
                armed.discard(a.timer)
        out.extend(actions)

    feed(Connected())
    if first:
        feed(CallId(U))
    for step in steps:
        if isinstance(step, tuple):
            feed(frame_event(*step))
        elif isinstance(step, TimerFired) and step.timer not in armed:
            assert m.handle(step) == []  # a cancelled timer's late callback does nothing
        else:
            if isinstance(step, TimerFired):
                armed.discard(step.timer)
            feed(step)

    started = False
    ended_at = None
    for i, a in enumerate(out):
        if isinstance(a, StartApp):
            assert not started
            started = True
        if isinstance(a, DeliverAudio | DeliverDtmf):
            assert started, "nothing reaches the app before it starts"
        if isinstance(a, ProtocolViolation):
            # A protocol error always ends the connection, with a hang-up frame.
            assert any(isinstance(b, EndCall | NonCall) for b in out[i:])
            assert EndCall("protocol_error", True, started) in out[i:] or NonCall(
                "protocol_error") in out[i:]
        if isinstance(a, (*_TERMINAL, Close)) and ended_at is None:
            ended_at = i
    if ended_at is not None:
        # One end, one reason: after it at most the close that goes with it, nothing else.
        tail = out[ended_at + 1 :]
        assert all(isinstance(a, Close) for a in tail) and len(tail) <= 1
        assert sum(isinstance(a, _TERMINAL) for a in out) <= 1
        assert m.ended and not armed
    else:
        assert not m.ended


def test_the_steady_state_shortcut_hands_the_app_what_handle_would() -> None:
    frames = chunks(lin2ulaw(voice(1600)))
    ulaw = probing()
    for f in frames[:2]:
        assert ulaw.steady_audio(Audio(f, 8000)) is None  # probing: only handle decides
        ulaw.handle(Audio(f, 8000))
    slin = in_call()
    for m in (ulaw, slin):
        frame = Audio(frames[3], 8000)
        assert [DeliverAudio(m.steady_audio(frame) or b"", 8000)] == m.handle(frame)
    assert ulaw.steady_audio(Audio(frames[3], 8000)) == ulaw2lin(frames[3])
    slin.handle(ConnectionLost())
    assert slin.steady_audio(Audio(frames[3], 8000)) is None  # ended: nothing more
