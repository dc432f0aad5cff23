"""Calls and what hangs off them: the call row, IVR, summary, stored files, the audit
trail, listings with filters, and the whole call in one consistent read."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from helpers.recorder import wav_seconds
from helpers.storage import LocalStorage
from helpers.store.core import RECORDING_FORMATS, STORE_ERRORS, StoreCore
from helpers.store.dialect import Conn
from helpers.store.messages import message_row
from helpers.store.rows import (
    AuditRow,
    CallDetail,
    CallListItem,
    CallPage,
    CallRow,
    Highlight,
    IvrRow,
    LineRow,
    RecordingRow,
    SummaryRow,
)
from helpers.store.segments import TRANSCRIPT_KIND_SQL

__all__ = ["CallQueries", "call_row"]

log = structlog.get_logger(__name__)


def _json_load(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def call_row(r: Any) -> CallRow:
    """A ``calls`` row as its typed row (``meta`` parsed)."""
    return CallRow(
        r["uuid"], r["audiosocket_uuid"], r["app"], r["rate"], r["peer"], r["caller"],
        r["started_at"], r["ended_at"], r["duration"], r["end_reason"], r["frames_in"],
        r["frames_out"], _json_load(r["meta"], {}),
    )


class CallQueries(StoreCore):
    """The calls table and the tables of one call (IVR, summary, recordings), the audit
    trail, and the reads across them."""

    #: The files root (``config.shared_path``) recording paths are stored relative to, set
    #: by the composition root; None: paths are stored as given (absolute, as before).
    files: LocalStorage | None = None

    # ---- writes --------------------------------------------------------------------

    def call_started(
        self,
        uuid: str,
        app: str,
        rate: int,
        peer: str | None,
        started_at: float,
        caller: str | None = None,
        meta: dict[str, Any] | None = None,
        audiosocket_uuid: str | None = None,
    ) -> concurrent.futures.Future[bool]:
        """Record a new call under its own id ``uuid``; the future says if it was new.

        A row already under that id is another call's and is never touched (the server
        gives a reused AudioSocket UUID a fresh id; see ``audiosocket.call.CallIds``). The
        call belongs to this store's node (``calls.node``).
        """
        meta_json = json.dumps(meta or {})
        node = self.node or None

        def op(conn: Conn) -> bool:
            cur = conn.execute(
                "INSERT INTO calls (uuid, app, rate, peer, started_at, caller, meta, "
                "audiosocket_uuid, node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(uuid) DO NOTHING",
                (uuid, app, rate, peer, started_at, caller, meta_json, audiosocket_uuid, node),
            )
            if cur.rowcount == 0:
                STORE_ERRORS.labels(kind="call_id_taken").inc()
                log.error("call_id_taken", call=uuid)
                return False
            return True

        return self._submit(op, "call_started")

    def call_ended(
        self,
        uuid: str,
        ended_at: float,
        end_reason: str,
        frames_in: int,
        frames_out: int,
    ) -> concurrent.futures.Future[None]:
        """Close a live call; duration is computed from its started_at. A call that has
        already ended keeps its end (nothing of a finished call is overwritten)."""

        def op(conn: Conn) -> None:
            conn.execute(
                "UPDATE calls SET ended_at=?, end_reason=?, frames_in=?, frames_out=?, "
                "duration=CASE WHEN ? > started_at THEN ? - started_at ELSE 0.0 END "
                "WHERE uuid=? AND ended_at IS NULL",
                (ended_at, end_reason, frames_in, frames_out, ended_at, ended_at, uuid),
            )

        return self._submit(op, "call_ended")

    def close_dangling_calls(
        self,
        ended_at: float | None = None,
        end_reason: str = "server_restart",
        *,
        recordings: Path | None = None,
    ) -> concurrent.futures.Future[int]:
        """At start-up: this node's calls left 'live' by a crash get an end; returns how
        many. Calls of other nodes sharing the store are theirs, live or not (calls from
        before ``calls.node`` existed have none and are closed by any node).

        Their duration is the last activity known, never the downtime: the length of the
        recording ``<recordings>/<call id>.wav`` when there is one, else the end of the last
        transcript segment, else 0; ``ended_at`` is ``started_at`` plus that (at most
        ``ended_at``, default now).
        """
        at = time.time() if ended_at is None else ended_at
        node = self.node or None

        def op(conn: Conn) -> int:
            rows = conn.execute(
                "SELECT c.uuid, c.started_at, (SELECT max(s.\"end\") FROM segments s "
                "WHERE s.call_uuid = c.uuid) FROM calls c WHERE c.ended_at IS NULL "
                "AND (c.node = ? OR c.node IS NULL)",
                (node,),
            ).fetchall()
            for call_id, started_at, last_segment in rows:
                seconds = None
                if recordings is not None:
                    seconds = wav_seconds(recordings / f"{call_id}.wav")
                if seconds is None:
                    seconds = float(last_segment or 0.0)
                seconds = max(0.0, min(seconds, at - started_at))
                conn.execute(
                    "UPDATE calls SET ended_at=?, end_reason=?, duration=? WHERE uuid=?",
                    (started_at + seconds, end_reason, seconds, call_id),
                )
            return len(rows)

        return self._submit(op, "close_dangling_calls")

    def set_ivr(
        self,
        call_uuid: str,
        path: Sequence[Any],
        variables: dict[str, Any],
        result: str | None,
    ) -> concurrent.futures.Future[None]:
        """Record (or overwrite) the IVR path taken, its variables and its outcome."""
        path_json = json.dumps(list(path))
        vars_json = json.dumps(variables)

        def op(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO ivr (call_uuid, path, variables, result) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(call_uuid) DO UPDATE SET path=excluded.path, "
                "variables=excluded.variables, result=excluded.result",
                (call_uuid, path_json, vars_json, result),
            )

        # Rewritten at every node of every call: it waits for company (the commit window)
        # as transcript lines do. The live view has the path from the call itself.
        return self._submit(op, "set_ivr", lazy=True, single=True)

    def set_summary(
        self,
        call_uuid: str,
        title: str,
        text: str,
        method: str,
        model: str | None = None,
        created_at: float | None = None,
    ) -> concurrent.futures.Future[None]:
        """Record (or overwrite) the call's summary."""
        at = time.time() if created_at is None else created_at

        def op(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO summaries (call_uuid, title, text, method, model, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(call_uuid) DO UPDATE SET "
                "title=excluded.title, text=excluded.text, method=excluded.method, "
                "model=excluded.model, created_at=excluded.created_at",
                (call_uuid, title, text, method, model, at),
            )

        return self._submit(op, "set_summary")

    def set_recording(
        self,
        call_uuid: str,
        fmt: str,
        path: str | Path,
        bytes: int,  # shadows a builtin: the column name, as in the brief
        duration: float | None,
    ) -> concurrent.futures.Future[None]:
        """Record (or overwrite) one stored file of the call: wav, m4a, mp3 or peaks. A path
        under :attr:`files`' root is stored relative to it (every node resolves it against
        its own mount of the shared directory: ``helpers.storage``)."""
        if fmt not in RECORDING_FORMATS:
            raise ValueError(f"unknown recording format {fmt!r}")
        stored = self.files.relative(path) if self.files is not None else str(path)
        now = time.time()
        size = bytes

        def op(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO recordings (call_uuid, format, path, bytes, duration, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(call_uuid, format) DO UPDATE SET "
                "path=excluded.path, bytes=excluded.bytes, duration=excluded.duration, "
                "created_at=excluded.created_at",
                (call_uuid, fmt, stored, size, duration, now),
            )

        return self._submit(op, "set_recording")

    def delete_recording(self, call_uuid: str, fmt: str) -> concurrent.futures.Future[None]:
        """Forget one stored file of the call (the caller deletes the file itself)."""

        def op(conn: Conn) -> None:
            conn.execute("DELETE FROM recordings WHERE call_uuid=? AND format=?", (call_uuid, fmt))

        return self._submit(op, "delete_recording")

    def audit(
        self, action: str, call_uuid: str | None, detail: str | dict[str, Any] = ""
    ) -> concurrent.futures.Future[None]:
        """Append to the audit trail (dict details are stored as JSON)."""
        now = time.time()
        text = detail if isinstance(detail, str) else json.dumps(detail)

        def op(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO audit (at, action, call_uuid, detail) VALUES (?, ?, ?, ?)",
                (now, action, call_uuid, text),
            )

        return self._submit(op, "audit")

    def delete_call(self, uuid: str) -> concurrent.futures.Future[bool]:
        """Delete a call and (by cascade) everything about it; the future says if it existed.

        Files on disk are the caller's business: read :meth:`recordings_for` and
        :meth:`messages_for` first.
        """

        def op(conn: Conn) -> bool:
            return bool(conn.execute("DELETE FROM calls WHERE uuid=?", (uuid,)).rowcount > 0)

        return self._submit(op, "delete_call")

    # ---- reads ---------------------------------------------------------------------

    def get_call(self, uuid: str) -> CallDetail | None:
        """Everything about the call, or None."""
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
                "SELECT * FROM messages WHERE call_uuid=? "
                "ORDER BY start NULLS FIRST, created_at",
                (uuid,),
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
        return CallDetail(
            call=call_row(row),
            transcript=tuple(
                LineRow(s["start"], s["end"], s["text"], s["confidence"], s["latency_ms"],
                        s["speaker"], bool(s["interrupted"]))
                for s in segs
            ),
            messages=tuple(message_row(m) for m in messages),
            ivr=None if ivr is None else IvrRow(
                _json_load(ivr["path"], []), _json_load(ivr["variables"], {}), ivr["result"]
            ),
            summary=None if summary is None else SummaryRow(
                summary["title"], summary["text"], summary["method"], summary["model"]
            ),
            recordings=tuple(r["format"] for r in recs),
            jobs=tuple((j["step"], j["status"]) for j in jobs),
        )

    def get_call_row(self, uuid: str) -> CallRow | None:
        """The call's own row, or None."""
        with self._reader() as conn:
            row = conn.execute("SELECT * FROM calls WHERE uuid=?", (uuid,)).fetchone()
        return None if row is None else call_row(row)

    def call_ids(self) -> Iterator[str]:
        """Every call's id, streamed (the server's index of taken ids is built from it)."""
        with self._reader() as conn:
            for (call_id,) in conn.execute("SELECT uuid FROM calls"):
                yield call_id

    def recordings_for(self, call_uuid: str) -> dict[str, RecordingRow]:
        """The call's stored files by format."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT format, path, bytes, duration, created_at FROM recordings "
                "WHERE call_uuid=?",
                (call_uuid,),
            ).fetchall()
        return {
            r["format"]: RecordingRow(r["format"], r["path"], r["bytes"], r["duration"],
                                      r["created_at"])
            for r in rows
        }

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
    ) -> CallPage:
        """Calls newest first, one page, with the total that match.

        ``since`` is inclusive, ``until`` exclusive (unix times, on started_at). ``q`` keeps
        calls whose transcript (either speaker) matches and adds a ``snippet`` and its
        ``snippet_speaker`` per item. ``uuid`` keeps every call that arrived with that
        AudioSocket UUID (a fixed one in a dialplan gives many), or whose id it is.
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
        searched = q is not None and bool(q.strip())
        fts = self._dialect.fts
        if q is not None and q.strip():
            match = fts.query(q)
            if match is None:  # nothing searchable in q: nothing can match
                return CallPage((), 0, searched=True)
            where.append(
                f"c.uuid IN (SELECT s.call_uuid FROM {fts.source} "
                f"WHERE {fts.match} AND {TRANSCRIPT_KIND_SQL})"
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
            snippets: dict[str, tuple[Highlight | None, str | None]] = {}
            if match is not None:
                for r in rows:
                    snippets[r["uuid"]] = fts.first_in_call(
                        conn, match, r["uuid"], TRANSCRIPT_KIND_SQL
                    )
        items = tuple(
            CallListItem(
                r["uuid"], r["audiosocket_uuid"], r["app"], r["rate"], r["caller"],
                r["started_at"], r["ended_at"], r["duration"], r["end_reason"],
                r["summary_title"], *snippets.get(r["uuid"], (None, None)),
            )
            for r in rows
        )
        return CallPage(items, int(total), searched=searched)

    def audit_log(self, limit: int = 100, call_uuid: str | None = None) -> list[AuditRow]:
        """Most recent audit entries first (optionally of one call)."""
        sql = "SELECT id, at, action, call_uuid, detail FROM audit"
        params: list[Any] = []
        if call_uuid is not None:
            sql += " WHERE call_uuid=?"
            params.append(call_uuid)
        sql += " ORDER BY at DESC, id DESC LIMIT ?"
        params.append(limit)
        with self._reader() as conn:
            return [AuditRow(r["id"], r["at"], r["action"], r["call_uuid"], r["detail"])
                    for r in conn.execute(sql, params)]

    def execute_read(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Escape hatch for ad-hoc reads (CLI, tests); the connection is query-only."""
        with self._reader() as conn:
            return [dict(r) for r in conn.execute(sql, params)]
