"""Type stub for the C extension ``audiosocket._wire`` (source: ``_wire.c``)."""

LINE_SIZE: int
STATE_SIZE: int
EV_CHUNK: int
EV_EOF: int
EV_RECV_ERR: int
EV_SLOW: int
EV_SHORT: int
EV_SEND_ERR: int
EV_APP_ERR: int

def pump(
    lines: list[tuple[object, ...]], advance: int, /
) -> list[tuple[tuple[object, ...], int, object]]: ...
