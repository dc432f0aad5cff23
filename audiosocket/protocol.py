"""The AudioSocket wire protocol, sans-I/O.

This module imports nothing of ours and no asyncio: it turns bytes into typed frames and
frames into bytes, in the style of h11. The server, the software caller, the load generator
and the tests all share it.

Wire format (see ``shared/PROTOCOL.md``): 1 byte kind, 2 bytes payload length (big-endian),
then the payload. Audio is signed 16-bit little-endian mono.
"""

from __future__ import annotations

import enum
import functools
import struct
import uuid as _uuid
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "AUDIO_KINDS",
    "DTMF_DIGITS",
    "HEADER_SIZE",
    "KIND_FOR_RATE",
    "MAX_FRAME_SIZE",
    "MAX_PAYLOAD",
    "Audio",
    "CallId",
    "Decoder",
    "Dtmf",
    "ErrorFrame",
    "ErrorType",
    "Frame",
    "Hangup",
    "Kind",
    "ProtocolError",
    "encode_audio",
    "encode_frame",
    "encode_hangup",
    "frame_bytes",
    "header",
    "parse_frame",
    "samples_per_frame",
    "shared_header",
    "silence_frame",
]

HEADER_SIZE = 3
MAX_PAYLOAD = 0xFFFF
MAX_FRAME_SIZE = HEADER_SIZE + MAX_PAYLOAD
FRAME_MS = 20

_HEADER = struct.Struct(">BH")


class Kind(enum.IntEnum):
    """Frame kinds, as ``res_audiosocket.h`` numbers them."""

    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO_8K = 0x10
    AUDIO_12K = 0x11
    AUDIO_16K = 0x12
    AUDIO_24K = 0x13
    AUDIO_32K = 0x14
    AUDIO_44K = 0x15
    AUDIO_48K = 0x16
    AUDIO_96K = 0x17
    AUDIO_192K = 0x18
    ERROR = 0xFF


#: Sample rate carried by each audio kind.
AUDIO_KINDS: dict[int, int] = {
    Kind.AUDIO_8K: 8000,
    Kind.AUDIO_12K: 12000,
    Kind.AUDIO_16K: 16000,
    Kind.AUDIO_24K: 24000,
    Kind.AUDIO_32K: 32000,
    Kind.AUDIO_44K: 44100,
    Kind.AUDIO_48K: 48000,
    Kind.AUDIO_96K: 96000,
    Kind.AUDIO_192K: 192000,
}
KIND_FOR_RATE: dict[int, Kind] = {rate: Kind(kind) for kind, rate in AUDIO_KINDS.items()}

DTMF_DIGITS = frozenset("0123456789*#ABCD")


def samples_per_frame(rate: int) -> int:
    """Samples in one 20 ms frame at ``rate`` (882 at 44.1 kHz)."""
    return rate * FRAME_MS // 1000


def frame_bytes(rate: int) -> int:
    """Payload bytes of one 20 ms slin16 frame at ``rate``: 320 at 8 kHz, 640 at 16 kHz."""
    return samples_per_frame(rate) * 2


class ErrorType(enum.Enum):
    """Why a frame was rejected. Used as the metric label, so keep the values stable."""

    UNKNOWN_KIND = "unknown_kind"
    BAD_UUID = "bad_uuid"
    BAD_DTMF = "bad_dtmf"
    EMPTY_AUDIO = "empty_audio"
    ODD_AUDIO = "odd_audio"
    BAD_HANGUP = "bad_hangup"
    BAD_ERROR = "bad_error"


class ProtocolError(Exception):
    """A frame that violates the protocol. The decoder is unusable after raising it."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True, slots=True)
class Hangup:
    """Kind 0x00. Asterisk never sends it; other peers and we do."""


@dataclass(frozen=True, slots=True)
class CallId:
    """Kind 0x01: the call's UUID, 16 raw bytes in RFC 4122 order."""

    uuid: _uuid.UUID


@dataclass(frozen=True, slots=True)
class Dtmf:
    """Kind 0x03: one key, sent by Asterisk on key release."""

    digit: str


