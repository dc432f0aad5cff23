"""Read queries of the call store, as a mixin of :class:`helpers.store.core.CallStore`.

Kept apart from the writer (helpers/store/core.py) because they share nothing with it but the
read connections: every method here runs inside ``self._reader()``, one consistent WAL
snapshot, and may be called from any thread off the event loop (or through ``aread``).
"""

from __future__ import annotations

import html
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

__all__ = ["StoreQueries", "fts_query", "iso_utc", "message_url"]

# Snippet markers that cannot occur in transcript text; the snippet is HTML-escaped first
# and only then are they turned into <mark> tags, so transcript text can never inject HTML.
_MARK_OPEN = "\x02"
_MARK_CLOSE = "\x03"

# Transcript rows to use for a call: the caller's 'final' segments if it has any, else the
# 'live' ones, and always the server's lines (they are never re-recognised). Used by search
# so a call with both caller transcripts does not hit twice for the same words.
_TRANSCRIPT_KIND_SQL = (
    "(s.speaker = 'server' OR s.kind = 'final' OR NOT EXISTS "
    "(SELECT 1 FROM segments f WHERE f.call_uuid = s.call_uuid AND f.kind = 'final'))"
)


def message_url(call_uuid: str, name: str) -> str:
    """Where the API serves a voicemail message (Range-capable)."""
    return f"/api/calls/{call_uuid}/messages/{name}.wav"


def _message(call_uuid: str, row: sqlite3.Row) -> dict[str, Any]:
    return {
        "name": row["name"],
        "url": message_url(call_uuid, row["name"]),
        "start": row["start"],
        "seconds": row["seconds"],
        "stopped_by": row["stopped_by"],
        "transcript": row["transcript"],
        "created_at": iso_utc(row["created_at"]),
    }


