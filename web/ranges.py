"""Sans-I/O HTTP range and conditional-request logic (RFC 9110 sections 8.8, 13 and 14).

Everything here is pure: it takes header strings and file metadata and returns decisions, so
it can be unit- and property-tested without a server. ``web.files`` does the I/O.

Policies chosen where RFC 9110 leaves room (documented in docs/BENCHMARKS.md too):

* Too many ranges (more than ``max_ranges`` non-empty range-specs) or a header longer than
  ``max_header_length`` -> the Range header is **ignored** and the full representation is
  sent with 200 (RFC 9110 14.2: a server MAY ignore a Range header field; this is also what
  nginx's ``max_ranges`` does). Ignoring is safer than 416 for real clients while bounding
  the work an attacker can cause per request.
* Satisfiable ranges are sorted and overlapping *or adjacent* ranges are coalesced
  (RFC 9110 14.2 allows it). Sorting makes this O(n log n); a quadratic merge was a DoS in
  Starlette.
* An empty representation makes every range unsatisfiable (416), as nginx does.
* ``bytes=5-2`` (first > last) is syntactically invalid per RFC 9110 14.1.1, so the whole
  header is ignored (200), not answered with 416.
* A Last-Modified date is only used as a strong validator for If-Range when the file's mtime
  is at least one second older than the response's Date (RFC 9110 8.8.2.2): otherwise the
  file could have changed twice within the same second without the date changing.
"""

from __future__ import annotations

import calendar
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from enum import Enum

__all__ = [
    "Precondition",
    "RangeKind",
    "RangeResult",
    "evaluate_if_range",
    "evaluate_preconditions",
    "format_http_date",
    "last_modified_is_strong",
    "make_boundary",
    "make_etag",
    "multipart_content_length",
    "multipart_parts",
    "multipart_trailer",
    "parse_etag_list",
    "parse_http_date",
    "parse_range",
]

DEFAULT_MAX_RANGES = 16
# aiohttp already limits a header line to 8190 bytes; 4 KiB is plenty for 16 ranges of
# 64-bit offsets and keeps the parse cheap.
DEFAULT_MAX_HEADER_LENGTH = 4096

# One range-spec: int-range (first "-" [last]) or suffix-range ("-" suffix). ASCII digits
# only: str.isdigit() would accept "²" and int() would accept "+5" or "1_000".
_SPEC_RE = re.compile(r"([0-9]*)-([0-9]*)")
# Offsets this long cannot be file offsets; capping keeps int() away from Python's
# 4300-digit conversion limit (which would raise) while preserving every comparison that
# matters against a real file size.
_MAX_DIGITS = 18
_HUGE: int = 10**_MAX_DIGITS


class RangeKind(Enum):
    """What to do with a Range header."""

    IGNORE = "ignore"  # invalid, foreign unit or over the limits: send 200 with everything
    UNSATISFIABLE = "unsatisfiable"  # valid but no range overlaps the file: 416
    SATISFIABLE = "satisfiable"  # send 206 with ``ranges``


@dataclass(frozen=True, slots=True)
class RangeResult:
    """Outcome of :func:`parse_range`.

    ``ranges`` holds sorted, coalesced, inclusive ``(start, end)`` pairs, all within
    ``[0, size - 1]``; it is non-empty exactly when ``kind`` is SATISFIABLE.
    """

    kind: RangeKind
    ranges: tuple[tuple[int, int], ...] = ()


_IGNORE = RangeResult(RangeKind.IGNORE)
_UNSATISFIABLE = RangeResult(RangeKind.UNSATISFIABLE)


def _digits_key(digits: str) -> tuple[int, str]:
    """Order key of a non-empty ASCII digit string without converting it to int."""
    stripped = digits.lstrip("0") or "0"
    return (len(stripped), stripped)


def _to_int(digits: str) -> int:
    stripped = digits.lstrip("0") or "0"
    if len(stripped) > _MAX_DIGITS:
        return _HUGE
    return int(stripped)


