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
                               "latency_ms": {"type": ["number", "null"]}},
            },
            "Call": {
                "allOf": [{"$ref": "#/components/schemas/CallSummary"}],
                "type": "object",
                "properties": {
                    "transcript": {"type": "array",
                                   "items": {"$ref": "#/components/schemas/Segment"}},
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
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": {"description": "ok"}}}},
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
