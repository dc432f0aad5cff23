"""The call store's schema and its numbered migrations (``PRAGMA user_version``).

Each migration runs in its own transaction, so a failure leaves the file at the previous,
consistent version. Add a migration by appending to :data:`MIGRATIONS`; never edit one that
has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

import structlog

__all__ = ["MIGRATIONS", "Migration", "migrate"]

log = structlog.get_logger("helpers.store.core")


_V1 = """
CREATE TABLE calls (
    uuid        TEXT PRIMARY KEY,
    app         TEXT NOT NULL,
    rate        INTEGER NOT NULL,
    peer        TEXT,
    started_at  REAL NOT NULL,
    ended_at    REAL,
    end_reason  TEXT,
    frames_in   INTEGER NOT NULL DEFAULT 0,
    frames_out  INTEGER NOT NULL DEFAULT 0,
    duration    REAL,
    caller      TEXT,
    meta        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX calls_started_at ON calls(started_at);

CREATE TABLE segments (
    id          INTEGER PRIMARY KEY,
    call_uuid   TEXT NOT NULL REFERENCES calls(uuid) ON DELETE CASCADE,
    start       REAL NOT NULL,
    "end"       REAL NOT NULL,
    text        TEXT NOT NULL,
    confidence  REAL,
    latency_ms  REAL,
    kind        TEXT NOT NULL DEFAULT 'live' CHECK (kind IN ('live', 'final')),
    created_at  REAL NOT NULL
);
CREATE INDEX segments_call_start ON segments(call_uuid, start);
-- Makes "does this call have a final transcript?" one seek per search hit (6x faster
-- searches for common words than scanning the call's segments).
CREATE INDEX segments_call_kind ON segments(call_uuid, kind);

CREATE VIRTUAL TABLE segments_fts USING fts5(
    text,
    content='segments',
    content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER segments_fts_ai AFTER INSERT ON segments BEGIN
    INSERT INTO segments_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER segments_fts_ad AFTER DELETE ON segments BEGIN
    INSERT INTO segments_fts(segments_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER segments_fts_au AFTER UPDATE OF text ON segments BEGIN
    INSERT INTO segments_fts(segments_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO segments_fts(rowid, text) VALUES (new.id, new.text);
END;

CREATE TABLE ivr (
    call_uuid   TEXT PRIMARY KEY REFERENCES calls(uuid) ON DELETE CASCADE,
    path        TEXT NOT NULL DEFAULT '[]',
    variables   TEXT NOT NULL DEFAULT '{}',
    result      TEXT
);

CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY,
    call_uuid   TEXT NOT NULL REFERENCES calls(uuid) ON DELETE CASCADE,
    step        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    duration    REAL,
    not_before  REAL NOT NULL DEFAULT 0,
    updated_at  REAL NOT NULL,
    UNIQUE (call_uuid, step)
);
CREATE INDEX jobs_claim ON jobs(status, not_before);

CREATE TABLE summaries (
    call_uuid   TEXT PRIMARY KEY REFERENCES calls(uuid) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    text        TEXT NOT NULL,
    method      TEXT NOT NULL,
    model       TEXT,
    created_at  REAL NOT NULL
);

CREATE TABLE recordings (
    call_uuid   TEXT NOT NULL REFERENCES calls(uuid) ON DELETE CASCADE,
    format      TEXT NOT NULL CHECK (format IN ('wav', 'm4a', 'mp3', 'peaks')),
    path        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    duration    REAL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (call_uuid, format)
);

-- No FK on audit: the trail must outlive the call it talks about (e.g. 'delete_call').
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    action      TEXT NOT NULL,
    call_uuid   TEXT,
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_at ON audit(at);
"""

# v2: each call is its own record. ``calls.uuid`` stays the call's id (the key every table,
# file name and URL uses); the AudioSocket UUID it arrived with is an attribute of its own,
# because dialplans with a fixed UUID send the same one on every call. Calls before v2 were
# keyed by that UUID, so it is their AudioSocket UUID too (imported calls never had one).
_V2 = """
ALTER TABLE calls ADD COLUMN audiosocket_uuid TEXT;
UPDATE calls SET audiosocket_uuid = uuid WHERE end_reason IS NOT 'imported';
CREATE INDEX calls_audiosocket_uuid ON calls(audiosocket_uuid);
"""

# v3: both sides of the conversation and voicemail. A segment says who spoke: the caller
# (recognised, as before) or the server (the text it spoke: prompts and ``say``, with the
# call-timeline span it was on the wire; ``interrupted`` when barge-in or a hang-up cut it
# short). Server lines are kind 'live' and are shown beside whichever caller transcript is
# used (live or final), so the post-call transcript never replaces them. ``messages`` holds
# what callers left through an IVR ``record`` node: the file (relative to the data dir),
# where it sits on the call's timeline, how it ended and its transcript.
_V3 = """
ALTER TABLE segments ADD COLUMN speaker TEXT NOT NULL DEFAULT 'caller'
    CHECK (speaker IN ('caller', 'server'));
ALTER TABLE segments ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;

CREATE TABLE messages (
    call_uuid   TEXT NOT NULL REFERENCES calls(uuid) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    start       REAL,
    seconds     REAL NOT NULL,
    stopped_by  TEXT,
    transcript  TEXT,
    created_at  REAL NOT NULL,
    PRIMARY KEY (call_uuid, name)
);
"""

# v4: job leases (several processes share one queue). ``worker`` is who holds (or last held)
# the job, ``lease_until`` when a running job's hold ends unless its worker heartbeats
# (``helpers.store.jobs``); NULL on a running row (claimed before v4) counts as expired.
_V4_JOB_LEASES = """
ALTER TABLE jobs ADD COLUMN worker TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
CREATE INDEX jobs_lease ON jobs(status, lease_until);
"""

# v5: many servers may share one store (PostgreSQL, docs/SCALE-OUT.md): each call says which
# server (``cluster.node``) took it, so a server starting up closes only its own calls left
# live by a crash. Calls from before have none. Its PostgreSQL twin is in pg_schema's v1.
_V5_NODE = """
ALTER TABLE calls ADD COLUMN node TEXT;
CREATE INDEX calls_live_node ON calls(node) WHERE ended_at IS NULL;
"""

# MIGRATIONS[i] takes a database from user_version i to i + 1. Append only: never edit a
# migration that has shipped; add a new one. Each is SQL text or a callable on the
# connection, run inside one transaction together with the user_version bump. A change of
# schema also needs its PostgreSQL twin appended to ``helpers.store.pg_schema.PG_MIGRATIONS``.
Migration = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = [_V1, _V2, _V3, _V4_JOB_LEASES, _V5_NODE]


def _split_sql(script: str) -> list[str]:
    """Split a script into statements (trigger bodies contain ';', so split carefully).

    ``executescript`` would be simpler but it COMMITs first, which breaks the
    one-transaction-per-migration rule.
    """
    statements: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                statements.append(buf.strip())
            buf = ""
    if buf.strip(" \t\r\n;"):
        statements.append(buf.strip())
    return statements


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Bring the database up to ``len(migrations)``; returns the final version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    target = len(migrations)
    if version > target:
        # A newer build wrote this file; running old code on it could corrupt it.
        raise RuntimeError(f"calls.db is at schema version {version}, this code knows {target}")
    for number in range(version, target):
        migration = migrations[number]
        conn.execute("BEGIN IMMEDIATE")
        try:
            if callable(migration):
                migration(conn)
            else:
                for statement in _split_sql(migration):
                    conn.execute(statement)
            # PRAGMA does not take parameters; number is our own int.
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("store_migrated", version=number + 1)
    return target


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
