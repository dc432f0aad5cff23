"""Transcript lines of both speakers, and full-text search over them.

Writes: a live line as it is heard or spoken (:meth:`SegmentQueries.add_segment`), and the
post-call transcript that replaces the caller's live lines
(:meth:`SegmentQueries.replace_final_transcript`). Reads: :meth:`SegmentQueries.search`, by
FTS5, with the matched words as :class:`helpers.store.rows.Highlight` pieces.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from helpers.store.core import SPEAKERS, StoreCore
from helpers.store.rows import Highlight, SearchHit, SearchPage

__all__ = ["TRANSCRIPT_KIND_SQL", "SegmentQueries", "call_snippet", "fts_query", "highlight"]

# Snippet markers that cannot occur in transcript text: FTS5 puts them around each match,
# and :func:`highlight` cuts the snippet into marked and unmarked pieces at them.
_MARK_OPEN = "\x02"
_MARK_CLOSE = "\x03"

#: Transcript rows to use for a call: the caller's 'final' segments if it has any, else the
#: 'live' ones, and always the server's lines (they are never re-recognised). Used by search
#: so a call with both caller transcripts does not hit twice for the same words.
TRANSCRIPT_KIND_SQL = (
    "(s.speaker = 'server' OR s.kind = 'final' OR NOT EXISTS "
    "(SELECT 1 FROM segments f WHERE f.call_uuid = s.call_uuid AND f.kind = 'final'))"
)


def fts_query(q: str) -> str | None:
    """Turn free user text into a safe FTS5 query, or None when nothing is searchable.

    Every whitespace-separated token becomes a quoted phrase (internal quotes doubled), so
    FTS5 operators typed by a user (``OR``, ``NEAR(``, ``*``, ``"``, ``col:``) are plain
    words and can never be a syntax error. Tokens without a letter or digit are dropped:
    they index to nothing. Phrases are ANDed (FTS5's implicit operator).
    """
    phrases = [
        '"' + token.replace('"', '""') + '"'
        for token in q.split()
        if any(ch.isalnum() for ch in token)
    ]
    return " ".join(phrases) if phrases else None


def highlight(raw: str | None) -> Highlight | None:
    """An FTS5 snippet with the markers above as pieces of text, marked or not."""
    if raw is None:
        return None
    pieces: list[tuple[str, bool]] = []
    for i, part in enumerate(raw.split(_MARK_OPEN)):
        if i == 0:
            marked, rest = "", part
        else:
            marked, _, rest = part.partition(_MARK_CLOSE)
            if marked:
                pieces.append((marked, True))
        if rest:
            pieces.append((rest, False))
    return Highlight(tuple(pieces))


def call_snippet(
    conn: sqlite3.Connection, match: str, call_uuid: str
) -> tuple[Highlight | None, str | None]:
    """The call's first matching segment, highlighted, and who said it.

    A plain ``MATCH ? AND call_uuid = ?`` walks the whole doclist of the query for
    every call on the page; bounding the FTS rowid to the call's id range lets FTS5
    seek straight to it.
    """
    lo, hi = conn.execute(
        "SELECT min(id), max(id) FROM segments WHERE call_uuid=?", (call_uuid,)
    ).fetchone()
    if lo is None:
        return None, None
    row = conn.execute(
        "SELECT snippet(segments_fts, 0, ?, ?, '…', 12), s.speaker FROM segments_fts "
        "JOIN segments s ON s.id = segments_fts.rowid "
        "WHERE segments_fts MATCH ? AND segments_fts.rowid BETWEEN ? AND ? "
        f"AND s.call_uuid = ? AND {TRANSCRIPT_KIND_SQL} "
        "ORDER BY segments_fts.rowid LIMIT 1",
        (_MARK_OPEN, _MARK_CLOSE, match, lo, hi, call_uuid),
    ).fetchone()
    return (None, None) if row is None else (highlight(row[0]), row[1])


class SegmentQueries(StoreCore):
    """Transcript lines: append, replace the caller's with the post-call pass, search."""

    def add_segment(
        self,
        call_uuid: str,
        start: float,
        end: float,
        text: str,
        confidence: float | None,
        latency_ms: float | None,
        kind: str = "live",
        *,
        speaker: str = "caller",
        interrupted: bool = False,
    ) -> concurrent.futures.Future[int]:
        """Append one transcript line; the future gives its id.

        ``speaker`` is ``caller`` (recognised speech) or ``server`` (what the server said:
        stored as ``live``, and shown beside the live or the final caller transcript);
        ``interrupted`` marks a server line cut short.
        """
        if speaker not in SPEAKERS:
            raise ValueError(f"unknown speaker {speaker!r}")
        now = time.time()
        cut = int(bool(interrupted))

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                'INSERT INTO segments (call_uuid, start, "end", text, confidence, latency_ms, '
                "kind, created_at, speaker, interrupted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (call_uuid, start, end, text, confidence, latency_ms, kind, now, speaker, cut),
            )
            return int(cur.lastrowid or 0)

        return self._submit(op, "add_segment")

    def replace_final_transcript(
        self, call_uuid: str, segments: Sequence[dict[str, Any]]
    ) -> concurrent.futures.Future[None]:
        """Swap in the post-call transcript of the caller (dicts with start, end, text,
        confidence?, latency_ms?); live segments are kept but :meth:`get_call` prefers
        these. The server's lines are left as they are."""
        return self._submit(self.final_transcript_op(call_uuid, segments),
                            "replace_final_transcript")

    def final_transcript_op(
        self, call_uuid: str, segments: Sequence[dict[str, Any]]
    ) -> Callable[[sqlite3.Connection], None]:
        """The write of :meth:`replace_final_transcript`, not submitted: the transcript job
        hands it to its fenced ``finish_job`` so segments and job commit together."""
        now = time.time()
        rows = [
            (
                call_uuid,
                float(s["start"]),
                float(s["end"]),
                str(s["text"]),
                s.get("confidence"),
                s.get("latency_ms"),
                now,
            )
            for s in segments
        ]

        def op(conn: sqlite3.Connection) -> None:
            # Only the caller's: what the server said is known, never re-recognised.
            conn.execute(
                "DELETE FROM segments WHERE call_uuid=? AND kind='final' AND speaker='caller'",
                (call_uuid,),
            )
            conn.executemany(
                'INSERT INTO segments (call_uuid, start, "end", text, confidence, latency_ms, '
                "kind, created_at) VALUES (?, ?, ?, ?, ?, ?, 'final', ?)",
                rows,
            )

        return op

    def search(self, q: str, limit: int = 20, offset: int = 0) -> SearchPage:
        """Transcript segments matching ``q``, newest first, with highlighted snippets.

        ``q`` is free text (see :func:`fts_query`); it can never cause an FTS syntax error.
        Newest first rather than by bm25 rank: FTS5 yields rowid order for free, so a page
        costs O(limit) even for a word in every call, where ranking must score every hit.
        Both speakers are searched (the server's lines as spoken, the caller's final
        transcript or else the live one).
        """
        match = fts_query(q)
        if match is None:
            return SearchPage((), 0)
        base = (
            "FROM segments_fts JOIN segments s ON s.id = segments_fts.rowid "
            "JOIN calls c ON c.uuid = s.call_uuid "
            f"WHERE segments_fts MATCH ? AND {TRANSCRIPT_KIND_SQL}"
        )
        with self._reader() as conn:
            total = conn.execute(f"SELECT count(*) {base}", (match,)).fetchone()[0]
            rows = conn.execute(
                'SELECT s.id AS segment_id, s.call_uuid, s.start, s."end", s.kind, '
                "s.speaker, c.app, c.started_at, "
                f"snippet(segments_fts, 0, ?, ?, '…', 12) AS snip {base} "
                "ORDER BY segments_fts.rowid DESC LIMIT ? OFFSET ?",
                (_MARK_OPEN, _MARK_CLOSE, match, max(0, limit), max(0, offset)),
            ).fetchall()
        items = tuple(
            SearchHit(r["call_uuid"], r["segment_id"], r["start"], r["end"], r["kind"],
                      r["speaker"], highlight(r["snip"]), r["app"], r["started_at"])
            for r in rows
        )
        return SearchPage(items, int(total))
