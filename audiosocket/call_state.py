"""One connection's protocol state, sans-I/O: events in, actions out.

In the style of h11's ``_state.py``: no sockets, no asyncio, no clock. The asyncio
connection (``server.Connection``) feeds this machine the frames the codec decodes, the
timers it was asked to arm, the answers to its questions and the requests of the app and the
server; it executes the actions that come back (timers, metrics, logs, the session, the C
media path stay there). What the machine decides: when a connection is a call, which rate
and codec the call speaks, when the app starts, what the app is handed and in which order,
and the one reason a call or non-call ends.

States and transitions (an event not listed leaves the state as it is and does nothing)::

    AWAITING_UUID --CallId--> (Admit asked) --Admission ok--> PROBING
                  --Admission refused / timer UUID / bad or other frame--> CLOSED
                  --ConnectionLost / EndRequested--> CLOSED
    PROBING --audio that settles the rate / timer PROBE--> IN_CALL
    PROBING, IN_CALL --Hangup, ErrorFrame(hangup), BadFrame, 2nd CallId,
                      ConnectionLost, EndRequested--> ENDING
    ENDING --Finished--> CLOSED

The hot path never comes here: once a call is in the steady state, the connection's fast
path (and the C path) hand whole frames of the call's kind to the app directly.
"""

from __future__ import annotations

import enum
import uuid as _uuid
from dataclasses import dataclass

from audiosocket.protocol import (
    Audio,
    CallId,
    Dtmf,
    ErrorFrame,
    Frame,
    Hangup,
    ProtocolError,
    parse_frame,
)
from audiosocket.ulaw import ULAW_FRAME_BYTES, looks_like_ulaw, ulaw2lin, ulaw_odds

__all__ = [
    "RATE_PROBE_S",
    "ULAW_SURE_ODDS",
    "Action",
    "Admission",
    "Admit",
    "BadFrame",
    "CallState",
    "CancelTimer",
    "Close",
    "Connected",
    "ConnectionLost",
    "DeliverAudio",
    "DeliverDtmf",
    "EndCall",
    "EndRequested",
    "Event",
    "Finished",
    "LocalError",
    "NonCall",
    "OpenCall",
    "PeerError",
    "ProtocolViolation",
    "RateSeen",
    "Refuse",
    "SetTimer",
    "StartApp",
    "State",
    "Timer",
    "TimerFired",
    "UlawDetected",
    "frame_event",
]

#: How long to wait for the first audio frame to learn the call's rate before the app starts.
RATE_PROBE_S = 0.25
#: 160-byte frames at call start are decided before ``ulaw_detect_frames`` are held once two
#: of them favour one reading this strongly (speech and silence do, by far), so a live stream
#: does not start that many frames late; loud tones score nearer 1 and wait for the count.
ULAW_SURE_ODDS = 2.0


class State(enum.Enum):
    """Where one connection is in its life."""

    AWAITING_UUID = "awaiting_uuid"  # connected; a non-call until a UUID is admitted
    PROBING = "probing"  # a call: learning its rate, holding 160-byte frames and keys
    IN_CALL = "in_call"  # the app runs and is handed what arrives
    ENDING = "ending"  # ended with one reason; the app's on_end may still run
    CLOSED = "closed"  # nothing more happens on this connection


class Timer(enum.Enum):
    """The timers the machine asks the adapter to arm."""

    UUID = "uuid"  # uuid_timeout_s after the connect
    PROBE = "probe"  # RATE_PROBE_S after the UUID


class LocalError(Exception):
    """The adapter broke the machine's contract (a bug here, never the peer's input)."""


# -- events in ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The TCP connection is up."""


@dataclass(frozen=True, slots=True)
class BadFrame:
    """The decoder rejected the bytes (``ProtocolError``): ``error_type`` is its label."""

    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A timer armed by :class:`SetTimer` ran out (and was not cancelled)."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class Admission:
    """The server's answer to :class:`Admit`: the facts the refusal depends on."""

    overloaded: bool  # max_calls reached
    duplicate_live: bool  # a call that has not ended arrived with the same UUID


