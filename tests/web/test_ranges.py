"""Unit and property tests for web.ranges (sans-I/O range / conditional logic)."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from web.ranges import (
    Precondition,
    RangeKind,
    RangeResult,
    coalesce,
    evaluate_if_range,
    evaluate_preconditions,
    format_http_date,
    last_modified_is_strong,
    make_etag,
    multipart_content_length,
    multipart_parts,
    multipart_trailer,
    parse_etag_list,
    parse_http_date,
    parse_range,
)

SIZE = 1000


def sat(*ranges: tuple[int, int]) -> RangeResult:
    return RangeResult(RangeKind.SATISFIABLE, tuple(ranges))


IGNORE = RangeResult(RangeKind.IGNORE)
UNSAT = RangeResult(RangeKind.UNSATISFIABLE)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-499", sat((0, 499))),
        ("bytes=100-", sat((100, 999))),
        ("bytes=-500", sat((500, 999))),
        ("bytes=-5000", sat((0, 999))),  # suffix longer than file: whole file
        ("bytes=990-5000", sat((990, 999))),  # last-pos clamped
        ("bytes=0-0", sat((0, 0))),
        ("bytes=0-1", sat((0, 1))),  # Safari probe
        ("bytes=999-999", sat((999, 999))),
        ("BYTES=0-1", sat((0, 1))),  # unit is case-insensitive
        ("bytes=1000-", UNSAT),
        ("bytes=1000-2000", UNSAT),
        ("bytes=-0", UNSAT),
        ("bytes=-0,1000-", UNSAT),
        ("bytes=5000-6000, 0-9", sat((0, 9))),  # bad next to good: serve the good one
        ("bytes=0-9 , \t20-29", sat((0, 9), (20, 29))),  # OWS around commas
        ("bytes=0-9,,20-29,", sat((0, 9), (20, 29))),  # empty list elements tolerated
        ("bytes=20-29,0-9", sat((0, 9), (20, 29))),  # sorted
        ("bytes=0-9,5-19", sat((0, 19))),  # overlapping merged
        ("bytes=0-9,10-19", sat((0, 19))),  # adjacent merged
        ("bytes=0-9,-10", sat((0, 9), (990, 999))),
        ("bytes=0-,-10", sat((0, 999))),
        ("bytes=5-2", IGNORE),  # first > last: invalid syntax -> whole header ignored
        ("bytes=0-1,5-2", IGNORE),  # a syntax error anywhere poisons the header
        ("bytes=abc", IGNORE),
        ("bytes=", IGNORE),
        ("bytes=-", IGNORE),
        ("bytes=,", IGNORE),
        ("items=0-1", IGNORE),
        ("bytes 0-1", IGNORE),
        ("bytes = 0-1", IGNORE),
        ("bytes=+1-2", IGNORE),
        ("bytes=1-+2", IGNORE),
        ("bytes=0x1-2", IGNORE),
        ("bytes=1 -2", IGNORE),
        ("bytes=²-3", IGNORE),  # non-ASCII digits are not DIGIT
        ("bytes=0-1;x", IGNORE),
        ("", IGNORE),
        ("bytes=" + "9" * 5000 + "-", UNSAT),  # no ValueError from int() digit limits
        ("bytes=0-" + "9" * 5000, sat((0, 999))),
        ("bytes=1" + "0" * 30 + "-" + "9" * 30, IGNORE),  # huge first > huge last
    ],
)
def test_parse_range_table(header: str, expected: RangeResult) -> None:
    assert parse_range(header, SIZE, max_header_length=20_000) == expected


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-0"])
def test_empty_file_any_range_is_unsatisfiable(header: str) -> None:
    assert parse_range(header, 0) == UNSAT


def test_too_many_ranges_ignored() -> None:
    header = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(17))
    assert parse_range(header, SIZE, max_ranges=16) == IGNORE
    assert parse_range(header, SIZE, max_ranges=17).kind is RangeKind.SATISFIABLE


def test_overlong_header_ignored() -> None:
    header = "bytes=0-1," + " " * 5000 + "2-3"
    assert parse_range(header, SIZE) == IGNORE
    assert parse_range(header, SIZE, max_header_length=10_000) == sat((0, 3))


def test_negative_size_rejected() -> None:
    with pytest.raises(ValueError):
        parse_range("bytes=0-1", -1)


# --- properties ----------------------------------------------------------------------------

range_spec = st.one_of(
    st.tuples(st.integers(0, 3000), st.integers(0, 3000)).map(lambda t: (min(t), max(t), "int")),
    st.tuples(st.integers(0, 3000), st.just(-1), st.just("open")),
    st.tuples(st.just(-1), st.integers(0, 3000), st.just("suffix")),
)


def _spec_text(spec: tuple[int, int, str]) -> str:
    first, last, kind = spec
    if kind == "int":
        return f"{first}-{last}"
    if kind == "open":
        return f"{first}-"
    return f"-{last}"


def _bytes_of(spec: tuple[int, int, str], size: int) -> set[int]:
    first, last, kind = spec
    if kind == "int":
        return set(range(first, min(last, size - 1) + 1)) if first < size else set()
    if kind == "open":
        return set(range(first, size))
    return set(range(max(0, size - last), size)) if last > 0 else set()


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(range_spec, min_size=1, max_size=20),
    size=st.integers(0, 2500),
    seps=st.sampled_from([",", ", ", " ,\t", ","]),
)
def test_coalesced_result_covers_exactly_the_union(
    specs: list[tuple[int, int, str]], size: int, seps: str
) -> None:
    header = "bytes=" + seps.join(_spec_text(s) for s in specs)
    result = parse_range(header, size, max_ranges=100)
    expected: set[int] = set()
    for spec in specs:
        expected |= _bytes_of(spec, size)
    if not expected:
        assert result == UNSAT
        return
    assert result.kind is RangeKind.SATISFIABLE
    covered: set[int] = set()
    previous_end = -2
    for start, end in result.ranges:
        assert 0 <= start <= end < size
        assert start > previous_end + 1  # sorted, disjoint and not adjacent
        previous_end = end
        covered |= set(range(start, end + 1))
    assert covered == expected


@settings(max_examples=500, deadline=None)
@given(header=st.text(max_size=200), size=st.integers(0, 10**12))
def test_parse_range_never_raises_on_arbitrary_text(header: str, size: int) -> None:
    result = parse_range(header, size)
    assert isinstance(result, RangeResult)
    assert (result.kind is RangeKind.SATISFIABLE) == bool(result.ranges)


@settings(max_examples=300, deadline=None)
@given(
    header=st.from_regex(r"\Abytes=[0-9, \t-]{0,60}\Z"),
    size=st.integers(0, 100),
)
def test_parse_range_never_raises_on_rangeish_text(header: str, size: int) -> None:
    result = parse_range(header, size)
    for start, end in result.ranges:
        assert 0 <= start <= end < size


def test_many_ranges_is_quasi_linear() -> None:
    """10k and 40k ranges: O(n log n) merge keeps both fast and the ratio near 4."""

    def timed(n: int) -> float:
        header = "bytes=" + ",".join(f"{i * 3}-{i * 3 + 1}" for i in reversed(range(n)))
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            result = parse_range(header, 10**9, max_ranges=10**6, max_header_length=10**8)
            best = min(best, time.perf_counter() - t0)
        assert len(result.ranges) == n  # gaps of one byte: nothing merges
        return best

    small, large = timed(10_000), timed(40_000)
    assert small < 0.5  # generous: shared, noisy CI machine
    assert large < 16 * small + 0.05  # quadratic would be ~16x; allow noise


def test_coalesce_nested_and_equal() -> None:
    assert coalesce([(0, 100), (10, 20), (0, 100), (101, 101)]) == ((0, 101),)


# --- If-Range -------------------------------------------------------------------------------

ETAG = '"abc-1"'
LM = "Tue, 15 Nov 1994 08:12:31 GMT"


@pytest.mark.parametrize(
    ("if_range", "strong_date", "expected"),
    [
        (None, True, True),
        ('"abc-1"', True, True),
        ('"abc-2"', True, False),  # stale
        ('W/"abc-1"', True, False),  # weak never matches
        ('"abc-1', True, False),  # malformed
        (LM, True, True),
        (LM, False, False),  # date not a strong validator yet
        ("Tue, 15 Nov 1994 08:12:32 GMT", True, False),
        ("Tuesday, 15-Nov-94 08:12:31 GMT", True, True),  # RFC 850, same instant
        ("Tue Nov 15 08:12:31 1994", True, True),  # asctime, same instant
        ("yesterday", True, False),
    ],
)
def test_evaluate_if_range(if_range: str | None, strong_date: bool, expected: bool) -> None:
    assert evaluate_if_range(if_range, ETAG, LM, last_modified_strong=strong_date) is expected


def test_last_modified_strength_rule() -> None:
    assert last_modified_is_strong(100.0, 101.0)
    assert not last_modified_is_strong(100.5, 101.0)


def test_http_dates_roundtrip_and_reject() -> None:
    assert parse_http_date(LM) == 784887151
    assert format_http_date(784887151) == LM
    assert parse_http_date("Tue, 15 Foo 1994 08:12:31 GMT") is None
    assert parse_http_date("Tue, 15 Nov 1994 25:12:31 GMT") is None


# --- ETags and preconditions --------------------------------------------------------------


def test_make_etag_strong_and_changes(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "a")
    with open(path, "wb") as f:
        f.write(b"x")
    tag1 = make_etag(os.stat(path))
    assert tag1.startswith('"') and tag1.endswith('"') and not tag1.startswith("W/")
    with open(path, "ab") as f:
        f.write(b"y")
    assert make_etag(os.stat(path)) != tag1


def test_parse_etag_list() -> None:
    assert parse_etag_list("*") is None
    assert parse_etag_list('"a", W/"b" ,') == [(False, '"a"'), (True, '"b"')]
    assert parse_etag_list("a") == []


@pytest.mark.parametrize(
    ("kwargs", "method", "expected"),
    [
        ({}, "GET", Precondition.PROCEED),
        ({"if_none_match": ETAG}, "GET", Precondition.NOT_MODIFIED),
        ({"if_none_match": 'W/"abc-1"'}, "HEAD", Precondition.NOT_MODIFIED),  # weak compare
        ({"if_none_match": "*"}, "GET", Precondition.NOT_MODIFIED),
        ({"if_none_match": '"zzz"'}, "GET", Precondition.PROCEED),
        ({"if_modified_since": LM}, "GET", Precondition.NOT_MODIFIED),
        ({"if_modified_since": "Mon, 14 Nov 1994 08:12:31 GMT"}, "GET", Precondition.PROCEED),
        ({"if_modified_since": "garbage"}, "GET", Precondition.PROCEED),
        # IMS is ignored when If-None-Match is present
        ({"if_none_match": '"zzz"', "if_modified_since": LM}, "GET", Precondition.PROCEED),
        ({"if_match": ETAG}, "GET", Precondition.PROCEED),
        ({"if_match": "*"}, "GET", Precondition.PROCEED),
        ({"if_match": '"zzz"'}, "GET", Precondition.PRECONDITION_FAILED),
        ({"if_match": 'W/"abc-1"'}, "GET", Precondition.PRECONDITION_FAILED),  # strong compare
        (
            {"if_unmodified_since": "Mon, 14 Nov 1994 08:12:31 GMT"},
            "GET",
            Precondition.PRECONDITION_FAILED,
        ),
        ({"if_unmodified_since": LM}, "GET", Precondition.PROCEED),
        # IUS is ignored when If-Match is present
        (
            {"if_match": ETAG, "if_unmodified_since": "Mon, 14 Nov 1994 08:12:31 GMT"},
            "GET",
            Precondition.PROCEED,
        ),
    ],
)
def test_evaluate_preconditions(
    kwargs: dict[str, str], method: str, expected: Precondition
) -> None:
    lm = parse_http_date(LM)
    assert lm is not None
    assert evaluate_preconditions(method, ETAG, lm, **kwargs) is expected


# --- multipart --------------------------------------------------------------------------------


def test_multipart_layout_and_length() -> None:
    data = bytes(range(256)) * 4
    ranges = [(0, 9), (100, 199), (1000, 1023)]
    parts = multipart_parts(ranges, len(data), "audio/wav", "BOUND")
    body = b"".join(h + data[s : e + 1] for h, s, e in parts) + multipart_trailer("BOUND")
    assert len(body) == multipart_content_length(parts, "BOUND")
    assert body.startswith(
        b"--BOUND\r\nContent-Type: audio/wav\r\nContent-Range: bytes 0-9/1024\r\n\r\n"
    )
    assert body.endswith(b"\r\n--BOUND--\r\n")
    assert body.count(b"\r\n--BOUND\r\n") == 2


def test_multipart_rejects_header_injection() -> None:
    with pytest.raises(ValueError):
        multipart_parts([(0, 1)], 2, "audio/wav\r\nX: y", "b")
