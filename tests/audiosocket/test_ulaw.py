"""G.711 μ-law tables against known code points."""

from __future__ import annotations

import numpy as np

from audiosocket.ulaw import lin2ulaw, ulaw2lin


def test_known_code_points() -> None:
    # 0xFF and 0x7F are the two zeros; 0x80 / 0x00 the extremes.
    assert np.frombuffer(ulaw2lin(b"\xff\x7f\x80\x00"), "<i2").tolist() == [0, 0, 32124, -32124]


def test_roundtrip_error_is_within_g711_step() -> None:
    x = np.linspace(-32000, 32000, 4001).astype("<i2")
    y = np.frombuffer(ulaw2lin(lin2ulaw(x.tobytes())), "<i2").astype(int)
    err = np.abs(y - x.astype(int))
    # The quantisation step grows with magnitude: about 3 % of the value plus a floor.
    assert np.all(err <= np.abs(x.astype(int)) * 0.04 + 8)


def test_every_code_survives_decode_encode() -> None:
    codes = bytes(range(256))
    back = lin2ulaw(ulaw2lin(codes))
    # 0x7F (negative zero) canonically re-encodes as 0xFF (positive zero).
    assert [a for a, b in zip(codes, back, strict=True) if a != b] == [0x7F]