@dataclass(frozen=True, slots=True)
class EndRequested:
    """The app or the server ends the call (hang-up, app error, a limit, shutdown)."""

    reason: str
    send_hangup: bool = True


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The peer closed the socket (``error`` False: how Asterisk hangs up) or it broke."""

    error: bool = False


@dataclass(frozen=True, slots=True)
class Finished:
    """The adapter finished the ended call (the app's ``on_end`` returned)."""


#: A decoded frame is an event as it is: no wrapper per frame.
Event = (
    Frame | Connected | BadFrame | TimerFired | Admission | EndRequested | ConnectionLost
    | Finished
)


def frame_event(kind: int, payload: bytes) -> Frame | BadFrame:
    """The event one whole wire frame makes: the codec's frame, or :class:`BadFrame`."""
    try:
        return parse_frame(kind, payload)
    except ProtocolError as exc:
        return BadFrame(exc.error_type.value, str(exc))


# -- actions out -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Arm ``timer`` to fire in ``delay`` seconds (as :class:`TimerFired`)."""

    timer: Timer
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Disarm ``timer``: it must not fire any more."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class Admit:
    """Ask the server whether it takes a call with this UUID; answer with :class:`Admission`
    before anything else."""

    uuid: _uuid.UUID


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse the connection as a call (``overload`` or ``duplicate_uuid``); a
    :class:`Close` follows."""

    reason: str


@dataclass(frozen=True, slots=True)
class OpenCall:
    """The connection is a call from now on: create it and send silence from the next tick."""

    uuid: _uuid.UUID


@dataclass(frozen=True, slots=True)
class RateSeen:
    """The first audio frame's rate: the call's inbound rate."""

    rate: int


@dataclass(frozen=True, slots=True)
class UlawDetected:
    """The 160-byte frames are μ-law (``Dial`` without ``c(slin)``): warn; they are decoded
    before the app sees them, and replies stay signed linear."""


@dataclass(frozen=True, slots=True)
class StartApp:
    """The rate is known: start the app at ``rate``."""

    rate: int
    ulaw: bool


@dataclass(frozen=True, slots=True)
class DeliverAudio:
    """Hand signed-linear audio to the app."""

    pcm: bytes
    rate: int


@dataclass(frozen=True, slots=True)
class DeliverDtmf:
    """Hand a key to the app."""

    digit: str


@dataclass(frozen=True, slots=True)
class PeerError:
    """The peer sent an error frame (count and log; :class:`EndCall` follows when it asks
    for a hang-up)."""

    code: int
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol (count and log); the call or non-call ends next."""

    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class NonCall:
    """The connection ended without becoming a call (count; log unless the reason is
    ``protocol_error``, already logged as such)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection, after a ``00 00 00`` hang-up frame when ``send_hangup``."""

    send_hangup: bool


@dataclass(frozen=True, slots=True)
class EndCall:
    """End the call with ``reason`` (one of ``call.END_REASONS``) and close the connection.
    ``app_started`` False: the call ended before its app started (observers still hear of
    it as a call)."""

    reason: str
    send_hangup: bool
    app_started: bool


Action = (
    SetTimer | CancelTimer | Admit | Refuse | OpenCall | RateSeen | UlawDetected | StartApp
    | DeliverAudio | DeliverDtmf | PeerError | ProtocolViolation | NonCall | Close | EndCall
)


class CallState:
    """The state machine of one AudioSocket connection. :meth:`handle` takes one event and
    returns the actions it causes, in the order they must run.

    Peer input never raises: a bad frame becomes :class:`ProtocolViolation` and the end of
    the call. :class:`LocalError` means the adapter misused the machine (e.g. did not answer
    :class:`Admit`).
    """

    __slots__ = (
        "_admitting",
        "_held",
        "_pending_dtmf",
        "_timers",
        "ended",
        "rate_probe_s",
        "state",
        "ulaw",
        "ulaw_detect_frames",
        "uuid_timeout_s",
    )

    def __init__(
        self,
        *,
        uuid_timeout_s: float,
        ulaw_detect_frames: int,
        rate_probe_s: float = RATE_PROBE_S,
    ) -> None:
        self.uuid_timeout_s = uuid_timeout_s
        self.ulaw_detect_frames = ulaw_detect_frames
        self.rate_probe_s = rate_probe_s
        self.state = State.AWAITING_UUID
        #: ENDING or CLOSED: read per frame by the adapter, so a plain attribute.
        self.ended = False
        #: The call's inbound audio is μ-law in kind 0x10 (decided while probing).
        self.ulaw = False
        self._admitting: _uuid.UUID | None = None  # asked Admit, awaiting the Admission
        self._timers: set[Timer] = set()
        self._held: list[bytes] = []  # 160-byte frames held while deciding on μ-law
        self._pending_dtmf: list[str] = []  # keys that arrived before the app started

    # -- entry point -----------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Process one event; the actions to execute, in order."""
        if self._admitting is not None and not isinstance(event, Admission):
            raise LocalError(f"{type(event).__name__} while an Admit is unanswered")
        if self.ended:
            if isinstance(event, Finished) and self.state is State.ENDING:
                self.state = State.CLOSED
            return []  # one end, one reason: whatever comes after changes nothing
        # Ordered by how often they come: audio first.
        if isinstance(event, Audio):
            return self._audio(event)
        if isinstance(event, Dtmf | Hangup | ErrorFrame | CallId | BadFrame):
            return self._frame(event)
        if isinstance(event, TimerFired):
            return self._timer(event.timer)
        if isinstance(event, Admission):
            return self._admission(event)
        if isinstance(event, EndRequested):
            return self._end(event.reason, event.send_hangup)
        if isinstance(event, ConnectionLost):
            if self.state is State.AWAITING_UUID:
                reason = "reset_before_uuid" if event.error else "closed_before_uuid"
                return self._non_call(reason, close=None)
            return self._end("remote_reset" if event.error else "remote_closed", False)
        if isinstance(event, Connected):
            if self.state is State.AWAITING_UUID and Timer.UUID not in self._timers:
                return [self._arm(Timer.UUID, self.uuid_timeout_s)]
            return []
        if isinstance(event, Finished):
            raise LocalError("Finished before the call ended")
        raise LocalError(f"not an event: {event!r}")

    def steady_audio(self, frame: Audio) -> bytes | None:
        """The PCM to hand the app for ``frame`` in the steady state (decoded if the call is
        μ-law), the same as :meth:`handle`'s :class:`DeliverAudio` but with no event or
        action objects (a frozen action costs ~0.35 µs; this runs per frame of a call the
        fast path does not take). None: not in the call yet or any more; use :meth:`handle`.
        """
        if self.state is not State.IN_CALL:
            return None
        return ulaw2lin(frame.payload) if self.ulaw else frame.payload

    # -- frames ----------------------------------------------------------------------------

    def _frame(self, frame: Dtmf | Hangup | ErrorFrame | CallId | BadFrame) -> list[Action]:
        if isinstance(frame, BadFrame):
            return self._violation(frame.error_type, frame.message)
        if self.state is State.AWAITING_UUID:
            if isinstance(frame, CallId):
                self._admitting = frame.uuid
                return [*self._disarm(Timer.UUID), Admit(frame.uuid)]
            return self._violation("no_uuid", f"{type(frame).__name__} frame before the UUID")
        if isinstance(frame, Dtmf):
            if self.state is State.IN_CALL:
                return [DeliverDtmf(frame.digit)]
            self._pending_dtmf.append(frame.digit)
            return []
        if isinstance(frame, Hangup):
            return self._end("remote_hangup", False)
        if isinstance(frame, ErrorFrame):
            flags = frame.flags
            actions: list[Action] = [PeerError(frame.code, flags)]
            if "hangup" in flags:
                actions += self._end("remote_hangup", False)
            return actions
        return self._violation("duplicate_uuid_frame", "a second UUID frame on a live call")

    def _audio(self, frame: Audio) -> list[Action]:
        state = self.state
        if state is State.IN_CALL:
            pcm = frame.payload
            # Whatever the size: short frames at file edges are μ-law too.
            return [DeliverAudio(ulaw2lin(pcm) if self.ulaw else pcm, frame.rate)]
        if state is not State.PROBING:
            return self._violation("no_uuid", "Audio frame before the UUID")
        pcm, rate = frame.payload, frame.rate
        actions: list[Action] = []
        if not self._held:
            actions.append(RateSeen(rate))  # the first audio frame: nothing held before it
        if rate == 8000 and len(pcm) == ULAW_FRAME_BYTES:
            # 20 ms of μ-law in 0x10 (Dial without c(slin)) or 10 ms of slin: hold frames
            # until their content decides.
            held = self._held
            held.append(pcm)
            if len(held) >= self.ulaw_detect_frames or (
                len(held) >= 2
                and not 1 / ULAW_SURE_ODDS < ulaw_odds(b"".join(held)) < ULAW_SURE_ODDS
            ):
                actions += self._decide_held()
            return actions
        actions += self._start(rate)
        actions.append(DeliverAudio(pcm, rate))
        return actions

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, timer: Timer, delay: float) -> SetTimer:
        self._timers.add(timer)
        return SetTimer(timer, delay)

    def _disarm(self, *timers: Timer) -> list[Action]:
        out: list[Action] = []
        for timer in timers:
            if timer in self._timers:
                self._timers.discard(timer)
                out.append(CancelTimer(timer))
        return out

    def _timer(self, timer: Timer) -> list[Action]:
        if timer not in self._timers:
            return []  # cancelled already: a late callback changes nothing
        self._timers.discard(timer)
        if timer is Timer.UUID and self.state is State.AWAITING_UUID:
            return self._non_call("uuid_timeout", close=True)
        if timer is Timer.PROBE and self.state is State.PROBING:
            # Fewer 160-byte frames than the detection run, then nothing: decide on what
            # there is; no audio at all: assume 8 kHz, what AudioSocket() sends.
            return self._decide_held() if self._held else self._start(8000)
        return []

    # -- call life -------------------------------------------------------------------------

    def _admission(self, answer: Admission) -> list[Action]:
        call_uuid = self._admitting
        if call_uuid is None:
            raise LocalError("Admission without an Admit")
        self._admitting = None
        refuse = (
            "overload" if answer.overloaded
            else "duplicate_uuid" if answer.duplicate_live
            else None
        )
        if refuse is not None:
            self._set(State.CLOSED)
            return [*self._disarm(*Timer), Refuse(refuse), Close(send_hangup=True)]
        self.state = State.PROBING
        return [OpenCall(call_uuid), self._arm(Timer.PROBE, self.rate_probe_s)]

    def _decide_held(self) -> list[Action]:
        """The held 160-byte frames are μ-law or 10 ms slin: test both readings."""
        if looks_like_ulaw(b"".join(self._held)):
            # Inbound only: Asterisk reads every 0x10 frame we send as slin (samples =
            # length / 2) and converts to the channel's codec itself, so replies stay slin.
            self.ulaw = True
            return [UlawDetected(), *self._start(8000)]
        return self._start(8000)

    def _start(self, rate: int) -> list[Action]:
        """The rate is known: start the app, then hand it what was held, in order."""
        self.state = State.IN_CALL
        actions: list[Action] = [*self._disarm(Timer.PROBE), StartApp(rate, self.ulaw)]
        held, self._held = self._held, []
        actions += [DeliverAudio(ulaw2lin(p) if self.ulaw else p, 8000) for p in held]
        actions += [DeliverDtmf(d) for d in self._pending_dtmf]
        self._pending_dtmf.clear()
        return actions

    def _violation(self, error_type: str, message: str) -> list[Action]:
        first: list[Action] = [ProtocolViolation(error_type, message)]
        if self.state is State.AWAITING_UUID:
            return first + self._non_call("protocol_error", close=True)
        return first + self._end("protocol_error", True)

    def _non_call(self, reason: str, *, close: bool | None) -> list[Action]:
        """End a connection that never became a call; ``close`` None: it is closed already."""
        self._set(State.CLOSED)
        actions: list[Action] = [*self._disarm(*Timer), NonCall(reason)]
        if close is not None:
            actions.append(Close(send_hangup=close))
        return actions

    def _end(self, reason: str, send_hangup: bool) -> list[Action]:
        """End once, with one reason."""
        if self.state is State.AWAITING_UUID:
            # Not a call (yet): no end reason to record, just close.
            self._set(State.CLOSED)
            return [*self._disarm(*Timer), Close(send_hangup=send_hangup)]
        started = self.state is State.IN_CALL
        self._set(State.ENDING)
        self._held.clear()
        self._pending_dtmf.clear()
        return [*self._disarm(*Timer), EndCall(reason, send_hangup, started)]

    def _set(self, state: State) -> None:
        self.state = state
        self.ended = state in (State.ENDING, State.CLOSED)
