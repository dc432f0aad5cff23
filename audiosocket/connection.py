"""One AudioSocket connection: the asyncio adapter between a socket and the call's machine.

:class:`Connection` feeds the sans-I/O call state machine (``call_state.py``) with frames,
timer expiries and requests, and executes the actions it returns (timers, metrics, logs,
the app's hooks). It also carries the per-frame fast path and the glue to the clock's C
media path (``_attach_native``/``_detach_native``, the tape's drain): a call in the steady
state is handed to the C path and back (docs/discussion/media-path.md). The listener, the
limits sweep and shutdown are the server's (``server.py``).

Why the C glue lives here and not in a module of its own: it reads and writes the same
per-connection state as the fast path (the decoder's buffer, the transport, the tick
listener), one set of invariants that would otherwise be split over two files.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid as _uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from audiosocket import memory, metrics
from audiosocket.call import Call
from audiosocket.call_state import (
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
    Finished,
    NonCall,
    OpenCall,
    PeerError,
    ProtocolViolation,
    RateSeen,
    Refuse,
    SetTimer,
    StartApp,
    Timer,
    TimerFired,
    UlawDetected,
)
from audiosocket.clock import NATIVE_AVAILABLE, Playout
from audiosocket.hooks import App
from audiosocket.media import block_from_tape
from audiosocket.native import LINE, State, new_tape
from audiosocket.protocol import (
    HEADER_SIZE,
    KIND_FOR_RATE,
    Audio,
    Decoder,
    Dtmf,
    Frame,
    Kind,
    ProtocolError,
    encode_hangup,
    shared_header,
)

if TYPE_CHECKING:
    from audiosocket.server import AudioSocketServer

__all__ = ["Connection"]

log = structlog.get_logger("audiosocket.server")

#: How long a connection we close waits, after our FIN, for the peer to close its side
#: (``_close``). Asterisk closes at once on a hang-up frame; this bounds a peer that does not.
LINGER_S = 2.0


class Connection(asyncio.Protocol):
    """One TCP connection from Asterisk (or from ``audiosocket call``)."""

    def __init__(self, server: AudioSocketServer) -> None:
        self.server = server
        self.loop = server.loop
        self.decoder = Decoder()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.call: Call | None = None
        self.session: App | None = None
        self.main_task: asyncio.Task[None] | None = None
        #: The protocol decisions (call_state.py); this class executes its actions.
        self.machine = CallState(
            uuid_timeout_s=server.config.uuid_timeout_s,
            ulaw_detect_frames=server.config.ulaw_detect_frames,
        )
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._reused = False  # the UUID being admitted named an earlier call
        self._fast_audio: Callable[[bytes, int], None] | None = None
        self._fast_whole = False  # _fast_audio takes the whole wire frame (fast_frame)
        self._fast_len = 0
        self._fast_header = b""
        self._fast_rate = 0
        self.fast_frames = 0  # frames taken by the fast path, not yet added to the call
        self._native_ok = False  # the fast path may hand this call to the C path
        self._native_line: tuple[object, ...] | None = None  # attached to the clock's C path
        self._native_state: State | None = None  # that line's state
        #: The app takes its audio in blocks while on the C path (``media_ready``): the
        #: line then carries a tape and the app's tick listener is off.
        self._taped = False
        self.last_in = 0.0  # loop time of the last inbound frame, as seen by the sweep
        self._seen_in = 0
        self.last_out = 0.0  # loop time the sweep last saw audio (not silence) go out
        self._seen_out = -1  # so the first sweep of a call starts its window
        self._flushed_in = 0
        self._flushed_dtmf = 0
        self._flushed_bytes = 0
        #: Set while closing: our side is shut, reading drops the peer's bytes (``_close``).
        self._linger: asyncio.TimerHandle | None = None
        self.log: Any = log

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.log = log.bind(peer=self.peer)
        self.last_in = self.loop.time()
        self.server.connection_opened(self)
        self._run(self.machine.handle(Connected()))

    def data_received(self, data: bytes) -> None:
        # Fast path, the normal case: exactly one whole audio frame of the call's kind and
        # nothing buffered. It skips the decoder's generator and the frame object; the
        # cost per frame matters at a thousand calls.
        fast = self._fast_audio
        if (
            fast is not None
            and len(data) == self._fast_len
            and data[:HEADER_SIZE] == self._fast_header
            and not self.decoder._buf
        ):
            # Bytes are derived from this count when metrics are flushed (fixed frame size).
            self.fast_frames += 1
            try:
                if self._fast_whole:
                    fast(data)  # type: ignore[call-arg]
                else:
                    fast(data[HEADER_SIZE:], self._fast_rate)
            except Exception as exc:
                self._app_failed("on_audio", exc)
                return
            if self._native_ok and self._native_line is None and (
                not self._taped or self._media_ready()
            ):
                self._attach_native()
            return
        if self._linger is not None:
            return  # closing: the peer's bytes are read only so the close is not a reset
        try:
            machine = self.machine
            for frame in self.decoder.feed(data):
                if machine.ended:
                    return
                self._on_frame(frame)
        except ProtocolError as exc:
            self._run(self.machine.handle(BadFrame(exc.error_type.value, str(exc))))

    # -- the C media path (audiosocket._wire, driven by the clock) ------------------------

    def _attach_native(self) -> None:
        """Hand this call's steady state to the clock's C path: it then reads and writes
        the socket itself (a frame out every tick; reads every tick, or every
        ``media_read_ms`` for a taped call), so uvloop stops reading it. Only when nothing is
        pending on either side: no partial frame in the decoder, nothing in the transport's
        write buffer, a plain playout."""
        call, transport = self.call, self.transport
        if call is None or self.machine.ended or transport is None or transport.is_closing():
            return
        playout = call.playout
        if transport.get_write_buffer_size() or self.decoder._buf:
            return
        taped = self._taped
        if taped:
            # The app hears this call's ticks from the tape now, not from a listener.
            playout.on_tick = None
        if not playout.wired:
            if taped:
                playout.on_tick = self._tick_listener
            return
        sock = transport.get_extra_info("socket")
        if sock is None:
            self._native_ok = False
            if taped:
                playout.on_tick = self._tick_listener
            return
        wake = taped and bool(getattr(self.session, "wake_on_sound", False))
        state = playout.native_state(
            sock.fileno(), self._fast_len, self._fast_whole, wake=wake,
            read_ticks=self.server.clock.tape_read_ticks,
        )
        line = (
            state.buf, self, playout, playout._frames, self._fast_audio, self._fast_rate,
            self._fast_header, new_tape(playout.frame_size) if taped else None, playout._silence,
        )
        if self.server.clock.attach(line, quiet=wake):
            self._native_line = line
            self._native_state = state
            playout._native_state = state
            transport.pause_reading()
        elif taped:
            playout.on_tick = self._tick_listener

    def _detach_native(self) -> None:
        """Back to uvloop reading and the Python tick (idempotent)."""
        line = self._native_line
        if line is None:
            return
        # The tape first: what the app has not had yet comes before anything that follows.
        self._drain_tape()
        self._native_line = None
        self.server.clock.detach(line)
        self._fold_native_in()
        playout: Playout = line[LINE.PLAYOUT]  # type: ignore[assignment]
        playout.sync_counters()
        playout._native_state = None
        self._native_state = None
        if line[LINE.TAPE] is not None and not self.machine.ended:
            playout.on_tick = self._tick_listener
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _drain_tape(self) -> None:
        """Hand the app what the C path taped since the last block (the clock calls this
        about once a second per call; detaching calls it too). Audio already received is
        always delivered, also once the call has ended (the recording must be whole)."""
        line, session, call = self._native_line, self.session, self.call
        if line is None or session is None or call is None:
            return
        tape = line[LINE.TAPE]
        if tape is None:
            return
        block = block_from_tape(tape, call.playout.frame_size)  # type: ignore[arg-type]
        if block is None:
            return
        call.playout.sync_counters()  # the app may read call.tick / call.time
        try:
            session.on_media(block)
        except Exception as exc:
            self._app_failed("on_media", exc)

    def _media_ready(self) -> bool:
        session = self.session
        try:
            return session is not None and bool(session.media_ready())
        except Exception as exc:
            self._app_failed("media_ready", exc)
            return False

    def _fold_native_in(self) -> None:
        """Add the frames the C path handed to the app to ``fast_frames``."""
        state = self._native_state
        if state is not None:
            self.fast_frames += state.take("frames_in")

    def _native_read_event(self, event: str, payload: object) -> None:
        """What the C path read but does not handle, in order, already detached (``event``
        as named in ``audiosocket_native_events_total``)."""
        if event == "chunk":
            self.data_received(payload)  # type: ignore[arg-type]
        elif event == "recv_error":
            self.end("remote_reset", send_hangup=False)
        elif event == "app_error":
            self._app_failed("on_audio", payload)  # type: ignore[arg-type]
        # "eof": reading resumed, so the transport meets the end of stream itself.

    def eof_received(self) -> bool:
        # Asterisk hangs up by closing the socket: returning False closes our side too.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        self.server.connection_closed(self)
        self._run(self.machine.handle(ConnectionLost(error=exc is not None)))

    # -- frames --------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        call = self.call
        if call is not None:
            # Counting is the adapter's (batched into metrics once a second); what the frame
            # means is the machine's.
            if isinstance(frame, Audio):
                call.frames_in += 1
                call.audio_bytes_in += len(frame.payload)
                pcm = self.machine.steady_audio(frame)
                if pcm is not None:  # the common case, without action objects
                    session = self.session
                    if session is not None:
                        self._hook("on_audio", session.on_audio, pcm, frame.rate)
                    return
            elif isinstance(frame, Dtmf):
                call.dtmf_in += 1
                self.log.info("dtmf", digit=frame.digit)
        self._run(self.machine.handle(frame))

    # -- executing the machine's actions ---------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        """Execute ``actions`` in order. An action may feed the machine again (an app hook
        that raises ends the call); what follows it then sees the call ended."""
        for action in actions:
            if type(action) is DeliverAudio:  # the one action per frame on the slow path
                session = self.session
                if session is not None and not self.machine.ended:
                    self._hook("on_audio", session.on_audio, action.pcm, action.rate)
            else:
                _EXECUTE[type(action)](self, action)

    def _deliver_dtmf(self, action: DeliverDtmf) -> None:
        session = self.session
        if session is not None and not self.machine.ended:
            self._hook("on_dtmf", session.on_dtmf, action.digit)

    def _set_timer(self, action: SetTimer) -> None:
        self._timers[action.timer] = self.loop.call_later(
            action.delay, self._timer_fired, action.timer
        )

    def _cancel_timer(self, action: CancelTimer) -> None:
        handle = self._timers.pop(action.timer, None)
        if handle is not None:
            handle.cancel()

    def _timer_fired(self, timer: Timer) -> None:
        self._timers.pop(timer, None)
        self._run(self.machine.handle(TimerFired(timer)))

    def _rate_seen(self, action: RateSeen) -> None:
        if self.call is not None:
            self.call.inbound_rate = action.rate

    def _ulaw_detected(self, action: UlawDetected) -> None:
        if self.call is not None:
            self.call.ulaw = True
        metrics.ULAW_DETECTED.inc()
        self.log.warning(
            "ulaw_detected",
            hint="kind 0x10 carries mu-law, not slin: Dial(AudioSocket/...) without c(...) on "
            "a mu-law channel. Use Dial(AudioSocket/host:port/${UUID()}/c(slin)) or "
            "c(slin16); decoding inbound as mu-law, answering in slin",
        )

    def _peer_error(self, action: PeerError) -> None:
        metrics.PEER_ERROR_FRAMES.inc()
        if self._peer_log("peer_error_frame"):
            self.log.warning("peer_error_frame", code=action.code, flags=list(action.flags))

    def _protocol_violation(self, action: ProtocolViolation) -> None:
        metrics.PROTOCOL_ERRORS.labels(type=action.error_type).inc()
        if self._peer_log("protocol_error"):
            self.log.warning("protocol_error", type=action.error_type, error=action.message)

    def _non_call(self, action: NonCall) -> None:
        metrics.NON_CALLS.labels(reason=action.reason).inc()
        # A protocol error was logged as such just before.
        if action.reason != "protocol_error" and self._peer_log("non_call"):
            self.log.info("non_call", reason=action.reason)

    def _do_close(self, action: Close) -> None:
        self._close(send_hangup=action.send_hangup)

    # -- call life -----------------------------------------------------------------------

    def _admit(self, action: Admit) -> None:
        """Answer the machine's question: may a call with this UUID start?"""
        server = self.server
        call_uuid = action.uuid
        self.log = self.log.bind(call=str(call_uuid), app=server.app_name)
        # A UUID an earlier call had (fixed in the dialplan) gets a fresh id: that call's
        # rows and files are named by it and must never be overwritten.
        reused = self._reused = server.id_taken(str(call_uuid))
        overloaded = len(server.calls) >= server.config.max_calls
        answer = Admission(
            overloaded=overloaded,
            duplicate_live=not overloaded and reused and server.uuid_live(call_uuid),
        )
        self._run(self.machine.handle(answer))

    def _refuse(self, action: Refuse) -> None:
        metrics.CALLS_ENDED.labels(reason=action.reason).inc()
        self.log.warning("call_refused", reason=action.reason, active=len(self.server.calls))

    def _open_call(self, action: OpenCall) -> None:
        server = self.server
        call_uuid = action.uuid
        reused = self._reused
        assert self.transport is not None
        playout = Playout(
            self.transport, 8000, lead_ms=server.config.lead_ms,
            max_seconds=server.config.playout_max_s, loop=self.loop,
            max_bytes=server.config.playout_max_bytes,
            live_ms=server.config.live_latency_ms, shared=server.clip_frames,
        )
        call = Call(call_uuid, playout, peer=self.peer, app=server.app_name, end=self.end,
                    call_id=str(_uuid.uuid4()) if reused else None)
        server.call_ids.add(call.id)
        if reused:
            self.log = self.log.bind(call=call.id, audiosocket_uuid=str(call_uuid))
        self.call = call
        server.calls[call.id] = self
        server.clock.register(playout)
        metrics.ACTIVE_CALLS.inc()
        metrics.CALLS_STARTED.labels(app=server.app_name).inc()
        self.log.info("call_started")

    def _start_app(self, action: StartApp) -> None:
        """The rate is known: fix the playout's kind and start the app (what was held
        reaches it in the actions that follow)."""
        call = self.call
        if call is None:
            return
        rate = action.rate
        if rate != call.playout.rate and not action.ulaw:
            old = call.playout
            new = Playout(
                old.transport, rate, lead_ms=self.server.config.lead_ms,
                max_seconds=self.server.config.playout_max_s, loop=self.loop,
                max_bytes=self.server.config.playout_max_bytes,
                live_ms=self.server.config.live_latency_ms, shared=self.server.clip_frames,
            )
            new.ticks = new.sent_total = old.ticks
            self.server.clock.unregister(old)
            call.playout = new
            self.server.clock.register(new)
        self.log = self.log.bind(rate=rate)
        try:
            session = self.server.session_factory(call)
        except Exception as exc:
            metrics.SESSION_ERRORS.labels(hook="init").inc()
            self.log.exception("session_init_failed", error=str(exc))
            self.end("app_error")
            return
        self.session = session
        self.server.notify("call_started", call)
        # Which hooks the app overrides comes with the factory (the composition root
        # computes it): the server knows no session class. A bare callable hears it all.
        factory = self.server.session_factory
        if getattr(factory, "hears_ticks", True):
            call.playout.on_tick = self._tick_listener
        self.main_task = self.loop.create_task(self._run_main(session))
        if not action.ulaw and getattr(factory, "hears_audio", True):
            kind = KIND_FOR_RATE[rate]
            size = call.playout.frame_size
            # An app may offer ``fast_audio(pcm, rate)`` for frames of its own kind only, or
            # ``fast_frame(frame)`` taking the wire frame itself (header included).
            whole = getattr(session, "fast_frame", None)
            self._fast_whole = whole is not None
            self._fast_audio = whole or getattr(session, "fast_audio", None) or session.on_audio
            self._fast_rate = rate
            self._fast_len = HEADER_SIZE + size
            self._fast_header = shared_header(kind, size)
            self._native_ok = NATIVE_AVAILABLE and self.server.config.native_media
            # An app that hears ticks rides the C path only if it takes its audio in
            # blocks (``on_media``), when it says it is ready to (``media_ready``).
            self._taped = bool(getattr(factory, "hears_ticks", True)) and callable(
                getattr(session, "media_ready", None)) and callable(
                getattr(session, "on_media", None))
            if self._taped:
                call.media_wake = self._detach_native

    def _tick_listener(self, tick: int, sent: bytes | None) -> None:
        if self.session is not None and not self.machine.ended:
            self._hook("on_tick", self.session.on_tick, tick, sent)

    async def _run_main(self, session: App) -> None:
        try:
            await session.on_start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.SESSION_ERRORS.labels(hook="on_start").inc()
            self.log.exception("app_failed", hook="on_start", error=str(exc))
            self.end("app_error")

    def _hook(self, name: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._app_failed(name, exc)

    def _app_failed(self, hook: str, exc: Exception) -> None:
        metrics.SESSION_ERRORS.labels(hook=hook).inc()
        self.log.error("app_failed", hook=hook, error=str(exc), exc_info=exc)
        self.end("app_error")

    def _peer_log(self, event: str) -> bool:
        """Whether this peer may still log ``event`` (:class:`PeerLogLimit`)."""
        return self.server.peer_log.allow(self.peer.rpartition(":")[0] or self.peer, event)

    def _close(self, *, send_hangup: bool) -> None:
        """Close our side: a lingering close, as HTTP servers do.

        Closing a socket whose receive queue holds unread bytes makes the kernel send a
        reset and drop what it still has queued to send: the end of the last prompt and the
        hang-up frame. The peer is nearly always still sending (Asterisk sends a frame every
        20 ms, and a taped line is read every 40 ms), so a plain close loses them whenever
        they have not left yet (a loaded machine, a slow network). Instead our FIN goes out
        after everything queued (``write_eof``), the peer's bytes are read and dropped until
        it closes its side (``eof_received`` then closes ours), and after ``LINGER_S`` the
        connection is aborted whatever the peer does.
        """
        transport = self.transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return
        if send_hangup:
            # Never 0xFF, 0x01 or 0x03: Asterisk ends the call with an error on those.
            transport.write(encode_hangup())
        try:
            if not transport.can_write_eof():
                transport.close()
                return
            transport.write_eof()
            transport.resume_reading()
        except Exception:  # a transport broken under us (a reset): nothing left to send
            transport.abort()
            return
        self._linger = self.loop.call_later(LINGER_S, self._linger_expired)

    def _linger_expired(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            metrics.LINGER_TIMEOUTS.inc()
            transport.abort()

    def end(self, reason: str, *, send_hangup: bool = True) -> None:
        """End the call once, with one reason; later calls are no-ops. Before the UUID, just
        close (after a hang-up frame when ``send_hangup``)."""
        self._run(self.machine.handle(EndRequested(reason, send_hangup)))

    def _end_call(self, action: EndCall) -> None:
        reason, send_hangup = action.reason, action.send_hangup
        self._fast_audio = None
        call = self.call
        if call is None:
            self._close(send_hangup=send_hangup)
            return
        call.end_reason = reason
        call.ended_at = time.time()
        self.server.clock.unregister(call.playout)
        self._close(send_hangup=send_hangup)
        call.playout.close()
        self.flush_metrics()
        metrics.ACTIVE_CALLS.dec()
        metrics.CALLS_ENDED.labels(reason=reason).inc()
        self.log.info(
            "call_ended", reason=reason, duration=round(time.time() - call.started_at, 3),
            frames_in=call.frames_in, frames_out=call.playout.sent_total,
            underruns=call.playout.underruns,
        )
        if not action.app_started:
            # Ended before the app started (e.g. within the rate probe): still a call.
            self.server.notify("call_started", call)
        self.server.notify("call_ended", call)
        task = self.main_task
        if task is not None and not task.done() and task is not _current_task():
            task.cancel()
        self.server.finishing.add(self.loop.create_task(self._finish(call, reason)))

    async def _finish(self, call: Call, reason: str) -> None:
        try:
            if self.main_task is not None and self.main_task is not _current_task():
                with contextlib.suppress(BaseException):
                    await self.main_task
            if self.session is not None:
                try:
                    await self.session.on_end(reason)
                except Exception as exc:
                    metrics.SESSION_ERRORS.labels(hook="on_end").inc()
                    self.log.exception("app_failed", hook="on_end", error=str(exc))
        finally:
            self.server.calls.pop(call.id, None)
            self.machine.handle(Finished())
            call.closed.set()
            if call.audio_bytes_in >= memory.TRIM_AFTER_BYTES:
                memory.trim_soon()  # glibc keeps a big call's freed buffers otherwise
            task = _current_task()
            if task is not None:
                self.server.finishing.discard(task)

    def flush_metrics(self) -> None:
        """Add this call's frame counts to the metrics (batched, not per frame)."""
        call = self.call
        if call is None:
            return
        self._fold_native_in()
        call.playout.sync_counters()
        if self.fast_frames:
            n, self.fast_frames = self.fast_frames, 0
            call.frames_in += n
            call.audio_bytes_in += n * (self._fast_len - HEADER_SIZE)
        audio = call.frames_in - self._flushed_in
        if audio:
            kind = KIND_FOR_RATE.get(call.inbound_rate or 8000, Kind.AUDIO_8K)
            metrics.frames_in(kind).inc(audio)
            self._flushed_in = call.frames_in
        dtmf = call.dtmf_in - self._flushed_dtmf
        if dtmf:
            metrics.frames_in(Kind.DTMF).inc(dtmf)
            self._flushed_dtmf = call.dtmf_in
        nbytes = call.audio_bytes_in - self._flushed_bytes
        if nbytes:
            metrics.BYTES_IN.inc(nbytes)
            self._flushed_bytes = call.audio_bytes_in


#: Who executes each action (DeliverAudio, the common one, is inlined in ``_run``).
_EXECUTE: dict[type[Any], Callable[[Connection, Any], None]] = {
    SetTimer: Connection._set_timer,
    CancelTimer: Connection._cancel_timer,
    Admit: Connection._admit,
    Refuse: Connection._refuse,
    OpenCall: Connection._open_call,
    RateSeen: Connection._rate_seen,
    UlawDetected: Connection._ulaw_detected,
    StartApp: Connection._start_app,
    DeliverDtmf: Connection._deliver_dtmf,
    PeerError: Connection._peer_error,
    ProtocolViolation: Connection._protocol_violation,
    NonCall: Connection._non_call,
    Close: Connection._do_close,
    EndCall: Connection._end_call,
}


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