@dataclass(frozen=True, slots=True)
class Audio:
    """Kinds 0x10-0x18: signed 16-bit little-endian mono PCM at ``rate``."""

    payload: bytes
    rate: int

    @property
    def kind(self) -> Kind:
        return KIND_FOR_RATE[self.rate]


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """Kind 0xFF. Asterisk never sends it; some third-party peers do.

    The flag names (0x01 hang-up, 0x02 frame forwarding, 0x04 memory) come from a Go library,
    not from Asterisk, so they are decoded for logging only.
    """

    code: int

    @property
    def flags(self) -> tuple[str, ...]:
        names = []
        if self.code & 0x01:
            names.append("hangup")
        if self.code & 0x02:
            names.append("frame_forwarding")
        if self.code & 0x04:
            names.append("memory")
        if self.code & ~0x07:
            names.append("unknown")
        return tuple(names)


Frame = Hangup | CallId | Dtmf | Audio | ErrorFrame


def parse_frame(kind: int, payload: bytes) -> Frame:
    """The frame a whole ``kind`` + ``payload`` make; :class:`ProtocolError` if none."""
    return _parse(kind, payload)


def _parse(kind: int, payload: bytes) -> Frame:
    rate = AUDIO_KINDS.get(kind)
    if rate is not None:
        if not payload:
            raise ProtocolError(ErrorType.EMPTY_AUDIO, f"audio kind 0x{kind:02x} with no payload")
        if len(payload) % 2:
            raise ProtocolError(
                ErrorType.ODD_AUDIO, f"audio kind 0x{kind:02x} with odd length {len(payload)}"
            )
        return Audio(payload, rate)
    if kind == Kind.UUID:
        if len(payload) != 16:
            raise ProtocolError(ErrorType.BAD_UUID, f"UUID payload of {len(payload)} bytes")
        return CallId(_uuid.UUID(bytes=payload))
    if kind == Kind.DTMF:
        digit = payload.decode("latin-1")
        if len(payload) != 1 or digit not in DTMF_DIGITS:
            raise ProtocolError(ErrorType.BAD_DTMF, f"DTMF payload {payload!r}")
        return Dtmf(digit)
    if kind == Kind.HANGUP:
        # Asterisk's own encoder sends no payload; tolerate none else.
        if payload:
            raise ProtocolError(ErrorType.BAD_HANGUP, f"hang-up with {len(payload)} bytes")
        return Hangup()
    if kind == Kind.ERROR:
        if len(payload) > 1:
            raise ProtocolError(ErrorType.BAD_ERROR, f"error frame with {len(payload)} bytes")
        return ErrorFrame(payload[0] if payload else 0)
    raise ProtocolError(ErrorType.UNKNOWN_KIND, f"unknown kind 0x{kind:02x}")


class Decoder:
    """Incremental decoder: feed it byte chunks of any size, iterate the frames.

    The receive buffer never holds more than one maximal frame (3 + 65,535 bytes) beyond the
    chunk being fed: complete frames are parsed out as soon as they are whole, and the header
    is validated before the payload is awaited, so a bad kind, or a length its kind can never
    have (odd audio, a UUID that is not 16 bytes...), is rejected without waiting for up to
    64 KiB that may never come.
    """

    __slots__ = ("_broken", "_buf", "frames_decoded")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: ProtocolError | None = None
        self.frames_decoded = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[Frame]:
        """Add ``data`` and yield every frame it completes.

        Raises :class:`ProtocolError` at the first bad frame; frames before it are yielded
        first. Iterate the result fully, or the data stays unparsed.
        """
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        pos = 0
        end = len(view)
        try:
            while end - pos >= HEADER_SIZE:
                kind, length = _HEADER.unpack_from(view, pos)
                if kind not in AUDIO_KINDS or not length or length & 1:
                    _check_header(kind, length)
                stop = pos + HEADER_SIZE + length
                if stop > end:
                    break
                frame = _parse(kind, bytes(view[pos + HEADER_SIZE : stop]))
                pos = stop
                self.frames_decoded += 1
                yield frame
        except ProtocolError as exc:
            self._broken = exc
            self._buf = bytearray()
            raise
        if view is buf:
            del buf[:pos]
        else:
            self._buf = bytearray(view[pos:])


