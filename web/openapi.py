"""The OpenAPI 3.1 description of the HTTP API, served at ``/api/openapi.json``.

Hand-written rather than generated: the API is small, and writing it down is the review of
its shape. ``tests/web/test_portal.py`` checks that every registered route is described.
"""

from __future__ import annotations

import copy
from typing import Any, Final

__all__ = ["OPENAPI", "openapi_spec"]

_UUID_PARAM: Final = {
    "name": "uuid", "in": "path", "required": True,
    "schema": {"type": "string", "format": "uuid"},
    "description": "The call's UUID (anything else is a 404; ids never reach the disk).",
}


def _err(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _file(media: str, description: str) -> dict[str, Any]:
    """A GET/HEAD file route with RFC 9110 ranges and conditionals."""
    ok = {"content": {media: {"schema": {"type": "string", "contentMediaType": media}}}}
    return {
        "parameters": [
            _UUID_PARAM,
            {"name": "Range", "in": "header", "schema": {"type": "string"},
             "example": "bytes=0-1023"},
            {"name": "If-Range", "in": "header", "schema": {"type": "string"}},
            {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
            {"name": "If-Modified-Since", "in": "header", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": description, **ok},
            "206": {"description": "Partial content (one range, or multipart/byteranges)", **ok},
            "304": {"description": "Not modified"},
            "404": _err("No such call or file (yet)"),
            "412": {"description": "Precondition failed"},
            "416": {"description": "Range not satisfiable"},
        },
    }


_QUERY = [
    ("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
     "Page size (larger values are clamped to 200)"),
    ("offset", {"type": "integer", "minimum": 0, "default": 0}, "Rows to skip"),
    ("app", {"type": "string"}, "Only calls of this app"),
    ("end_reason", {"type": "string"}, "Only calls that ended this way"),
    ("since", {"type": "string"}, "Started at or after (ISO 8601 or unix seconds)"),
    ("until", {"type": "string"}, "Started before (ISO 8601 or unix seconds)"),
    ("has_summary", {"type": "boolean"}, "With (true) or without (false) a summary"),
    ("ivr_result", {"type": "string"}, "Only calls whose IVR ended with this result"),
    ("q", {"type": "string"},
     "Full-text search in transcripts; adds a `snippet` with <mark> highlights"),
    ("uuid", {"type": "string", "format": "uuid"},
     "Calls that arrived with this AudioSocket UUID (a fixed one in a dialplan gives many), "
     "or whose id it is"),
]

OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "AudioSocket server portal API",
        "version": "1.0.0",
        "description": (
            "Calls, transcripts, summaries and recordings. On a loopback bind everything is "
            "open; otherwise send `Authorization: Bearer <token>` (or log in at /login for a "
            "session cookie). /healthz and /metrics are always open."
        ),
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "portal_session"},
        },
        "schemas": {
            "Error": {
                "type": "object", "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                               "reason": {"type": "string"}},
            },
            "CallSummary": {
                "type": "object",
                "properties": {
                    "uuid": {"type": "string", "format": "uuid",
                             "description": "The call's own id (in every URL of the call)"},
                    "audiosocket_uuid": {
                        "type": ["string", "null"], "format": "uuid",
                        "description": "The UUID the call arrived with; equal to `uuid` "
                                       "unless an earlier call had it (null: imported)"},
                    "app": {"type": "string"}, "rate": {"type": "integer"},
                    "caller": {"type": ["string", "null"]},
                    "started_at": {"type": "string", "format": "date-time"},
                    "ended_at": {"type": ["string", "null"], "format": "date-time"},
                    "duration": {"type": ["number", "null"]},
                    "end_reason": {"type": ["string", "null"]},
                    "live": {"type": "boolean"},
                    "summary_title": {"type": ["string", "null"]},
                    "snippet": {"type": ["string", "null"],
                                "description": "HTML-escaped text with <mark> around hits"},
                    "snippet_speaker": {"enum": ["caller", "server", None],
                                        "description": "Who said the snippet's line"},
                },
            },
            "CallList": {
                "type": "object",
                "properties": {
                    "items": {"type": "array",
                              "items": {"$ref": "#/components/schemas/CallSummary"}},
                    "total": {"type": "integer"}, "limit": {"type": "integer"},
                    "offset": {"type": "integer"},
                },
            },
            "Segment": {
                "type": "object",
                "properties": {"start": {"type": "number"}, "end": {"type": "number"},
                               "text": {"type": "string"},
                               "confidence": {"type": ["number", "null"]},
                               "latency_ms": {"type": ["number", "null"]},
                               "speaker": {"enum": ["caller", "server"],
                                           "description": "server: what the server said "
                                                          "(prompt or say text, not "
                                                          "recognised); caller: recognised"},
                               "interrupted": {"type": "boolean",
                                               "description": "A server line cut short "
                                                              "(barge-in or hang-up)"}},
            },
            "Message": {
                "type": "object",
                "description": "A voicemail message left through an IVR record node",
                "properties": {"name": {"type": "string",
                                        "description": "The flow variable it was recorded into"},
                               "url": {"type": "string",
                                       "description": "The WAV, Range-capable"},
                               "start": {"type": ["number", "null"],
                                         "description": "Seconds into the call"},
                               "seconds": {"type": "number"},
                               "stopped_by": {"type": ["string", "null"], "enum": [
                                   "terminator", "silence", "max_seconds", None]},
                               "transcript": {"type": ["string", "null"],
                                              "description": "null until transcribed"},
                               "created_at": {"type": "string", "format": "date-time"}},
            },
            "Call": {
                "allOf": [{"$ref": "#/components/schemas/CallSummary"}],
                "type": "object",
                "properties": {
                    "transcript": {"type": "array",
                                   "description": "Caller and server lines by start time",
                                   "items": {"$ref": "#/components/schemas/Segment"}},
                    "messages": {"type": "array",
                                 "items": {"$ref": "#/components/schemas/Message"}},
                    "ivr": {"type": ["object", "null"],
                            "properties": {"path": {"type": "array"},
                                           "variables": {"type": "object"},
                                           "result": {"type": ["string", "null"]}}},
                    "summary": {"type": ["object", "null"],
                                "properties": {"title": {"type": "string"},
                                               "text": {"type": "string"},
                                               "method": {"enum": ["flan-t5", "extractive"]},
                                               "model": {"type": ["string", "null"]}}},
                    "recordings": {"type": "object",
                                   "description": "format (wav, m4a, mp3, peaks) → URL path",
                                   "additionalProperties": {"type": "string"}},
                    "jobs": {"type": "object", "additionalProperties": {
                        "enum": ["pending", "running", "done", "failed"]}},
                },
            },
            "LiveCall": {
                "type": "object",
                "properties": {
                    "uuid": {"type": "string", "format": "uuid"}, "app": {"type": "string"},
                    "caller": {"type": "string",
                               "description": "The peer (AudioSocket carries no caller ID)"},
                    "started_at": {"type": "string", "format": "date-time"},
                    "started": {"type": "number", "description": "Unix seconds"},
                    "rate": {"type": "integer"},
                    "node": {"type": ["string", "null"], "description": "Current IVR node"},
                    "path": {"type": "array", "items": {"type": "string"}},
                    "lines": {"type": "array", "items": {"type": "object", "properties": {
                        "start": {"type": "number"}, "end": {"type": "number"},
                        "text": {"type": "string"}}}},
                    "listenable": {"type": "boolean",
                                   "description": "Its audio passes through Python"},
                },
            },
            "LiveSnapshot": {
                "type": "object",
                "properties": {
                    "calls": {"type": "array", "items": {"$ref": "#/components/schemas/LiveCall"}},
                    "last_event_id": {"type": "integer"},
                    "now": {"type": "number", "description": "Server time, unix seconds"},
                    "listen_in": {"type": "boolean"},
                },
            },
            "UploadResult": {
                "type": "object",
                "properties": {"uuid": {"type": "string", "format": "uuid"},
                               "url": {"type": "string"}, "api": {"type": "string"},
                               "duration": {"type": "number"}, "skipped": {"type": "boolean"}},
            },
        },
    },
    "security": [{}, {"bearer": []}, {"session": []}],
    "paths": {
        "/healthz": {"get": {
            "summary": "Health from the call loop's point of view (load balancers)",
            "security": [],
            "responses": {
                "200": {"description": "taking calls (status ok), or finishing them after "
                                       "SIGTERM (status draining)"},
                "503": {"description": "reason clock_lag (the 20 ms clock lags over 1 s), "
                                       "server_starting or server_stopped"},
            }}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                             "responses": {"200": {"description": "text exposition",
                                                   "content": {"text/plain": {}}}}}},
        "/api/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/api/calls": {"get": {
            "summary": "List calls, newest first, with filters and transcript search",
            "parameters": [{"name": n, "in": "query", "schema": s, "description": d}
                           for n, s, d in _QUERY],
            "responses": {
                "200": {"description": "A page of calls", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CallList"}}}},
                "400": _err("A parameter does not parse"),
                "401": _err("Token required"),
            },
        }},
        "/api/calls/{uuid}": {
            "get": {
                "summary": "One call: transcript, IVR path, summary, recordings, jobs",
                "parameters": [_UUID_PARAM],
                "responses": {
                    "200": {"description": "The call", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Call"}}}},
                    "404": _err("No such call"),
                },
            },
            "delete": {
                "summary": "Delete a finished call, its files and rows (audited)",
                "description": "Files are removed only inside the data directory. Open on a "
                               "loopback bind, like every route; token otherwise.",
                "parameters": [_UUID_PARAM],
                "responses": {
                    "200": {"description": "Deleted", "content": {"application/json": {
                        "schema": {"type": "object", "properties": {
                            "uuid": {"type": "string"}, "deleted": {"type": "boolean"},
                            "files": {"type": "integer"}}}}}},
                    "401": _err("Token required"),
                    "403": _err("Cross-origin request with a session cookie"),
                    "404": _err("No such call"),
                    "409": _err("The call is still live"),
                },
            },
        },
        "/api/calls/{uuid}/recording.wav": {"get": _file("audio/wav", "The PCM recording")},
        "/api/calls/{uuid}/recording.m4a": {"get": _file("audio/mp4", "The AAC archive")},
        "/api/calls/{uuid}/recording.mp3": {"get": _file("audio/mpeg", "The MP3 archive")},
        "/api/calls/{uuid}/peaks.json": {"get": _file(
            "application/json",
            "Waveform peaks: {rate, duration, channels, peaks_per_second, bits, length, "
            "data: [[min, max], ...]} with ints in -127..127")},
        "/api/calls/{uuid}/messages/{name}.wav": {"get": {
            **_file("audio/wav", "A voicemail message (as recordings: ranges, conditionals)"),
            "parameters": [
                *_file("audio/wav", "")["parameters"],
                {"name": "name", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^\\w{1,64}$"},
                 "description": "The message's name (its flow variable)"},
            ],
        }},
        "/api/live": {"get": {
            "summary": "Calls in progress: app, caller, IVR node, transcript so far",
            "responses": {
                "200": {"description": "A snapshot", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/LiveSnapshot"}}}},
                "401": _err("Token required"),
                "503": _err("No AudioSocket server in this process"),
            },
        }},
        "/api/live/events": {"get": {
            "summary": "Calls in progress as Server-Sent Events",
            "description": "First a `snapshot` event (a LiveSnapshot), then `call_started` "
                           "(a LiveCall), `node` ({uuid, node, path}), `line` ({uuid, start, "
                           "end, text}) and `call_ended` ({uuid, end_reason, duration}), "
                           "each with an `id`; a `: ping` comment every 15 s. A reader that "
                           "falls 256 events behind is disconnected; a reconnect starts "
                           "with a fresh snapshot (Last-Event-ID is not needed).",
            "responses": {
                "200": {"description": "The stream", "content": {"text/event-stream": {}}},
                "401": _err("Token required"),
                "503": _err("Too many live views open (Retry-After), or no server here"),
            },
        }},
        "/api/calls/{uuid}/listen": {"get": {
            "summary": "Listen-in: the live call's audio, both directions mixed (audited)",
            "description": "A WAV stream (16-bit mono at the call's rate) with an "
                           "open-ended header, until the call ends. Needs `[web] listen_in "
                           "= true`; each listen is written to the audit trail.",
            "parameters": [_UUID_PARAM],
            "responses": {
                "200": {"description": "The stream", "content": {"audio/wav": {}}},
                "401": _err("Token required"),
                "403": _err("Listen-in is off on this server"),
                "404": _err("No call in progress has this id"),
                "409": _err("The call's audio stays on the C media path (echo app)"),
                "503": _err("Too many listen-in streams open, or no server here"),
            },
        }},
        "/api/uploads": {
            "get": {
                "summary": "Upload limits the browser validator applies",
                "responses": {"200": {"description": "limits", "content": {
                    "application/json": {"schema": {"type": "object", "properties": {
                        "max_bytes": {"type": "integer"}, "min_seconds": {"type": "number"},
                        "max_seconds": {"type": "number"},
                        "accepted_types": {"type": "array", "items": {"type": "string"}},
                        "accepted_suffixes": {"type": "array", "items": {"type": "string"}},
                        "enabled": {"type": "boolean"},
                        "browser_asr": {"type": "boolean", "description":
                                        "whether the browser Whisper is installed"}}}}}}},
            },
            "post": {
                "summary": "Upload a recording; re-validated, then imported as app 'upload'",
                "parameters": [{"name": "X-Filename", "in": "header",
                                "schema": {"type": "string"},
                                "description": "Display name for a raw-body upload"}],
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "file": {"type": "string", "contentMediaType":
                                 "application/octet-stream"}}}},
                    "audio/*": {"schema": {"type": "string",
                                           "contentMediaType": "audio/*"}},
                    "application/octet-stream": {},
                }},
                "responses": {
                    "200": {"description": "Already imported (same content)",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/UploadResult"}}}},
                    "201": {"description": "Imported; post-call jobs queued",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/UploadResult"}}}},
                    "400": _err("Multipart without a file part"),
                    "401": _err("Token required"),
                    "413": _err("Over web.max_upload_mb"),
                    "415": _err("Not an audio content type"),
                    "422": _err("Undecodable, too short, too long or silent (`reason`)"),
                    "503": _err("Post-call jobs are not running"),
                },
            },
        },
        "/": {"get": {"summary": "Portal: call list (HTML)",
                      "responses": {"200": {"description": "HTML"}}}},
        "/calls/{uuid}": {"get": {"summary": "Portal: one call (HTML)",
                                  "parameters": [_UUID_PARAM],
                                  "responses": {"200": {"description": "HTML"},
                                                "404": {"description": "Not a UUID"}}}},
        "/live": {"get": {"summary": "Portal: calls in progress (HTML)",
                          "responses": {"200": {"description": "HTML"}}}},
        "/upload": {"get": {"summary": "Portal: upload with browser-side validation (HTML)",
                            "responses": {"200": {"description": "HTML"}}}},
        "/login": {
            "get": {"summary": "Login form (HTML)", "security": [],
                    "responses": {"200": {"description": "HTML"}}},
            "post": {"summary": "Check the token, set the session cookie", "security": [],
                     "requestBody": {"content": {"application/x-www-form-urlencoded": {
                         "schema": {"type": "object", "properties": {
                             "token": {"type": "string"}, "next": {"type": "string"}}}}}},
                     "responses": {"303": {"description": "To `next` (or back to /login)"}}},
        },
        "/logout": {"post": {"summary": "Clear the session cookie",
                             "responses": {"303": {"description": "To /login"}}}},
        "/static/{path}": {"get": {
            "summary": "Portal code, styles, worker and vendored WASM/ONNX assets",
            "security": [],
            "parameters": [{"name": "path", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file"}, "404": {"description": "None"}},
        }},
    },
}


def openapi_spec() -> dict[str, Any]:
    """A copy of :data:`OPENAPI` (callers may not mutate the shared one)."""
    return copy.deepcopy(OPENAPI)
