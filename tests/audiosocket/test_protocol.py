"""The sans-I/O codec: unit cases from PROTOCOL.md and Hypothesis properties."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket.protocol import (
    AUDIO_KINDS,
    MAX_FRAME_SIZE,
    Audio,
    CallId,
    Decoder,
    Dtmf,
    ErrorFrame,
    ErrorType,
    Hangup,
    Kind,
    ProtocolError,
    encode_audio,
    encode_frame,
    encode_hangup,
    frame_bytes,
)

RATES = sorted(AUDIO_KINDS.values())


def decode_all(data: bytes) -> list:
    return list(Decoder().feed(data))


def test_header_layout_matches_asterisk() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert encode_frame(CallId(u)) == b"\x01\x00\x10" + u.bytes  # RFC 4122 order, not bytes_le
    assert encode_hangup() == b"\x00\x00\x00"
    assert encode_audio(b"\x01\x02" * 160, 8000)[:3] == b"\x10\x01\x40"
    assert encode_audio(b"\x00\x00" * 320, 16000)[:3] == b"\x12\x02\x80"
    assert encode_frame(Dtmf("#")) == b"\x03\x00\x01#"


def test_frame_sizes() -> None:
    assert frame_bytes(8000) == 320
    assert frame_bytes(16000) == 640
    assert frame_bytes(48000) == 1920
    assert frame_bytes(44100) == 1764


def test_audio_rate_from_kind() -> None:
    for kind, rate in AUDIO_KINDS.items():
        (frame,) = decode_all(bytes([kind, 0, 2, 1, 0]))
        assert frame == Audio(b"\x01\x00", rate)
        assert frame.kind == kind


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x02\x00\x00", ErrorType.UNKNOWN_KIND),
        (b"\x20\x00\x02ab", ErrorType.UNKNOWN_KIND),
        (b"\x01\x00\x0f" + bytes(15), ErrorType.BAD_UUID),
        (b"\x01\x00\x11" + bytes(17), ErrorType.BAD_UUID),
        (b"\x03\x00\x01x", ErrorType.BAD_DTMF),
        (b"\x03\x00\x02" + b"12", ErrorType.BAD_DTMF),
        (b"\x03\x00\x00", ErrorType.BAD_DTMF),
        (b"\x10\x00\x00", ErrorType.EMPTY_AUDIO),
        (b"\x12\x00\x03abc", ErrorType.ODD_AUDIO),
        (b"\x00\x00\x01x", ErrorType.BAD_HANGUP),
    ],
)
def test_rejects_with_typed_error(data: bytes, error: ErrorType) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_all(data)
    assert info.value.error_type is error


def test_unknown_kind_rejected_before_payload_arrives() -> None:
    dec = Decoder()
    with pytest.raises(ProtocolError):
        list(dec.feed(b"\x42\xff\xff"))  # would otherwise wait for 64 KiB of junk


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (b"\x10\xff\xff", ErrorType.ODD_AUDIO),
        (b"\x12\x00\x03", ErrorType.ODD_AUDIO),
        (b"\x18\x00\x01", ErrorType.ODD_AUDIO),
        (b"\x10\x00\x00", ErrorType.EMPTY_AUDIO),
        (b"\x01\xff\xff", ErrorType.BAD_UUID),
        (b"\x01\x00\x0f", ErrorType.BAD_UUID),
        (b"\x01\x00\x00", ErrorType.BAD_UUID),
        (b"\x03\xff\xff", ErrorType.BAD_DTMF),
        (b"\x03\x00\x02", ErrorType.BAD_DTMF),
        (b"\x00\xff\xff", ErrorType.BAD_HANGUP),
        (b"\x00\x00\x01", ErrorType.BAD_HANGUP),
        (b"\xff\xff\xff", ErrorType.BAD_ERROR),
        (b"\xff\x00\x02", ErrorType.BAD_ERROR),
    ],
)
def test_impossible_length_rejected_on_the_header_alone(header: bytes, error: ErrorType) -> None:
    dec = Decoder()
    with pytest.raises(ProtocolError) as info:
        list(dec.feed(header))  # no payload yet: nothing to wait for
    assert info.value.error_type is error
    assert dec.buffered == 0


def _length_ok(kind: int, length: int) -> bool:
    """What PROTOCOL.md allows, written out independently of the decoder."""
    if kind in AUDIO_KINDS:
        return length > 0 and length % 2 == 0
    return {Kind.UUID: length == 16, Kind.DTMF: length == 1, Kind.HANGUP: length == 0,
            Kind.ERROR: length <= 1}.get(kind, False)


@given(
    st.sampled_from(sorted({*AUDIO_KINDS, Kind.UUID, Kind.DTMF, Kind.HANGUP, Kind.ERROR})),
    st.integers(0, 0xFFFF),
    st.integers(1, 3),
)
@settings(max_examples=500, deadline=None)
def test_header_decides_at_once_whether_a_payload_can_follow(
    kind: int, length: int, cut: int
) -> None:
    header = bytes([kind]) + length.to_bytes(2, "big")
    dec = Decoder()
    if cut < 3:
        assert list(dec.feed(header[:cut])) == []  # a partial header decides nothing
    rest = header[cut:] if cut < 3 else header
    if _length_ok(kind, length):
        frames = list(dec.feed(rest))
        assert len(frames) == (0 if length else 1)  # its payload is awaited, or none is due
        assert dec.buffered == (3 if length else 0)
    else:
        with pytest.raises(ProtocolError):
            list(dec.feed(rest))


def test_error_frame_flags_decoded_for_non_asterisk_peers() -> None:
    (frame,) = decode_all(b"\xff\x00\x01\x05")
    assert frame == ErrorFrame(5)
    assert frame.flags == ("hangup", "memory")
    (empty,) = decode_all(b"\xff\x00\x00")
    assert empty == ErrorFrame(0)


def test_decoder_stays_broken_after_error() -> None:
    dec = Decoder()
    with pytest.raises(ProtocolError):
        list(dec.feed(b"\x02\x00\x00"))
    with pytest.raises(ProtocolError):
        list(dec.feed(encode_hangup()))


def test_frames_before_error_are_yielded() -> None:
    dec = Decoder()
    got = []
    with pytest.raises(ProtocolError):
        for frame in dec.feed(encode_frame(Dtmf("5")) + b"\x07\x00\x00"):
            got.append(frame)
    assert got == [Dtmf("5")]


def test_encoders_refuse_what_asterisk_would_kill_the_call_for() -> None:
    with pytest.raises(ValueError):
        encode_audio(b"", 8000)
    with pytest.raises(ValueError):
        encode_audio(b"abc", 8000)
    with pytest.raises(ValueError):
        encode_audio(b"\x00\x00", 11025)
    with pytest.raises(ValueError):
        encode_audio(bytes(65536), 8000)


def test_one_byte_at_a_time() -> None:
    u = uuid.uuid4()
    data = encode_frame(CallId(u)) + encode_audio(bytes(range(256)) * 2, 16000) + encode_hangup()
    dec = Decoder()
    frames = []
    for i in range(len(data)):
        frames.extend(dec.feed(data[i : i + 1]))
    assert frames == [CallId(u), Audio(bytes(range(256)) * 2, 16000), Hangup()]
    assert dec.buffered == 0


# -- properties ------------------------------------------------------------------------

audio_frames = st.builds(
    Audio,
    st.integers(1, 2000).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n)),
    st.sampled_from(RATES),
)
frames_st = st.one_of(
    st.just(Hangup()),
    st.uuids().map(CallId),
    st.sampled_from(sorted("0123456789*#ABCD")).map(Dtmf),
    audio_frames,
    st.integers(0, 255).map(ErrorFrame),
)


@given(st.lists(frames_st, min_size=1, max_size=30), st.data())
@settings(max_examples=300, deadline=None)
def test_roundtrip_split_at_random_offsets(frames: list, data: st.DataObject) -> None:
    wire = b"".join(encode_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    dec = Decoder()
    out = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        out.extend(dec.feed(wire[prev:cut]))
        prev = cut
    assert out == frames
    assert dec.buffered == 0


@given(st.binary(max_size=5000), st.lists(st.integers(0, 5000), max_size=10))
@settings(max_examples=500, deadline=None)
def test_garbage_raises_only_protocol_error(junk: bytes, cuts: list[int]) -> None:
    dec = Decoder()
    prev = 0
    try:
        for cut in [*sorted(c for c in cuts if c <= len(junk)), len(junk)]:
            for _ in dec.feed(junk[prev:cut]):
                pass
            prev = cut
    except ProtocolError as exc:
        assert isinstance(exc.error_type, ErrorType)


@given(st.lists(st.integers(1, 70000), min_size=1, max_size=40))
@settings(max_examples=100, deadline=None)
def test_never_buffers_more_than_one_maximal_frame(chunk_sizes: list[int]) -> None:
    # A stream of maximal audio frames fed in chunks of any size.
    frame = bytes([Kind.AUDIO_48K, 0xFF, 0xFE]) + bytes(0xFFFE)
    wire = frame * 4
    dec = Decoder()
    pos = 0
    for size in chunk_sizes:
        if pos >= len(wire):
            break
        for _ in dec.feed(wire[pos : pos + size]):
            pass
        pos += size
        assert dec.buffered < MAX_FRAME_SIZE
