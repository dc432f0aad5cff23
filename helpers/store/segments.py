"""Transcript lines of both speakers, and full-text search over them.

Writes: a live line as it is heard or spoken (:meth:`SegmentQueries.add_segment`), and the
post-call transcript that replaces the caller's live lines
(:meth:`SegmentQueries.replace_final_transcript`). Reads: :meth:`SegmentQueries.search`, by
FTS5 on SQLite or a ``tsvector`` on PostgreSQL (the dialect's :class:`TextSearch`), with the
matched words as :class:`helpers.store.rows.Highlight` pieces.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

from helpers.store.core import SPEAKERS, StoreCore
from helpers.store.dialect import Conn, TextSearch, highlight
from helpers.store.rows import SearchHit, SearchPage

__all__ = ["TRANSCRIPT_KIND_SQL", "SegmentQueries", "fts_query", "highlight"]

#: Transcript rows to use for a call: the caller's 'final' segments if it has any, else the
#: 'live' ones, and always the server's lines (they are never re-recognised). Used by search
#: so a call with both caller transcripts does not hit twice for the same words.
TRANSCRIPT_KIND_SQL = (
    "(s.speaker = 'server' OR s.kind = 'final' OR NOT EXISTS "
    "(SELECT 1 FROM segments f WHERE f.call_uuid = s.call_uuid AND f.kind = 'final'))"
)


def fts_query(q: str) -> str | None:
    """SQLite's FTS5 query for free user text (see :meth:`TextSearch.query`)."""
    return TextSearch().query(q)


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

        def op(conn: Conn) -> int:
            row = conn.execute(
                'INSERT INTO segments (call_uuid, start, "end", text, confidence, latency_ms, '
                "kind, created_at, speaker, interrupted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (call_uuid, start, end, text, confidence, latency_ms, kind, now, speaker, cut),
            ).fetchone()
            return int(row[0])

        # Lazy: a line is read by search and the call page, never the instant it is said.
        return self._submit(op, "add_segment", lazy=True, single=True)

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
    ) -> Callable[[Conn], None]:
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

        def op(conn: Conn) -> None:
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

        ``q`` is free text (see the dialect's :meth:`TextSearch.query`); it can never cause
        a syntax error. Newest first rather than by rank: FTS5 yields rowid order for free,
        so a page costs O(limit) even for a word in every call, where ranking must score
        every hit. Both speakers are searched (the server's lines as spoken, the caller's
        final transcript or else the live one).
        """
        fts = self._dialect.fts
        match = fts.query(q)
        if match is None:
            return SearchPage((), 0)
        base = (
            f"FROM {fts.source} JOIN calls c ON c.uuid = s.call_uuid "
            f"WHERE {fts.match} AND {TRANSCRIPT_KIND_SQL}"
        )
        columns = ('s.id AS segment_id, s.call_uuid, s.start, s."end", s.kind, s.speaker, '
                   "c.app, c.started_at")
        sql, params = fts.page(columns, base, match, max(0, limit), max(0, offset))
        with self._reader() as conn:
            total = conn.execute(f"SELECT count(*) {base}", (match,)).fetchone()[0]
            rows = conn.execute(sql, params).fetchall()
        items = tuple(
            SearchHit(r["call_uuid"], r["segment_id"], r["start"], r["end"], r["kind"],
                      r["speaker"], fts.snippet(r), r["app"], r["started_at"])
            for r in rows
        )
        return SearchPage(items, int(total))
