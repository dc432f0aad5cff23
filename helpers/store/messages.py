"""Voicemail messages a caller left through an IVR ``record`` node."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

from helpers.store.core import StoreCore
from helpers.store.dialect import Conn
from helpers.store.rows import MessageRow

__all__ = ["MessageQueries", "message_row"]


def message_row(r: Any) -> MessageRow:
    """A ``messages`` row as its typed row."""
    return MessageRow(r["call_uuid"], r["name"], r["path"], r["start"], r["seconds"],
                      r["stopped_by"], r["transcript"], r["created_at"])


class MessageQueries(StoreCore):
    """Save a message, add its transcript, list a call's messages."""

    def save_message(
        self,
        call_uuid: str,
        name: str,
        path: str,
        seconds: float,
        *,
        start: float | None = None,
        stopped_by: str | None = None,
        transcript: str | None = None,
    ) -> concurrent.futures.Future[None]:
        """Record (or overwrite) a voicemail message of the call; ``path`` is relative to the
        data dir, ``start`` on the call's timeline."""
        now = time.time()

        def op(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO messages (call_uuid, name, path, start, seconds, stopped_by, "
                "transcript, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(call_uuid, name) DO UPDATE SET path=excluded.path, "
                "start=excluded.start, seconds=excluded.seconds, "
                "stopped_by=excluded.stopped_by, transcript=excluded.transcript, "
                "created_at=excluded.created_at",
                (call_uuid, name, path, start, seconds, stopped_by, transcript, now),
            )

        return self._submit(op, "save_message")

    def set_message_transcript(
        self, call_uuid: str, name: str, text: str
    ) -> concurrent.futures.Future[bool]:
        """Store the transcript of a saved message; the future says if the message exists."""

        def op(conn: Conn) -> bool:
            cur = conn.execute(
                "UPDATE messages SET transcript=? WHERE call_uuid=? AND name=?",
                (text, call_uuid, name),
            )
            return bool(cur.rowcount > 0)

        return self._submit(op, "set_message_transcript")

    def messages_for(self, call_uuid: str) -> list[MessageRow]:
        """The call's voicemail messages as stored (path relative to the data dir)."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT * FROM messages WHERE call_uuid=? ORDER BY start NULLS FIRST, created_at",
                (call_uuid,),
            ).fetchall()
        return [message_row(r) for r in rows]