def iso_utc(ts: float | None) -> str | None:
    """Unix time to ``2026-11-22T00:00:00.000Z`` (None stays None)."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


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


def _snippet_html(raw: str | None) -> str | None:
    if raw is None:
        return None
    return html.escape(raw).replace(_MARK_OPEN, "<mark>").replace(_MARK_CLOSE, "</mark>")


def _json_load(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default



class StoreQueries:
    """The read side: the API's call shape, listings with filters, search, jobs, audit."""

    def _reader(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by CallStore

    def get_call(self, uuid: str) -> dict[str, Any] | None:
        """The call in the API's shape (see web/api.py), or None."""
        with self._reader() as conn:
            row = conn.execute("SELECT * FROM calls WHERE uuid=?", (uuid,)).fetchone()
            if row is None:
                return None
            has_final = conn.execute(
                "SELECT 1 FROM segments WHERE call_uuid=? AND kind='final' LIMIT 1", (uuid,)
            ).fetchone()
            # Both sides interleaved by time; at equal starts the server (who spoke first
            # in a turn) before the caller.
            segs = conn.execute(
                'SELECT start, "end", text, confidence, latency_ms, speaker, interrupted '
                "FROM segments WHERE call_uuid=? AND (kind=? OR speaker='server') "
                "ORDER BY start, speaker DESC, id",
                (uuid, "final" if has_final else "live"),
            ).fetchall()
            messages = conn.execute(
                "SELECT * FROM messages WHERE call_uuid=? ORDER BY start, created_at", (uuid,)
            ).fetchall()
            ivr = conn.execute(
                "SELECT path, variables, result FROM ivr WHERE call_uuid=?", (uuid,)
            ).fetchone()
            summary = conn.execute(
                "SELECT title, text, method, model FROM summaries WHERE call_uuid=?", (uuid,)
            ).fetchone()
            recs = conn.execute(
                "SELECT format FROM recordings WHERE call_uuid=? ORDER BY format", (uuid,)
            ).fetchall()
            jobs = conn.execute(
                "SELECT step, status FROM jobs WHERE call_uuid=? ORDER BY id", (uuid,)
            ).fetchall()
        return {
            "uuid": row["uuid"],
            "audiosocket_uuid": row["audiosocket_uuid"],
            "app": row["app"],
            "rate": row["rate"],
            "peer": row["peer"],
            "caller": row["caller"],
            "started_at": iso_utc(row["started_at"]),
            "ended_at": iso_utc(row["ended_at"]),
            "duration": row["duration"],
            "end_reason": row["end_reason"],
            "live": row["ended_at"] is None,
            "frames_in": row["frames_in"],
            "frames_out": row["frames_out"],
            "transcript": [
                {**dict(s), "interrupted": bool(s["interrupted"])} for s in segs
            ],
            "messages": [_message(row["uuid"], m) for m in messages],
            "ivr": None
            if ivr is None
            else {
                "path": _json_load(ivr["path"], []),
                "variables": _json_load(ivr["variables"], {}),
                "result": ivr["result"],
            },
            "summary": None if summary is None else dict(summary),
            "recordings": {
                r["format"]: (
                    f"/api/calls/{row['uuid']}/peaks.json" if r["format"] == "peaks"
                    else f"/api/calls/{row['uuid']}/recording.{r['format']}"
                )
                for r in recs
            },
            "jobs": {j["step"]: j["status"] for j in jobs},
        }

    def get_call_row(self, uuid: str) -> dict[str, Any] | None:
        """The raw calls row (unix times, meta parsed), or None."""
        with self._reader() as conn:
            row = conn.execute("SELECT * FROM calls WHERE uuid=?", (uuid,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["meta"] = _json_load(out["meta"], {})
        return out

    def call_ids(self) -> Iterator[str]:
        """Every call's id, streamed (the server's index of taken ids is built from it)."""
        with self._reader() as conn:
            for (call_id,) in conn.execute("SELECT uuid FROM calls"):
                yield call_id

    def recordings_for(self, call_uuid: str) -> dict[str, dict[str, Any]]:
        """The call's stored files by format: {fmt: {path, bytes, duration, created_at}}."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT format, path, bytes, duration, created_at FROM recordings "
                "WHERE call_uuid=?",
                (call_uuid,),
            ).fetchall()
        return {r["format"]: {k: r[k] for k in r.keys() if k != "format"} for r in rows}

    def messages_for(self, call_uuid: str) -> list[dict[str, Any]]:
        """The call's voicemail messages as stored (path relative to the data dir)."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT * FROM messages WHERE call_uuid=? ORDER BY start, created_at",
                (call_uuid,),
            ).fetchall()
        return [dict(r) for r in rows]

    def list_calls(
        self,
        limit: int = 50,
        offset: int = 0,
        *,
        app: str | None = None,
        end_reason: str | None = None,
        since: float | None = None,
        until: float | None = None,
        has_summary: bool | None = None,
        ivr_result: str | None = None,
        q: str | None = None,
        uuid: str | None = None,
    ) -> dict[str, Any]:
        """Calls newest first as ``{"items": [...], "total": N}``.

        ``since`` is inclusive, ``until`` exclusive (unix times, on started_at). ``q`` keeps
        calls whose transcript (either speaker) matches and adds a ``snippet`` (HTML-safe,
        ``<mark>``) and its ``snippet_speaker`` per item. ``uuid`` keeps every call that
        arrived with that AudioSocket UUID (a fixed one in a dialplan gives many), or whose
        id it is.
        """
        where: list[str] = []
        params: list[Any] = []
        if uuid is not None:
            where.append("(c.audiosocket_uuid = ? OR c.uuid = ?)")
            params += [uuid, uuid]
        if app is not None:
            where.append("c.app = ?")
            params.append(app)
        if end_reason is not None:
            where.append("c.end_reason = ?")
            params.append(end_reason)
        if since is not None:
            where.append("c.started_at >= ?")
            params.append(since)
        if until is not None:
            where.append("c.started_at < ?")
            params.append(until)
        if has_summary is not None:
            exists = "EXISTS (SELECT 1 FROM summaries s WHERE s.call_uuid = c.uuid)"
            where.append(exists if has_summary else f"NOT {exists}")
        if ivr_result is not None:
            where.append("EXISTS (SELECT 1 FROM ivr i WHERE i.call_uuid = c.uuid AND i.result = ?)")
            params.append(ivr_result)
        match: str | None = None
        if q is not None and q.strip():
            match = fts_query(q)
            if match is None:  # nothing searchable in q: nothing can match
                return {"items": [], "total": 0}
            where.append(
                "c.uuid IN (SELECT s.call_uuid FROM segments_fts "
                "JOIN segments s ON s.id = segments_fts.rowid "
                f"WHERE segments_fts MATCH ? AND {_TRANSCRIPT_KIND_SQL})"
            )
            params.append(match)
        where_sql = f"WHERE {' AND '.join(where)}" if where else ""
        with self._reader() as conn:
            # With a text query the match set is the costly part: count it in the same
            # pass as the page (a window count) instead of evaluating it twice.
            window = ", count(*) OVER () AS total_rows" if match is not None else ""
            rows = conn.execute(
                "SELECT c.uuid, c.audiosocket_uuid, c.app, c.rate, c.caller, c.started_at, "
                "c.ended_at, c.duration, "
                f"c.end_reason, sm.title AS summary_title{window} FROM calls c "
                f"LEFT JOIN summaries sm ON sm.call_uuid = c.uuid {where_sql} "
                "ORDER BY c.started_at DESC, c.uuid DESC LIMIT ? OFFSET ?",
                [*params, max(0, limit), max(0, offset)],
            ).fetchall()
            if window and rows:
                total = rows[0]["total_rows"]
            else:
                total = conn.execute(
                    f"SELECT count(*) FROM calls c {where_sql}", params
                ).fetchone()[0]
            snippets: dict[str, tuple[str | None, str | None]] = {}
            if match is not None:
                for r in rows:
                    snippets[r["uuid"]] = self._call_snippet(conn, match, r["uuid"])
        items = []
        for r in rows:
            item = {
                "uuid": r["uuid"],
                "audiosocket_uuid": r["audiosocket_uuid"],
                "app": r["app"],
                "rate": r["rate"],
                "caller": r["caller"],
                "started_at": iso_utc(r["started_at"]),
                "ended_at": iso_utc(r["ended_at"]),
                "duration": r["duration"],
                "end_reason": r["end_reason"],
                "live": r["ended_at"] is None,
                "summary_title": r["summary_title"],
            }
            if match is not None:
                snip, speaker = snippets.get(r["uuid"], (None, None))
                item["snippet"] = snip
                item["snippet_speaker"] = speaker
            items.append(item)
        return {"items": items, "total": int(total)}

    @staticmethod
    def _call_snippet(
        conn: sqlite3.Connection, match: str, call_uuid: str
    ) -> tuple[str | None, str | None]:
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
            f"AND s.call_uuid = ? AND {_TRANSCRIPT_KIND_SQL} "
            "ORDER BY segments_fts.rowid LIMIT 1",
            (_MARK_OPEN, _MARK_CLOSE, match, lo, hi, call_uuid),
        ).fetchone()
        return (None, None) if row is None else (_snippet_html(row[0]), row[1])

    def search(self, q: str, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """Transcript segments matching ``q``, newest first, with HTML-safe ``<mark>`` snippets.

        ``q`` is free text (see :func:`fts_query`); it can never cause an FTS syntax error.
        Newest first rather than by bm25 rank: FTS5 yields rowid order for free, so a page
        costs O(limit) even for a word in every call, where ranking must score every hit.
        Both speakers are searched (the server's lines as spoken, the caller's final
        transcript or else the live one). Returns ``{"items": [{call_uuid, segment_id,
        start, end, kind, speaker, snippet, app, started_at}], "total": N}``.
        """
        match = fts_query(q)
        if match is None:
            return {"items": [], "total": 0}
        base = (
            "FROM segments_fts JOIN segments s ON s.id = segments_fts.rowid "
            "JOIN calls c ON c.uuid = s.call_uuid "
            f"WHERE segments_fts MATCH ? AND {_TRANSCRIPT_KIND_SQL}"
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
        items = [
            {
                "call_uuid": r["call_uuid"],
                "segment_id": r["segment_id"],
                "start": r["start"],
                "end": r["end"],
                "kind": r["kind"],
                "speaker": r["speaker"],
                "snippet": _snippet_html(r["snip"]),
                "app": r["app"],
                "started_at": iso_utc(r["started_at"]),
            }
            for r in rows
        ]
        return {"items": items, "total": int(total)}

    def audit_log(self, limit: int = 100, call_uuid: str | None = None) -> list[dict[str, Any]]:
        """Most recent audit entries first (optionally of one call)."""
        sql = "SELECT id, at, action, call_uuid, detail FROM audit"
        params: list[Any] = []
        if call_uuid is not None:
            sql += " WHERE call_uuid=?"
            params.append(call_uuid)
        sql += " ORDER BY at DESC, id DESC LIMIT ?"
        params.append(limit)
        with self._reader() as conn:
            return [dict(r) for r in conn.execute(sql, params)]

    def execute_read(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Escape hatch for ad-hoc reads (CLI, tests); the connection is query-only."""
        with self._reader() as conn:
            return [dict(r) for r in conn.execute(sql, params)]