def parse_range(
    header: str,
    size: int,
    *,
    max_ranges: int = DEFAULT_MAX_RANGES,
    max_header_length: int = DEFAULT_MAX_HEADER_LENGTH,
) -> RangeResult:
    """Evaluate a ``Range`` header value against a representation of ``size`` bytes.

    Returns IGNORE for anything syntactically invalid (any bad range-spec poisons the whole
    header), a unit other than ``bytes``, more than ``max_ranges`` range-specs or a header
    longer than ``max_header_length``; UNSATISFIABLE when no range-spec overlaps the file;
    otherwise SATISFIABLE with sorted, merged inclusive ranges. Never raises for str input.
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    if len(header) > max_header_length:
        return _IGNORE
    unit, sep, range_set = header.partition("=")
    # Range units are case-insensitive (RFC 9110 14.1); no whitespace is allowed around "=".
    if not sep or unit.lower() != "bytes":
        return _IGNORE
    # 1#range-spec: OWS around commas, and empty list elements must be tolerated
    # (RFC 9110 5.6.1.2).
    specs = [spec.strip(" \t") for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if not specs or len(specs) > max_ranges:
        return _IGNORE

    wanted: list[tuple[int, int]] = []
    for spec in specs:
        match = _SPEC_RE.fullmatch(spec)
        if match is None:
            return _IGNORE
        first_s, last_s = match.groups()
        if first_s:
            if last_s and _digits_key(last_s) < _digits_key(first_s):
                return _IGNORE  # first > last is invalid syntax, not merely unsatisfiable
            first = _to_int(first_s)
            if first >= size:
                continue  # unsatisfiable on its own; others may still be served
            last = _to_int(last_s) if last_s else size - 1
            wanted.append((first, min(last, size - 1)))
        else:
            if not last_s:
                return _IGNORE  # a lone "-"
            suffix = _to_int(last_s)
            if suffix == 0 or size == 0:
                continue  # "-0" selects nothing
            wanted.append((max(0, size - suffix), size - 1))

    if not wanted:
        return _UNSATISFIABLE
    return RangeResult(RangeKind.SATISFIABLE, coalesce(wanted))


def coalesce(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sort inclusive ranges and merge overlapping or adjacent ones in O(n log n)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            prev_start, prev_end = merged[-1]
            if end > prev_end:
                merged[-1] = (prev_start, end)
        else:
            merged.append((start, end))
    return tuple(merged)


# --- dates -------------------------------------------------------------------------------

_MONTHS = {
    name: index
    for index, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}
_IMF_FIXDATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) ([A-Z][a-z]{2}) ([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_RFC850 = re.compile(
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    r"([0-9]{2})-([A-Z][a-z]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_ASCTIME = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ 0-9][0-9]) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})"
)


def _timestamp(year: int, month_name: str, day: int, hh: int, mm: int, ss: int) -> int | None:
    month = _MONTHS.get(month_name)
    if month is None or not (1 <= day <= 31 and hh <= 23 and mm <= 59 and ss <= 60):
        return None
    return calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0))


def parse_http_date(value: str) -> int | None:
    """Parse an HTTP-date (IMF-fixdate, RFC 850 or asctime; RFC 9110 5.6.7) to epoch seconds.

    Returns None for anything else; callers then treat the validator as not matching.
    """
    value = value.strip()
    if match := _IMF_FIXDATE.fullmatch(value):
        day, mon, year, hh, mm, ss = match.groups()
        return _timestamp(int(year), mon, int(day), int(hh), int(mm), int(ss))
    if match := _RFC850.fullmatch(value):
        day, mon, yy, hh, mm, ss = match.groups()
        # Two-digit years: RFC 9110 says a date more than 50 years in the future is in the
        # past century; a fixed pivot is enough for validators of files on disk.
        year = 2000 + int(yy) if int(yy) < 70 else 1900 + int(yy)
        return _timestamp(year, mon, int(day), int(hh), int(mm), int(ss))
    if match := _ASCTIME.fullmatch(value):
        mon, day, hh, mm, ss, year = match.groups()
        return _timestamp(int(year), mon, int(day), int(hh), int(mm), int(ss))
    return None


def format_http_date(timestamp: float) -> str:
    """Format epoch seconds as an IMF-fixdate (the only form a server may generate)."""
    return formatdate(int(timestamp), usegmt=True)


def last_modified_is_strong(mtime: float, now: float) -> bool:
    """Whether Last-Modified may serve as a strong validator (RFC 9110 8.8.2.2).

    Only when the file's mtime is at least one second older than the response's Date: a
    file modified within the current second could change again without its date changing.
    """
    return now - mtime >= 1.0


# --- entity tags ---------------------------------------------------------------------------

_ETAG_RE = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def make_etag(stat: os.stat_result) -> str:
    """Strong, quoted ETag from inode, size and nanosecond mtime.

    All three change when a recording is replaced (new inode), appended to (size) or
    rewritten in place (mtime), so equal tags mean byte-identical content in practice.
    """
    return f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"'


def parse_etag_list(value: str) -> list[tuple[bool, str]] | None:
    """Parse ``#entity-tag`` into ``(is_weak, opaque_tag_with_quotes)`` pairs.

    Returns None for ``*`` (matches any current representation) and an empty list when the
    value is malformed (which then matches nothing).
    """
    value = value.strip()
    if value == "*":
        return None
    tags: list[tuple[bool, str]] = []
    for item in value.split(","):
        item = item.strip(" \t")
        if not item:
            continue
        match = _ETAG_RE.fullmatch(item)
        if match is None:
            return []
        tags.append((match.group(1) is not None, f'"{match.group(2)}"'))
    return tags


def evaluate_if_range(
    if_range: str | None,
    etag: str,
    last_modified_http_date: str,
    *,
    last_modified_strong: bool = True,
) -> bool:
    """Decide whether a Range header may be honoured given If-Range (RFC 9110 13.1.5).

    True (honour Range) when there is no If-Range, when it is a strong entity-tag equal to
    ``etag``, or when it is an HTTP-date equal to Last-Modified and ``last_modified_strong``
    (see :func:`last_modified_is_strong`). Weak tags, stale tags, other or unparseable
    dates -> False (send the whole representation with 200).
    """
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith("W/"):
        return False  # If-Range requires strong comparison; a weak tag never matches
    if value.startswith('"'):
        return _ETAG_RE.fullmatch(value) is not None and value == etag
    if not last_modified_strong:
        return False
    presented = parse_http_date(value)
    return presented is not None and presented == parse_http_date(last_modified_http_date)


class Precondition(Enum):
    """Result of evaluating If-Match / If-Unmodified-Since / If-None-Match / IMS."""

    PROCEED = 200
    NOT_MODIFIED = 304
    PRECONDITION_FAILED = 412


def evaluate_preconditions(
    method: str,
    etag: str,
    last_modified: int,
    *,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    if_unmodified_since: str | None = None,
) -> Precondition:
    """Evaluate the conditional headers in RFC 9110 13.2.2 order for a GET/HEAD.

    ``last_modified`` is the whole-second epoch time sent as Last-Modified. If-Match uses
    strong comparison, If-None-Match weak comparison; If-Unmodified-Since is only looked at
    without If-Match and If-Modified-Since only without If-None-Match. Unparseable dates are
    ignored, as the RFC requires.
    """
    if if_match is not None:
        tags = parse_etag_list(if_match)
        if tags is not None and not any(not weak and tag == etag for weak, tag in tags):
            return Precondition.PRECONDITION_FAILED
    elif if_unmodified_since is not None:
        date = parse_http_date(if_unmodified_since)
        if date is not None and last_modified > date:
            return Precondition.PRECONDITION_FAILED

    safe = method in ("GET", "HEAD")
    if if_none_match is not None:
        tags = parse_etag_list(if_none_match)
        if tags is None or any(tag == etag for _weak, tag in tags):
            return Precondition.NOT_MODIFIED if safe else Precondition.PRECONDITION_FAILED
    elif if_modified_since is not None and safe:
        date = parse_http_date(if_modified_since)
        if date is not None and last_modified <= date:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


# --- multipart/byteranges ------------------------------------------------------------------

_TOKEN_SAFE = re.compile(r"[\x20-\x7e]*")


def make_boundary() -> str:
    """Random multipart boundary; 128 bits make a collision with file bytes negligible."""
    return secrets.token_hex(16)


def multipart_parts(
    ranges: Sequence[tuple[int, int]], size: int, content_type: str, boundary: str
) -> list[tuple[bytes, int, int]]:
    """Per-part ``(header_bytes, start, end_inclusive)`` of a multipart/byteranges body.

    The header of every part but the first starts with the CRLF that ends the previous
    part's data, so the body is ``header0 data0 header1 data1 ... trailer`` where the data
    are raw file slices that can each go out with sendfile.
    """
    if not _TOKEN_SAFE.fullmatch(content_type) or not _TOKEN_SAFE.fullmatch(boundary):
        raise ValueError("content type and boundary must be printable ASCII (no CR/LF)")
    parts: list[tuple[bytes, int, int]] = []
    for index, (start, end) in enumerate(ranges):
        lead = "--" if index == 0 else "\r\n--"
        header = (
            f"{lead}{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n"
        )
        parts.append((header.encode("ascii"), start, end))
    return parts


def multipart_trailer(boundary: str) -> bytes:
    """Closing delimiter of a multipart/byteranges body."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def multipart_content_length(parts: Sequence[tuple[bytes, int, int]], boundary: str) -> int:
    """Exact Content-Length of the body built from :func:`multipart_parts` plus trailer."""
    return sum(len(header) + end - start + 1 for header, start, end in parts) + len(
        multipart_trailer(boundary)
    )
