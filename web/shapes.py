"""The JSON shapes of the API, built from the store's typed rows.

The store returns what is stored (``helpers.store.rows``: unix times, highlight pieces,
paths); what a client sees is decided here: ISO dates, URLs of the files, ``<mark>`` HTML
for search snippets (escaped first, so transcript text can never inject HTML). The key
order of each object is part of the API (``tests/web`` compares bodies).
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers.store.rows import CallDetail, CallListItem, CallPage, Highlight, LineRow, MessageRow

if TYPE_CHECKING:
    from helpers.store.db import CallStore

__all__ = [
    "call_json",
    "call_list_json",
    "export_jsonl",
    "iso_utc",
    "line_json",
    "message_url",
    "snippet_html",
]


def iso_utc(ts: float | None) -> str | None:
    """Unix time to ``2026-11-22T00:00:00.000Z`` (None stays None)."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def message_url(call_uuid: str, name: str) -> str:
    """Where the API serves a voicemail message (Range-capable)."""
    return f"/api/calls/{call_uuid}/messages/{name}.wav"


def snippet_html(snippet: Highlight | None) -> str | None:
    """A search snippet as HTML: text escaped, matched words in ``<mark>``."""
    if snippet is None:
        return None
    return "".join(f"<mark>{html.escape(text)}</mark>" if marked else html.escape(text)
                   for text, marked in snippet.pieces)


def line_json(line: LineRow) -> dict[str, Any]:
    """One transcript line of the call's ``transcript``."""
    return {"start": line.start, "end": line.end, "text": line.text,
            "confidence": line.confidence, "latency_ms": line.latency_ms,
            "speaker": line.speaker, "interrupted": line.interrupted}


def _message_json(m: MessageRow) -> dict[str, Any]:
    return {
        "name": m.name,
        "url": message_url(m.call_uuid, m.name),
        "start": m.start,
        "seconds": m.seconds,
        "stopped_by": m.stopped_by,
        "transcript": m.transcript,
        "created_at": iso_utc(m.created_at),
    }


def _recording_url(call_uuid: str, fmt: str) -> str:
    if fmt == "peaks":
        return f"/api/calls/{call_uuid}/peaks.json"
    return f"/api/calls/{call_uuid}/recording.{fmt}"


def call_json(detail: CallDetail) -> dict[str, Any]:
    """``GET /api/calls/{id}``: the call with its transcript, messages, IVR, summary, the
    URLs of its files and the status of each post-call step."""
    c = detail.call
    return {
        "uuid": c.uuid,
        "audiosocket_uuid": c.audiosocket_uuid,
        "app": c.app,
        "rate": c.rate,
        "peer": c.peer,
        "caller": c.caller,
        "started_at": iso_utc(c.started_at),
        "ended_at": iso_utc(c.ended_at),
        "duration": c.duration,
        "end_reason": c.end_reason,
        "live": c.live,
        "frames_in": c.frames_in,
        "frames_out": c.frames_out,
        "transcript": [line_json(s) for s in detail.transcript],
        "messages": [_message_json(m) for m in detail.messages],
        "ivr": None if detail.ivr is None else {
            "path": detail.ivr.path,
            "variables": detail.ivr.variables,
            "result": detail.ivr.result,
        },
        "summary": None if detail.summary is None else {
            "title": detail.summary.title,
            "text": detail.summary.text,
            "method": detail.summary.method,
            "model": detail.summary.model,
        },
        "recordings": {fmt: _recording_url(c.uuid, fmt) for fmt in detail.recordings},
        "jobs": dict(detail.jobs),
    }


def _list_item_json(item: CallListItem, searched: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uuid": item.uuid,
        "audiosocket_uuid": item.audiosocket_uuid,
        "app": item.app,
        "rate": item.rate,
        "caller": item.caller,
        "started_at": iso_utc(item.started_at),
        "ended_at": iso_utc(item.ended_at),
        "duration": item.duration,
        "end_reason": item.end_reason,
        "live": item.live,
        "summary_title": item.summary_title,
    }
    if searched:
        out["snippet"] = snippet_html(item.snippet)
        out["snippet_speaker"] = item.snippet_speaker
    return out


def call_list_json(page: CallPage) -> dict[str, Any]:
    """``GET /api/calls`` without its paging echo: ``{"items": [...], "total": N}``; with a
    text query each item has its ``snippet`` (HTML) and ``snippet_speaker``."""
    return {"items": [_list_item_json(i, page.searched) for i in page.items],
            "total": page.total}


def export_jsonl(store: CallStore, out: Path) -> int:
    """One JSON line per call: id, transcript, summary, archive paths. Returns the count."""
    count = 0
    offset = 0
    with open(out, "w", encoding="utf-8") as fh:
        while True:
            items = store.list_calls(limit=200, offset=offset).items
            if not items:
                break
            for item in items:
                detail = store.get_call(item.uuid)
                if detail is None:
                    continue
                call = call_json(detail)
                files = {f: r.path for f, r in store.recordings_for(item.uuid).items()}
                fh.write(json.dumps({
                    "id": call["uuid"], "app": call["app"], "started_at": call["started_at"],
                    "duration": call["duration"], "end_reason": call["end_reason"],
                    "transcript": call["transcript"], "summary": call["summary"],
                    "ivr": call["ivr"], "files": files,
                }) + "\n")
                count += 1
            offset += len(items)
    return count
