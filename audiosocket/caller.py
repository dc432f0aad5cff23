"""A software Asterisk: places one AudioSocket call the way Asterisk does.

It connects, sends the UUID, streams audio on a real-time 20 ms clock (absolute deadlines,
like the server's), sends DTMF digits, sends nothing while it has nothing to say (as a quiet
Asterisk channel does), and hangs up by closing the socket. What comes back is kept with
its arrival times, so tests and benchmarks can check pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid as _uuid
from dataclasses import dataclass, field

from audiosocket.protocol import (
    Audio,
    CallId,
    Decoder,
    Dtmf,
    Hangup,
    ProtocolError,
    encode_audio,
    encode_frame,
    frame_bytes,
)
from audiosocket.ulaw import lin2ulaw

__all__ = ["CallResult", "place_call"]


@dataclass
class CallResult:
    """What one software call saw."""

    uuid: str
    rate: int
    received: bytearray = field(default_factory=bytearray)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each audio frame
    frame_sizes: list[int] = field(default_factory=list)  # payload bytes of each audio frame
    #: When each frame of ``pcm`` really left, in seconds from the connect: a caller delayed
    #: by a busy machine sends late, and tests compare the server's timeline with this.
    sent_at: list[float] = field(default_factory=list)
    frames_sent: int = 0
    frames_received: int = 0
    hangup_by_server: bool = False
    closed_by_server: bool = False
    protocol_error: str | None = None
    duration: float = 0.0
    #: The call was abandoned because the server sent nothing for ``idle_timeout`` seconds
    #: (a server must send a frame every 20 ms; Asterisk gives up after 2 s).
    server_silent: bool = False
    #: Longest time without a frame from the server while the call was up (from connect).
    longest_silence_s: float = 0.0

    def gaps_ms(self) -> list[float]:
        """Milliseconds between consecutive received frames."""
        a = self.arrivals
        return [(a[i] - a[i - 1]) * 1000 for i in range(1, len(a))]


async def place_call(
    host: str = "127.0.0.1",
    port: int = 9092,
    *,
    pcm: bytes = b"",
    rate: int = 8000,
    dtmf: str = "",
    dtmf_delay: float = 1.0,
    dtmf_gap: float = 0.3,
    linger: float = 2.0,
    max_seconds: float = 120.0,
    call_uuid: _uuid.UUID | None = None,
    ulaw: bool = False,
    send_silence: bool = False,
    frame_ms: int = 20,
    chunks: list[bytes] | None = None,
    idle_timeout: float | None = None,
) -> CallResult:
    """Place one call and return what came back.

    ``pcm`` (int16 mono at ``rate``) is streamed from the start. DTMF digits go out from
    ``dtmf_delay`` seconds on, ``dtmf_gap`` apart. The call ends when the server hangs up or
    closes, ``linger`` seconds after the last thing we sent, or at ``max_seconds``.
    ``ulaw`` sends 160-byte μ-law frames in kind 0x10, as ``Dial(AudioSocket/...)`` without
    ``c(slin)`` does on a μ-law channel; what comes back is read as slin whatever its size,
    as Asterisk reads every 0x10 frame. ``send_silence`` keeps sending silence frames after
    the audio ends, like ``transmit_silence=yes``. ``frame_ms`` 10 sends 10 ms frames (SIP
    legs with ptime 10: 160 bytes of slin at 8 kHz, the size of 20 ms of μ-law).
    ``chunks``: PCM already cut, one frame per 20 ms tick, any sizes (Asterisk's Playback
    sends a short frame at each file boundary); instead of ``pcm``.
    ``idle_timeout``: give up (``server_silent``) when the server has sent nothing for that
    long, as Asterisk's ``AudioSocket()`` does after 2 s; None waits for ever.
    """
    call_uuid = call_uuid or _uuid.uuid4()
    result = CallResult(uuid=str(call_uuid), rate=rate)
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.monotonic()
    done = asyncio.Event()
    hanging_up = False
    last_rx = [started]

    async def receive() -> None:
        decoder = Decoder()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    result.closed_by_server = not hanging_up
                    return
                now = time.monotonic()
                result.longest_silence_s = max(result.longest_silence_s, now - last_rx[0])
                last_rx[0] = now
                for frame in decoder.feed(data):
                    if isinstance(frame, Audio):
                        result.received += frame.payload
                        result.arrivals.append(now)
                        result.frame_sizes.append(len(frame.payload))
                        result.frames_received += 1
                    elif isinstance(frame, Hangup):
                        result.hangup_by_server = True
                        return
        except ProtocolError as exc:
            result.protocol_error = str(exc)
        except (ConnectionError, OSError):
            result.closed_by_server = not hanging_up
        finally:
            done.set()

    receiver = asyncio.create_task(receive())
    try:
        writer.write(encode_frame(CallId(call_uuid)))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        step = frame_ms / 1000
        size = frame_bytes(rate) * frame_ms // 20
        frames = [pcm[i : i + size] for i in range(0, len(pcm), size)]
        if chunks is not None:
            frames = list(chunks)
        digit_times = [(dtmf_delay + i * dtmf_gap, d) for i, d in enumerate(dtmf)]
        last_send = 0.0 if not frames else len(frames) * step
        if digit_times:
            last_send = max(last_send, digit_times[-1][0])
        end_at = min(last_send + linger, max_seconds)
        k = 0
        while not done.is_set():
            elapsed = k * step
            if elapsed >= end_at:
                break
            delay = t0 + elapsed - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await done.wait()
                if done.is_set():
                    break
            if idle_timeout is not None and time.monotonic() - last_rx[0] > idle_timeout:
                result.server_silent = True
                break
            while digit_times and digit_times[0][0] <= elapsed:
                writer.write(encode_frame(Dtmf(digit_times.pop(0)[1])))
            if k < len(frames):
                chunk = frames[k]
                if ulaw:
                    # Kind 0x10 whatever --rate says: the trap is slin's kind carrying μ-law.
                    writer.write(encode_audio(lin2ulaw(chunk.ljust(size, b"\0")), 8000))
                else:
                    writer.write(encode_audio(chunk, rate))
                result.frames_sent += 1
                result.sent_at.append(time.monotonic() - started)
            elif send_silence:
                writer.write(encode_audio(bytes(size), rate))
                result.frames_sent += 1
            k += 1
        # Asterisk hangs up by closing the socket; it never sends a hang-up frame.
    finally:
        result.duration = time.monotonic() - started
        if not result.hangup_by_server and not result.closed_by_server:
            result.longest_silence_s = max(
                result.longest_silence_s, time.monotonic() - last_rx[0]
            )
        hanging_up = True
        # Hang up as Asterisk does, by closing: send FIN and keep reading until the server
        # closes too, so no frame is left unread (that would turn the close into a reset).
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(receiver)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        if not receiver.done():
            receiver.cancel()
    return result
