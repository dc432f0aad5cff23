"""Type stub for the C extension ``audiosocket._wire`` (source: ``_wire.c``)."""

LINE_SIZE: int
STATE_SIZE: int
TAPE_SIZE: int
#: The int64 fields of a line's state, in order (struct line_state).
STATE_FIELDS: tuple[str, ...]
#: The items of a line tuple, in order (LINE_*).
LINE_FIELDS: tuple[str, ...]
EV_CHUNK: int
EV_EOF: int
EV_RECV_ERR: int
EV_SLOW: int
EV_SHORT: int
EV_SEND_ERR: int
EV_APP_ERR: int
EV_MARK: int
EV_WAKE: int

def pump(
    lines: list[tuple[object, ...]], advance: int, /
) -> list[tuple[tuple[object, ...], int, object]]: ...
class Tape:
    """What the C path records of a line for its app; ``take_tape`` empties it."""

    def __init__(self, frame_bytes: int) -> None: ...
    def __len__(self) -> int: ...
    def sizes(self) -> tuple[int, int, int, int]: ...
    def put(self, sent: bool, tick: int, pcm: bytes, /) -> None: ...
    @property
    def capacity(self) -> int: ...

def take_tape(tape: Tape, frame_bytes: int, /) -> tuple[bytes, bytes, bytes, bytes] | None: ...
def block_shape(
    heard_ticks: object, sent_ticks: object, heard: bytes, /
) -> tuple[int, int, bool, bool]: ...
def frame_clip(
    header: bytes, pcm: bytes, frame_size: int, zeros_after: int, silence: bytes, /
) -> list[bytes]: ...
def interleave(left: bytes | bytearray, right: bytes | bytearray, nbytes: int, /) -> bytes: ...
def interleave_parts(
    left_a: bytes | bytearray, left_b: bytes | bytearray,
    right_a: bytes | bytearray, right_b: bytes | bytearray, nbytes: int, /,
) -> bytes: ...
