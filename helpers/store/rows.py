"""What the store's queries return: frozen rows with unix times and parsed JSON columns.

The rows say what is stored, nothing about how it is shown: dates stay unix seconds, search
highlights are text pieces marked or not, file paths are as stored. The HTTP API's JSON
(ISO dates, URLs, ``<mark>`` HTML) is built from them in ``web/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AuditRow",
    "CallDetail",
    "CallListItem",
    "CallPage",
    "CallRow",
    "Highlight",
    "IvrRow",
    "JobRow",
    "LineRow",
    "MessageRow",
    "RecordingRow",
    "SearchHit",
    "SearchPage",
    "SummaryRow",
]


@dataclass(frozen=True)
class CallRow:
    """One row of ``calls``: times in unix seconds, ``meta`` parsed."""

    uuid: str
    audiosocket_uuid: str | None
    app: str
    rate: int
    peer: str | None
    caller: str | None
    started_at: float
    ended_at: float | None
    duration: float | None
    end_reason: str | None
    frames_in: int
    frames_out: int
    meta: Mapping[str, Any]

    @property
    def live(self) -> bool:
        """The call has not ended (or ended in a crash not yet closed)."""
        return self.ended_at is None


@dataclass(frozen=True)
class LineRow:
    """One transcript line of either speaker; seconds on the call's timeline."""

    start: float
    end: float
    text: str
    confidence: float | None
    latency_ms: float | None
    speaker: str
    interrupted: bool


@dataclass(frozen=True)
class MessageRow:
    """A voicemail message: ``path`` relative to the data directory."""

    call_uuid: str
    name: str
    path: str
    start: float | None
    seconds: float
    stopped_by: str | None
    transcript: str | None
    created_at: float


@dataclass(frozen=True)
class IvrRow:
    """Where a caller went in the IVR, the variables it set, and how it ended."""

    path: list[Any]
    variables: Mapping[str, Any]
    result: str | None


@dataclass(frozen=True)
class SummaryRow:
    """The call's summary and how it was made."""

    title: str
    text: str
    method: str
    model: str | None


@dataclass(frozen=True)
class RecordingRow:
    """A stored file of a call (``format``: wav, m4a, mp3 or peaks)."""

    format: str
    path: str
    bytes: int
    duration: float | None
    created_at: float


@dataclass(frozen=True)
class CallDetail:
    """Everything about one call: the row, both speakers' lines interleaved by time (the
    caller's final transcript when there is one, else the live one), messages, IVR, summary,
    the formats stored and each post-call step's status (in job order)."""

    call: CallRow
    transcript: tuple[LineRow, ...]
    messages: tuple[MessageRow, ...]
    ivr: IvrRow | None
    summary: SummaryRow | None
    recordings: tuple[str, ...]
    jobs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Highlight:
    """A search snippet as pieces of text, each marked (a query term) or not."""

    pieces: tuple[tuple[str, bool], ...]


@dataclass(frozen=True)
class CallListItem:
    """One call of a listing; ``snippet`` and ``snippet_speaker`` only with a text query."""

    uuid: str
    audiosocket_uuid: str | None
    app: str
    rate: int
    caller: str | None
    started_at: float
    ended_at: float | None
    duration: float | None
    end_reason: str | None
    summary_title: str | None
    snippet: Highlight | None = None
    snippet_speaker: str | None = None

    @property
    def live(self) -> bool:
        """The call has not ended."""
        return self.ended_at is None


@dataclass(frozen=True)
class CallPage:
    """A page of calls, newest first, and how many match in all. ``searched``: a text
    query was given (the items carry snippets)."""

    items: tuple[CallListItem, ...]
    total: int
    searched: bool = False


@dataclass(frozen=True)
class SearchHit:
    """A transcript line that matched a search, with its call's app and start."""

    call_uuid: str
    segment_id: int
    start: float
    end: float
    kind: str
    speaker: str
    snippet: Highlight | None
    app: str
    started_at: float


@dataclass(frozen=True)
class SearchPage:
    """A page of search hits, newest first, and how many match in all."""

    items: tuple[SearchHit, ...]
    total: int


@dataclass(frozen=True)
class JobRow:
    """One post-call step of one call."""

    id: int
    call_uuid: str
    step: str
    status: str
    attempts: int
    error: str | None
    duration: float | None
    not_before: float
    updated_at: float
    #: Who holds (or last held) the job: ``<node>/<pid>/<n>``; None before its first claim.
    worker: str | None = None
    #: When a running job's lease ends unless its worker extends it.
    lease_until: float | None = None


@dataclass(frozen=True)
class AuditRow:
    """One audit entry (it outlives the call it names)."""

    id: int
    at: float
    action: str
    call_uuid: str | None
    detail: str