def _check_header(kind: int, length: int) -> None:
    """Raise if no payload of ``length`` bytes can make a valid frame of ``kind``."""
    if kind in AUDIO_KINDS:
        if not length:
            raise ProtocolError(ErrorType.EMPTY_AUDIO, f"audio kind 0x{kind:02x} with no payload")
        if length % 2:
            raise ProtocolError(
                ErrorType.ODD_AUDIO, f"audio kind 0x{kind:02x} with odd length {length}"
            )
    elif kind == Kind.UUID:
        if length != 16:
            raise ProtocolError(ErrorType.BAD_UUID, f"UUID header with length {length}")
    elif kind == Kind.DTMF:
        if length != 1:
            raise ProtocolError(ErrorType.BAD_DTMF, f"DTMF header with length {length}")
    elif kind == Kind.HANGUP:
        if length:
            raise ProtocolError(ErrorType.BAD_HANGUP, f"hang-up header with length {length}")
    elif kind == Kind.ERROR:
        if length > 1:
            raise ProtocolError(ErrorType.BAD_ERROR, f"error header with length {length}")
    else:
        raise ProtocolError(ErrorType.UNKNOWN_KIND, f"unknown kind 0x{kind:02x}")


def encode_frame(frame: Frame) -> bytes:
    """Encode any frame. Servers should only send :class:`Hangup` and :class:`Audio`."""
    if isinstance(frame, Audio):
        return encode_audio(frame.payload, frame.rate)
    if isinstance(frame, Hangup):
        return encode_hangup()
    if isinstance(frame, CallId):
        return header(Kind.UUID, 16) + frame.uuid.bytes
    if isinstance(frame, Dtmf):
        if frame.digit not in DTMF_DIGITS or len(frame.digit) != 1:
            raise ValueError(f"not a DTMF digit: {frame.digit!r}")
        return header(Kind.DTMF, 1) + frame.digit.encode("ascii")
    if isinstance(frame, ErrorFrame):
        return header(Kind.ERROR, 1) + bytes([frame.code & 0xFF])
    raise TypeError(f"not a frame: {frame!r}")


def header(kind: int, length: int) -> bytes:
    """The 3-byte header of a frame of ``kind`` with ``length`` payload bytes: the one place
    a header is built (the C media path, ``_wire.c``, keeps its own copy of the layout).

    The per-frame paths build a call's header once and prepend it (the server's fast path
    compares it); :func:`encode_audio` calls this per frame at ~12 ns over inlining the
    ``pack`` (docs/discussion/media-path.md). A kind or length out of range is refused.
    """
    return _pack_header(kind, length)


_pack_header = _HEADER.pack


@functools.cache
def silence_frame(kind: int, length: int) -> bytes:
    """A whole frame of digital silence: ``header(kind, length)`` and ``length`` zero bytes.

    One object per (kind, length) for every call: the clock sends a call's silence on every
    tick it has nothing else, and a thousand calls each sending their own copy read a
    thousand cold objects a tick where one stays in the cache.
    """
    return header(kind, length) + bytes(length)


@functools.cache
def shared_header(kind: int, length: int) -> bytes:
    """``header(kind, length)``, one object per (kind, length) for every call: the C media
    path compares each line's header against every frame it reads, and a thousand calls'
    own copies were a thousand cold objects a tick (see :func:`silence_frame`)."""
    return header(kind, length)


_HANGUP_BYTES = header(Kind.HANGUP, 0)


def encode_hangup() -> bytes:
    """``00 00 00``: how we end or refuse a call. Never send 0xFF to Asterisk."""
    return _HANGUP_BYTES


def encode_audio(pcm: bytes, rate: int = 8000) -> bytes:
    """One audio frame in the kind for ``rate``. Empty or odd-length audio is refused,
    because Asterisk ends the call on zero-length audio."""
    kind = KIND_FOR_RATE.get(rate)
    if kind is None:
        raise ValueError(f"no AudioSocket kind for {rate} Hz")
    n = len(pcm)
    if n == 0 or n % 2 or n > MAX_PAYLOAD:
        raise ValueError(f"audio payload of {n} bytes cannot be sent")
    return header(kind, n) + pcm
