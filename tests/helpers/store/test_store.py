"""The call store against real SQLite files in tmp_path and a real PostgreSQL database.

Tests that take ``store`` (or ``store_target``) run on both back-ends; the ones about
SQLite's own file, pragmas and migrations take ``sqlite_store`` or ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from helpers.store.core import MIGRATIONS, StoreClosedError
from helpers.store.db import CallStore
from helpers.store.segments import fts_query
from tests.helpers.store.api_view import api_call, api_calls, api_search
from web.shapes import iso_utc

T0 = 1_795_000_000.0  # a fixed unix time so ISO strings are predictable



def errors(kind: str) -> float:
    """Current value of audiosocket_store_errors_total{kind=...}."""
    return REGISTRY.get_sample_value("audiosocket_store_errors_total", {"kind": kind}) or 0.0


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def store(store_target: str | Path) -> Iterator[CallStore]:
    """A store on each back-end: SQLite in tmp_path, then a fresh PostgreSQL database."""
    s = CallStore(store_target, max_retries=2, retry_backoff=0.001).open()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[CallStore]:
    """For what only SQLite has: its file, its pragmas, its FTS5 table."""
    s = CallStore(tmp_path, max_retries=2, retry_backoff=0.001).open()
    yield s
    s.close()


def on_pg(store: CallStore) -> bool:
    return store.backend == "postgresql"


def writer_value(store: CallStore, sql: str) -> Any:
    """Run a query on the writer's own connection (to see its PRAGMAs)."""
    return store._submit(lambda conn: conn.execute(sql).fetchone()[0]).result(5)


def make_call(store: CallStore, started_at: float = T0, **kw: Any) -> str:
    cid = kw.pop("uuid", None) or new_id()
    store.call_started(cid, kw.pop("app", "transcribe"), 8000, "127.0.0.1:5555", started_at, **kw)
    return cid


# ---- opening, pragmas, migrations -----------------------------------------------------


def test_open_sets_wal_version_and_pragmas(sqlite_store: CallStore, tmp_path: Path) -> None:
    store = sqlite_store
    assert store.path == tmp_path / "calls.db"
    assert store.execute_read("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert writer_value(store, "PRAGMA user_version") == len(MIGRATIONS)
    assert writer_value(store, "PRAGMA foreign_keys") == 1
    assert writer_value(store, "PRAGMA synchronous") == 1  # NORMAL
    # Each write's SAVEPOINT journal in memory, not a pwrite per page to a temp file.
    assert writer_value(store, "PRAGMA temp_store") == 2  # MEMORY


def test_opening_a_v0_database_migrates_it(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE unrelated (x)")  # a pre-existing v0 file, not an empty one
    conn.commit()
    conn.close()
    with CallStore(db) as s:
        assert s.execute_read("PRAGMA user_version")[0]["user_version"] == len(MIGRATIONS)
        names = {r["name"] for r in s.execute_read("SELECT name FROM sqlite_master")}
        assert {"calls", "segments", "segments_fts", "ivr", "jobs", "summaries"} <= names
        assert {"recordings", "audit", "unrelated"} <= names


def old_call(store: CallStore, cid: str, end_reason: str | None = None) -> None:
    """A call written the way v1 code wrote it (no column added since)."""
    store._submit(lambda conn: conn.execute(
        "INSERT INTO calls (uuid, app, rate, peer, started_at, ended_at, end_reason) "
        "VALUES (?, 'record', 8000, '127.0.0.1:1', ?, ?, ?)",
        (cid, T0, T0 + 5 if end_reason else None, end_reason),
    )).result(5)


def old_segment(store: CallStore, cid: str, text: str, kind: str = "live") -> None:
    """A segment written the way v1/v2 code wrote it (no speaker column yet)."""
    store._submit(lambda conn: conn.execute(
        'INSERT INTO segments (call_uuid, start, "end", text, confidence, latency_ms, kind, '
        "created_at) VALUES (?, 0.0, 1.0, ?, 0.9, 100.0, ?, ?)", (cid, text, kind, T0),
    )).result(5)


def test_opening_an_older_version_applies_only_newer_migrations(tmp_path: Path) -> None:
    with CallStore(tmp_path, migrations=MIGRATIONS[:1]) as s:
        cid = new_id()
        old_call(s, cid)
    v2 = [*MIGRATIONS, "ALTER TABLE calls ADD COLUMN note TEXT; UPDATE calls SET note = 'old'"]
    with CallStore(tmp_path, migrations=v2) as s:
        assert s.execute_read("PRAGMA user_version")[0]["user_version"] == len(v2)
        assert s.execute_read("SELECT uuid, note FROM calls") == [{"uuid": cid, "note": "old"}]


def test_a_v1_database_keeps_its_calls_and_gets_their_audiosocket_uuids(
    tmp_path: Path,
) -> None:
    # Before v2 a call's id was its AudioSocket UUID; imported calls never had one.
    asterisk, imported = new_id(), new_id()
    with CallStore(tmp_path, migrations=MIGRATIONS[:1]) as s:
        old_call(s, asterisk, "remote_closed")
        old_call(s, imported, "imported")
        old_segment(s, asterisk, "hello there")
        s.set_recording(asterisk, "wav", "/data/recordings/x.wav", 1000, 5.0)
        s.enqueue_jobs(asterisk, ["archive_aac"])
        s.flush()
        assert writer_value(s, "PRAGMA user_version") == 1
    with CallStore(tmp_path) as s:
        assert writer_value(s, "PRAGMA user_version") == len(MIGRATIONS)
        rows = s.execute_read("SELECT uuid, audiosocket_uuid FROM calls ORDER BY end_reason")
        assert {r["uuid"]: r["audiosocket_uuid"] for r in rows} == {
            imported: None, asterisk: asterisk,
        }
        call = api_call(s, asterisk)
        assert call is not None and call["audiosocket_uuid"] == asterisk
        assert call["transcript"][0]["text"] == "hello there"
        assert call["recordings"] == {"wav": f"/api/calls/{asterisk}/recording.wav"}
        assert call["jobs"] == {"archive_aac": "pending"}
        assert [c["uuid"] for c in api_calls(s, uuid=asterisk)["items"]] == [asterisk]
        assert [c["uuid"] for c in api_calls(s, uuid=imported)["items"]] == [imported]
        plan = s.execute_read(
            "EXPLAIN QUERY PLAN SELECT uuid FROM calls WHERE audiosocket_uuid = ?", ["x"]
        )
        assert any("calls_audiosocket_uuid" in r["detail"] for r in plan)
        # The next call with that UUID is a call of its own, beside the old one.
        again = new_id()
        assert s.call_started(again, "record", 8000, None, T0 + 60,
                              audiosocket_uuid=asterisk).result(5)
        listed = api_calls(s, uuid=asterisk)["items"]
        assert [(c["uuid"], c["audiosocket_uuid"]) for c in listed] == [
            (again, asterisk), (asterisk, asterisk),
        ]
        assert sorted(s.call_ids()) == sorted([asterisk, imported, again])


def test_failed_migration_rolls_back_to_previous_version(tmp_path: Path) -> None:
    with CallStore(tmp_path):
        pass
    bad = [*MIGRATIONS, "CREATE TABLE half (x); SELECT nope FROM missing"]
    with pytest.raises(sqlite3.OperationalError):
        CallStore(tmp_path, migrations=bad).open()
    conn = sqlite3.connect(tmp_path / "calls.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='half'").fetchone()[0] == 0
    conn.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "calls.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version"):
        CallStore(tmp_path).open()


# ---- call lifecycle ------------------------------------------------------------------


def test_call_lifecycle_and_api_shape(store: CallStore) -> None:
    cid = make_call(store, caller="+15550100")
    store.flush()
    live = api_call(store, cid)
    assert live is not None
    assert list(live) == [
        "uuid", "audiosocket_uuid", "app", "rate", "peer", "caller", "started_at", "ended_at",
        "duration", "end_reason", "live", "frames_in", "frames_out", "transcript", "messages",
        "ivr", "summary", "recordings", "jobs",
    ]  # fmt: skip
    assert live["live"] is True and live["ended_at"] is None and live["duration"] is None
    assert live["started_at"] == iso_utc(T0) == "2026-11-18T11:06:40.000Z"

    store.add_segment(cid, 0.5, 2.1, "hello there", 0.9, 210.0)
    store.call_ended(cid, T0 + 12.5, "remote_closed", 625, 620)
    store.set_ivr(cid, ["menu", "sales"], {"choice": "1"}, "transferred")
    store.set_summary(cid, "Greeting", "Caller said hello.", "flan-t5", "flan-t5-small")
    store.set_recording(cid, "wav", "/data/x.wav", 1000, 12.5)
    store.set_recording(cid, "mp3", "/data/x.mp3", 100, 12.5)
    store.enqueue_jobs(cid, ["archive_aac", "summary"])
    store.flush()
    call = api_call(store, cid)
    assert call is not None
    assert call["live"] is False
    assert call["ended_at"] == "2026-11-18T11:06:52.500Z"
    assert call["duration"] == pytest.approx(12.5)
    assert (call["end_reason"], call["frames_in"], call["frames_out"]) == (
        "remote_closed",
        625,
        620,
    )
    assert call["transcript"] == [
        {"start": 0.5, "end": 2.1, "text": "hello there", "confidence": 0.9, "latency_ms": 210.0,
         "speaker": "caller", "interrupted": False}
    ]  # fmt: skip
    assert call["messages"] == []
    assert call["ivr"] == {"path": ["menu", "sales"], "variables": {"choice": "1"},
                           "result": "transferred"}  # fmt: skip
    assert call["summary"] == {"title": "Greeting", "text": "Caller said hello.",
                               "method": "flan-t5", "model": "flan-t5-small"}  # fmt: skip
    assert call["recordings"] == {
        "mp3": f"/api/calls/{cid}/recording.mp3",
        "wav": f"/api/calls/{cid}/recording.wav",
    }
    assert call["jobs"] == {"archive_aac": "pending", "summary": "pending"}
    assert store.recordings_for(cid)["wav"].bytes == 1000

    store.delete_recording(cid, "mp3")
    store.flush()
    assert set(api_call(store, cid)["recordings"]) == {"wav"}  # type: ignore[index]
    assert api_call(store, new_id()) is None


def test_a_call_is_never_overwritten_by_one_under_the_same_id(store: CallStore) -> None:
    cid = make_call(store, audiosocket_uuid="u-1")
    store.call_ended(cid, T0 + 10, "remote_closed", 500, 500)
    store.flush()
    before = store.get_call_row(cid)
    taken = errors("call_id_taken")
    assert store.call_started(cid, "echo", 16000, "10.0.0.9:1", T0 + 100).result(5) is False
    store.call_ended(cid, T0 + 200, "remote_hangup", 9, 9)  # a stray end changes nothing
    store.flush()
    assert store.get_call_row(cid) == before
    assert errors("call_id_taken") == taken + 1


def test_list_by_audiosocket_uuid(store: CallStore) -> None:
    fixed = new_id()
    first = make_call(store, T0, uuid=fixed, audiosocket_uuid=fixed)
    second = make_call(store, T0 + 1, audiosocket_uuid=fixed)
    other = make_call(store, T0 + 2, audiosocket_uuid=new_id())
    store.flush()
    assert [c["uuid"] for c in api_calls(store, uuid=fixed)["items"]] == [second, first]
    assert api_calls(store, uuid=fixed)["total"] == 2
    assert [c["uuid"] for c in api_calls(store, uuid=second)["items"]] == [second]
    assert api_calls(store, uuid=new_id())["total"] == 0
    assert api_calls(store)["total"] == 3 and other


def test_final_transcript_replaces_live_one(store: CallStore) -> None:
    cid = make_call(store)
    store.add_segment(cid, 0.0, 1.0, "helo wrld", 0.5, 300.0)
    store.add_segment(cid, 1.0, 2.0, "live two", 0.5, 300.0)
    store.flush()
    assert [s["text"] for s in api_call(store, cid)["transcript"]] == ["helo wrld", "live two"]  # type: ignore[index]
    store.replace_final_transcript(
        cid,
        [{"start": 1.0, "end": 2.0, "text": "world"}, {"start": 0.0, "end": 1.0, "text": "hello"}],
    )
    store.replace_final_transcript(
        cid,
        [{"start": 1.0, "end": 2.0, "text": "world"}, {"start": 0.0, "end": 0.9, "text": "hello"}],
    )
    store.flush()
    tr = api_call(store, cid)["transcript"]  # type: ignore[index]
    assert [s["text"] for s in tr] == ["hello", "world"]  # final only, sorted by start
    assert tr[0]["confidence"] is None
    # search sees the final words, not the superseded live ones
    assert api_search(store, "wrld")["total"] == 0
    assert api_search(store, "world")["total"] == 1


def test_delete_call_cascades_and_keeps_fts_consistent(store: CallStore) -> None:
    cid = make_call(store)
    other = make_call(store)
    store.add_segment(cid, 0, 1, "unique banana words", 1.0, 1.0)
    store.add_segment(other, 0, 1, "a banana too", 1.0, 1.0)
    store.enqueue_jobs(cid, ["a"])
    store.set_summary(cid, "t", "x", "m")
    store.audit("delete_call", cid, {"by": "test"})
    store.flush()
    assert api_search(store, "banana")["total"] == 2
    assert store.delete_call(cid).result(5) is True
    assert store.delete_call(cid).result(5) is False
    assert api_call(store, cid) is None
    assert api_search(store, "banana")["total"] == 1
    assert store.jobs_for(cid) == []
    assert store.execute_read("SELECT count(*) AS n FROM segments")[0]["n"] == 1
    if not on_pg(store):
        # external-content FTS index still matches its table after the cascade
        store._submit(
            lambda c: c.execute("INSERT INTO segments_fts(segments_fts) VALUES('integrity-check')")
        ).result(5)
    assert store.audit_log(call_uuid=cid)[0].action == "delete_call"  # audit outlives it


def test_close_dangling_calls(store: CallStore) -> None:
    live = make_call(store)
    done = make_call(store)
    store.call_ended(done, T0 + 1, "hangup", 1, 1)
    assert store.close_dangling_calls(T0 + 60).result(5) == 1
    call = api_call(store, live)
    assert call is not None and call["end_reason"] == "server_restart" and not call["live"]


def test_close_drains_the_queue_and_writes_after_close_fail(store_target: str | Path) -> None:
    s = CallStore(store_target).open()
    ids = [make_call(s, T0 + i) for i in range(1000)]
    s.close()
    with CallStore(store_target) as s2:
        assert api_calls(s2, limit=1)["total"] == len(ids)
    with pytest.raises(StoreClosedError):
        s.call_started(new_id(), "echo", 8000, None, T0).result(1)


# ---- search ---------------------------------------------------------------------------


def test_search_snippets_stemming_and_diacritics(store: CallStore) -> None:
    cid = make_call(store)
    store.add_segment(cid, 0.0, 2.0, "I am calling about the café <script>x</script>", 0.9, 1.0)
    store.add_segment(cid, 2.0, 4.0, "nothing relevant here", 0.9, 1.0)
    store.flush()
    res = api_search(store, "call")  # porter: 'call' matches 'calling'
    assert res["total"] == 1
    hit = res["items"][0]
    assert hit["call_uuid"] == cid and hit["start"] == 0.0 and hit["end"] == 2.0
    assert "<mark>calling</mark>" in hit["snippet"]
    assert "<script>" not in hit["snippet"] and "&lt;script&gt;" in hit["snippet"]
    assert api_search(store, "cafe")["total"] == 1  # remove_diacritics
    assert api_search(store, "CAFÉ")["total"] == 1
    assert api_search(store, "calling café")["total"] == 1  # tokens are ANDed
    assert api_search(store, "calling nothing")["total"] == 0
    newer = make_call(store, T0 + 60)
    store.add_segment(newer, 0.0, 1.0, "calling again", 0.9, 1.0)
    store.flush()
    assert [h["call_uuid"] for h in api_search(store, "calling")["items"]] == [newer, cid]
    assert [h["call_uuid"] for h in api_search(store, "calling", 1, 1)["items"]] == [cid]
    listed = api_calls(store, q="cafe")
    assert listed["total"] == 1 and "<mark>café</mark>" in listed["items"][0]["snippet"]


@pytest.mark.parametrize(
    "q",
    ['foo OR', '"', "*", "NEAR(", "AND", "NOT x", "(", ")", "a:b", "text:foo", "^foo", "-foo",
     "'", "foo\"bar", "\\", "NEAR(a b, 2)", "{text}: x", "", "   ", "\x00", "🙂", "-",
     "AND OR", "foo & | ! <-> bar", "foo:* bar", "'foo' | 'bar'", "ümlaut café 東京",
     "x" * 5000, "word " * 20000, "foo\x00bar"],
    ids=lambda q: repr(q[:12]) + (f"*{len(q)}" if len(q) > 12 else ""),
)  # fmt: skip
def test_hostile_queries_never_error(store: CallStore, q: str) -> None:
    cid = make_call(store)
    store.add_segment(cid, 0, 1, "foo bar near text and or not", 1.0, 1.0)
    store.flush()
    res = api_search(store, q)
    assert set(res) == {"items", "total"}
    listed = api_calls(store, q=q)
    assert listed["total"] in (0, 1)
    if q in ("NEAR(", "AND OR", "foo:* bar"):  # the words themselves are searched
        assert res["total"] == 1 and listed["total"] == 1


def test_fts_query_quotes_every_token() -> None:
    assert fts_query('foo OR "bar') == '"foo" "OR" """bar"'
    assert fts_query('* " (') is None
    assert fts_query("NEAR(") == '"NEAR("'


# ---- jobs ------------------------------------------------------------------------------


def test_jobs_claim_finish_retry_and_reset(store: CallStore) -> None:
    cid = make_call(store)
    store.enqueue_jobs(cid, ["archive_aac", "transcribe", "summary"], not_before=T0)
    store.enqueue_jobs(cid, ["archive_aac"], not_before=T0)  # duplicate: ignored
    store.flush()
    assert len(store.jobs_for(cid)) == 3

    assert store.claim_job({"nope"}) is None
    assert store.claim_job(set()) is None
    job = store.claim_job({"transcribe"})
    assert job is not None and job.step == "transcribe" and job.status == "running"
    assert job.attempts == 1

    # failed with a retry delay: pending again, but not before now + delay
    store.finish_job(job.id, "failed", error="boom", retry_delay=60.0)
    assert store.claim_job({"transcribe"}) is None
    again = store.claim_job({"transcribe"}, now=time.time() + 61)
    assert again is not None and again.id == job.id and again.attempts == 2
    assert again.error == "boom"
    store.finish_job(again.id, "done", duration=1.5)

    first = store.claim_job()
    assert first is not None and first.step == "archive_aac"  # oldest due, by id
    store.finish_job(first.id, "failed", error="ffmpeg died")  # no retry: final
    running = store.claim_job()
    assert running is not None and running.step == "summary"
    assert store.claim_job() is None

    # crash resume: running → pending
    assert store.reset_running_jobs() == 0  # its lease is live: not ours to take
    assert store.reset_running_jobs(now=time.time() + 31) == 1  # expired: requeued
    states = {j.step: (j.status, j.error, j.duration) for j in store.jobs_for(cid)}
    assert states == {
        "archive_aac": ("failed", "ffmpeg died", None),
        "transcribe": ("done", None, 1.5),
        "summary": ("pending", None, None),
    }
    assert api_call(store, cid)["jobs"]["summary"] == "pending"  # type: ignore[index]
    with pytest.raises(ValueError):
        store.finish_job(1, "running")


def test_claim_respects_not_before(store: CallStore) -> None:
    cid = make_call(store)
    store.enqueue_jobs(cid, ["later"], not_before=time.time() + 3600)
    assert store.claim_job() is None
    assert store.claim_job(now=time.time() + 3601) is not None


def test_concurrent_claims_never_hand_out_a_job_twice(store: CallStore) -> None:
    cid = make_call(store)
    store.enqueue_jobs(cid, [f"s{i}" for i in range(50)], not_before=T0)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        while (job := store.claim_job()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 50


# ---- lazy writes: transcript lines share a commit ------------------------------------


def count_commits(store: CallStore) -> list[int]:
    """Count the writer's COMMITs from now on (the list's one item)."""
    n = [0]
    commit = store._dialect.commit

    def counted(conn: Any) -> None:
        n[0] += 1
        commit(conn)

    store._dialect.commit = counted  # type: ignore[method-assign]
    return n


def test_lines_said_within_the_window_share_one_commit(store_target: str | Path) -> None:
    # Spaced as prompts end on many calls: without the window each line committed alone.
    with CallStore(store_target, commit_window_s=2.0) as store:
        cid = make_call(store)
        store.flush()
        commits = count_commits(store)
        lines = []
        for i in range(10):
            lines.append(store.add_segment(cid, i, i + 1, f"line {i}", None, None,
                                           speaker="server"))
            time.sleep(0.02)
        assert all(f.result(10) > 0 for f in lines)
        assert commits[0] == 1
        assert len(api_call(store, cid)["transcript"]) == 10  # type: ignore[arg-type]


def test_lines_said_within_the_window_do_not_wake_the_writer_each(
    store_target: str | Path,
) -> None:
    # Each wake-up was a thread switch and a GIL hand-over on the busy loop (~200 a second
    # at 1000 IVR calls). The writer waits for its queue only when it has nothing: once
    # before the window and once after its commit, however many lines came in between.
    with CallStore(store_target, commit_window_s=1.0) as store:
        cid = make_call(store)
        store.flush()
        waits = [0]
        get = store._queue.get

        def counted(block: bool = True, timeout: float | None = None) -> Any:
            if block:
                waits[0] += 1
            return get(block, timeout)

        store._queue.get = counted  # type: ignore[method-assign]
        lines = []
        for i in range(10):
            lines.append(store.add_segment(cid, i, i + 1, f"line {i}", None, None,
                                           speaker="server"))
            time.sleep(0.02)
        assert all(f.result(10) > 0 for f in lines)
        assert waits[0] <= 2, waits[0]
        assert len(api_call(store, cid)["transcript"]) == 10  # type: ignore[arg-type]


def test_a_lazy_line_alone_commits_when_its_window_ends(store_target: str | Path) -> None:
    with CallStore(store_target, commit_window_s=0.3) as store:
        cid = make_call(store)
        store.flush()
        started = time.monotonic()
        assert store.add_segment(cid, 0, 1, "alone", None, None).result(10) > 0
        assert time.monotonic() - started >= 0.25


def test_any_other_write_or_a_flush_ends_the_wait(store_target: str | Path) -> None:
    # A window far longer than the timeouts: only the ending rule lets these pass.
    with CallStore(store_target, commit_window_s=60.0) as store:
        cid = make_call(store)
        store.flush()
        commits = count_commits(store)
        line = store.add_segment(cid, 0, 1, "first", None, None)
        store.call_ended(cid, T0 + 5, "hangup", 0, 0)
        assert line.result(5) > 0
        assert commits[0] == 1  # the line and the write behind it, in order, together
        line = store.add_segment(cid, 1, 2, "second", None, None)
        store.flush(timeout=5)
        assert line.done() and line.result() > 0


# ---- the writer under failure ---------------------------------------------------------


def test_writer_survives_a_bad_write(store: CallStore) -> None:
    before = errors("statement")
    bad = store.add_segment(new_id(), 0, 1, "orphan", 1.0, 1.0)  # FK: no such call
    crash = store._submit(lambda conn: 1 / 0)
    cid = make_call(store)
    good = store.add_segment(cid, 0, 1, "fine", 1.0, 1.0)
    assert good.result(5) > 0
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        bad.result(5)
    with pytest.raises(ZeroDivisionError):
        crash.result(5)
    assert errors("statement") == before + 2
    assert api_call(store, cid)["transcript"][0]["text"] == "fine"  # type: ignore[index]


def test_a_one_statement_write_that_fails_is_undone_alone_in_its_batch(store: CallStore) -> None:
    # add_segment and set_ivr run without a savepoint of their own on SQLite (one statement
    # is undone alone there); on PostgreSQL they keep it. Either way a failed one loses
    # nothing else of its batch, and nothing of itself: here a two-row INSERT whose second
    # row breaks the foreign key, with its FTS trigger, between two good lines.
    cid = make_call(store)
    store.flush()
    gate = threading.Event()
    held = store._submit(lambda conn: gate.wait(5))  # the three below then share a batch
    before = store.add_segment(cid, 0, 1, "kept before", None, None)
    bad = store._submit(
        lambda conn: conn.execute(
            'INSERT INTO segments (call_uuid, start, "end", text, kind, created_at) '
            "VALUES (?, 0, 1, 'halfway pineapple', 'live', 0), "
            "(?, 0, 1, 'halfway pineapple', 'live', 0)", (cid, new_id())),
        "two_rows", single=True)
    after = store.add_segment(cid, 1, 2, "kept after", None, None)
    gate.set()
    assert held.result(5) is True
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        bad.result(5)
    assert before.result(5) > 0 and after.result(5) > 0
    lines = api_call(store, cid)["transcript"]  # type: ignore[index]
    assert [line["text"] for line in lines] == ["kept before", "kept after"]
    assert api_search(store, "pineapple")["total"] == 0
    assert api_search(store, "kept")["total"] == 2
    if not on_pg(store):
        store._submit(
            lambda c: c.execute("INSERT INTO segments_fts(segments_fts) VALUES('integrity-check')")
        ).result(5)


def hold_writer(store: CallStore) -> threading.Event:
    """Park the writer thread inside a write until the returned event is set."""
    release = threading.Event()
    store._submit(lambda conn: release.wait(10))
    return release


def test_cancelled_futures_never_kill_the_writer(store: CallStore) -> None:
    # A task awaiting asyncio.wrap_future(...) that is cancelled (shutdown) cancels the
    # store's future; resolving it then raised InvalidStateError and killed the writer,
    # after which close() waited forever. Seen in CI as a SIGTERM that never finished.
    cid = make_call(store)
    store.enqueue_jobs(cid, ["archive_aac"], not_before=T0)
    store.flush()
    release = hold_writer(store)
    claim = store.claim_job_async()
    segment = store.add_segment(cid, 0, 1, "kept", 1.0, 1.0)
    barrier_owner = store._submit(lambda conn: 7)
    assert claim.cancel() and segment.cancel() and barrier_owner.cancel()
    release.set()
    # The writer is alive and later writes resolve.
    assert store.add_segment(cid, 1, 2, "after", 1.0, 1.0).result(5) > 0
    # A cancelled claim does not run: the job is still pending for the next worker...
    assert [j.status for j in store.jobs_for(cid)] == ["pending"]
    # ...while a cancelled plain write is still committed (nothing received is lost).
    texts = [s["text"] for s in api_call(store, cid)["transcript"]]  # type: ignore[index]
    assert texts == ["kept", "after"]


async def test_cancelled_aflush_and_claim_then_close_returns(store_target: str | Path) -> None:
    store = CallStore(store_target).open()
    release = hold_writer(store)
    waiters = [asyncio.ensure_future(store.aflush()),
               asyncio.ensure_future(asyncio.wrap_future(store.claim_job_async()))]
    await asyncio.sleep(0.05)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    release.set()
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(10)
    assert not closer.is_alive()


def test_transient_disk_full_is_retried_in_order(store: CallStore) -> None:
    before = errors("disk_full")
    fails = {"left": 2}
    cid = new_id()

    # What each database says when it is worth trying again.
    transient: Exception = (
        psycopg.errors.SerializationFailure("could not serialize access") if on_pg(store)
        else sqlite3.OperationalError("database or disk is full")
    )

    def flaky(conn: Any) -> str:
        if fails["left"]:
            fails["left"] -= 1
            raise transient
        conn.execute(
            "INSERT INTO calls (uuid, app, rate, started_at) VALUES (?, 'echo', 8000, ?)",
            (cid, T0),
        )
        return "ok"

    first = store._submit(flaky)
    # queued behind it and dependent on it (FK): must not run before it succeeds
    seg = store.add_segment(cid, 0, 1, "after", 1.0, 1.0)
    assert first.result(5) == "ok"
    assert seg.result(5) > 0
    assert errors("disk_full") == before + 2


def test_real_sqlite_full_is_bounded_then_recovers(sqlite_store: CallStore) -> None:
    store = sqlite_store
    dropped = errors("dropped")
    cid = make_call(store)
    store.flush()
    pages = writer_value(store, "PRAGMA page_count")
    writer_value(store, f"PRAGMA max_page_count = {pages + 2}")
    big = store.add_segment(cid, 0, 1, "x " * 200_000, 1.0, 1.0)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        big.result(10)
    assert errors("dropped") == dropped + 1
    writer_value(store, "PRAGMA max_page_count = 1073741823")
    assert store.add_segment(cid, 0, 1, "small again", 1.0, 1.0).result(5) > 0


# ---- concurrency ------------------------------------------------------------------------


def test_concurrent_reads_while_writing(store: CallStore) -> None:
    cid = make_call(store)
    store.flush()
    stop = threading.Event()
    problems: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                api_call(store, cid)
                api_calls(store, limit=20)
                api_search(store, "word")
                reads[0] += 1
        except BaseException as exc:
            problems.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(2000):
        store.add_segment(cid, i, i + 1, f"word number {i}", 1.0, 1.0)
        if i % 100 == 0:
            make_call(store, T0 + i)
    store.flush()
    stop.set()
    for t in threads:
        t.join(10)
    assert not problems
    assert reads[0] > 0
    assert len(api_call(store, cid)["transcript"]) == 2000  # type: ignore[index]
    assert api_search(store, "word")["total"] == 2000


async def test_aread_from_the_event_loop(store: CallStore) -> None:
    cid = make_call(store)
    for i in range(200):
        store.add_segment(cid, i, i + 1, f"async words {i}", 1.0, 1.0)
    results = await asyncio.gather(
        *(store.aread(store.list_calls, limit=5) for _ in range(20)),
        store.aread(store.search, "async", limit=3),
    )
    assert all(r.total >= 0 for r in results)
    await store.aflush()
    call = await store.aread(store.get_call, cid)
    assert call is not None and len(call.transcript) == 200
    claimed = await asyncio.wrap_future(store.claim_job_async())
    assert claimed is None


# ---- listing ------------------------------------------------------------------------------


def test_list_filters_and_pagination(store: CallStore) -> None:
    ids = []
    for i in range(30):
        cid = make_call(store, T0 + i, app="ivr" if i % 3 == 0 else "echo")
        ids.append(cid)
        if i % 2 == 0:
            store.call_ended(cid, T0 + i + 5, "remote_closed" if i % 4 == 0 else "hangup", 1, 1)
        if i % 5 == 0:
            store.set_summary(cid, f"title {i}", "text", "extractive")
        if i % 3 == 0:
            store.set_ivr(cid, ["menu"], {}, "sales" if i % 6 == 0 else "support")
    store.add_segment(ids[7], 0, 1, "refund please", 1.0, 1.0)
    store.flush()

    everything = api_calls(store, limit=200)
    assert everything["total"] == 30
    assert [c["uuid"] for c in everything["items"]] == ids[::-1]  # newest first

    pages = [api_calls(store, limit=7, offset=o)["items"] for o in range(0, 30, 7)]
    assert [c["uuid"] for p in pages for c in p] == ids[::-1]
    assert api_calls(store, limit=7, offset=28)["total"] == 30

    first = everything["items"][-1]
    assert set(first) == {"uuid", "audiosocket_uuid", "app", "rate", "caller", "started_at",
                          "ended_at", "duration", "end_reason", "live",
                          "summary_title"}  # fmt: skip
    assert first["summary_title"] == "title 0" and first["live"] is False

    def uuids(**kw: Any) -> set[str]:
        return {c["uuid"] for c in api_calls(store, limit=200, **kw)["items"]}

    assert uuids(app="ivr") == {ids[i] for i in range(0, 30, 3)}
    assert uuids(end_reason="hangup") == {ids[i] for i in range(30) if i % 4 == 2}
    assert uuids(since=T0 + 10, until=T0 + 12) == {ids[10], ids[11]}
    assert uuids(has_summary=True) == {ids[i] for i in range(0, 30, 5)}
    assert len(uuids(has_summary=False)) == 24
    assert uuids(ivr_result="sales") == {ids[i] for i in range(0, 30, 6)}
    assert uuids(app="ivr", ivr_result="support", has_summary=True) == {ids[15]}
    assert uuids(q="refunds") == {ids[7]}
    assert api_calls(store, q="refund")["items"][0]["snippet"] == "<mark>refund</mark> please"


def test_list_10k_calls_is_fast(store_target: str | Path) -> None:
    with CallStore(store_target) as s:
        t = time.perf_counter()
        for i in range(10_000):
            make_call(s, T0 + i, app=("echo", "ivr", "transcribe")[i % 3])
        s.flush()
        write_s = time.perf_counter() - t
        timings = {}
        cases: dict[str, dict[str, Any]] = {
            "first page": {},
            "deep page": {"offset": 9_000},
            "app filter": {"app": "ivr"},
            "no summary": {"has_summary": False},
        }
        for name, kw in cases.items():
            api_calls(s, **kw)  # warm
            t = time.perf_counter()
            res = api_calls(s, **kw)
            timings[name] = (time.perf_counter() - t) * 1000
            assert len(res["items"]) == 50 and res["total"] >= 3_333
        print(f"\n{s.backend}: 10k call_started via writer: {write_s:.2f} s; list_calls ms: "
              + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))  # fmt: skip
        assert max(timings.values()) < 2000


def test_dangling_calls_last_as_long_as_their_recording_or_transcript(
    store: CallStore, tmp_path: Path
) -> None:
    # A crash and a restart an hour later: the downtime is no part of any call.
    recorded, transcribed, silent = make_call(store), make_call(store), make_call(store)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    with wave.open(str(recordings / f"{recorded}.wav"), "wb") as wf:
        wf.setnchannels(2)
        wf.setsampwidth(2)
        wf.setframerate(8000)
        wf.writeframes(bytes(4 * 8000 * 7 + 4 * 4000))  # 7.5 s
    store.add_segment(transcribed, 1.0, 4.25, "hello", 0.9, 100.0)
    assert store.close_dangling_calls(T0 + 3600, recordings=recordings).result(5) == 3
    for cid, seconds in ((recorded, 7.5), (transcribed, 4.25), (silent, 0.0)):
        call = api_call(store, cid)
        assert call is not None and not call["live"]
        assert call["duration"] == seconds, (cid, call["duration"])


# ---- both sides of the conversation, voicemail (schema v3) -----------------------------


def test_a_v2_database_keeps_its_data_and_gets_speakers_and_messages(tmp_path: Path) -> None:
    cid = new_id()
    with CallStore(tmp_path, migrations=MIGRATIONS[:2]) as s:
        old_call(s, cid)
        old_segment(s, cid, "old caller words")
        old_segment(s, cid, "old final", "final")
        assert writer_value(s, "PRAGMA user_version") == 2
    with CallStore(tmp_path) as s:
        assert writer_value(s, "PRAGMA user_version") == len(MIGRATIONS)
        rows = s.execute_read("SELECT text, kind, speaker, interrupted FROM segments ORDER BY id")
        assert rows == [
            {"text": "old caller words", "kind": "live", "speaker": "caller", "interrupted": 0},
            {"text": "old final", "kind": "final", "speaker": "caller", "interrupted": 0},
        ]
        call = api_call(s, cid)
        assert call is not None
        assert [(t["text"], t["speaker"]) for t in call["transcript"]] == [("old final", "caller")]
        assert call["messages"] == []
        assert api_search(s, "final")["items"][0]["speaker"] == "caller"
        # The new table works on the migrated file, and a bad speaker is refused.
        s.save_message(cid, "message", "messages/x.wav", 2.0, start=1.0).result(5)
        assert [m.name for m in s.messages_for(cid)] == ["message"]
        with pytest.raises(ValueError):
            s.add_segment(cid, 0, 1, "x", None, None, speaker="robot")


def test_server_lines_interleave_and_survive_the_final_transcript(store: CallStore) -> None:
    cid = make_call(store)
    store.add_segment(cid, 0.0, 2.0, "Welcome to the demo line.", None, None,
                      speaker="server")
    store.add_segment(cid, 2.5, 3.5, "sales please", 0.8, 300.0)  # positional, as before
    store.add_segment(cid, 3.0, 5.0, "For sales press one", None, None, speaker="server",
                      interrupted=True)
    store.flush()
    tr = api_call(store, cid)["transcript"]  # type: ignore[index]
    assert [(t["speaker"], t["text"], t["interrupted"]) for t in tr] == [
        ("server", "Welcome to the demo line.", False),
        ("caller", "sales please", False),
        ("server", "For sales press one", True),
    ]
    store.replace_final_transcript(cid, [{"start": 2.4, "end": 3.4, "text": "sales, please"}])
    store.replace_final_transcript(cid, [{"start": 2.4, "end": 3.4, "text": "Sales, please."}])
    store.flush()
    tr = api_call(store, cid)["transcript"]  # type: ignore[index]
    assert [(t["speaker"], t["text"]) for t in tr] == [
        ("server", "Welcome to the demo line."),
        ("caller", "Sales, please."),
        ("server", "For sales press one"),
    ]
    assert store.execute_read(
        "SELECT count(*) AS n FROM segments WHERE speaker='server'")[0]["n"] == 2


def test_search_finds_both_speakers_and_says_which(store: CallStore) -> None:
    cid = make_call(store)
    store.add_segment(cid, 0.0, 2.0, "Please leave your message after the tone.", None, None,
                      speaker="server")
    store.add_segment(cid, 3.0, 4.0, "my parcel never arrived", 0.9, 200.0)
    store.replace_final_transcript(cid, [{"start": 3.0, "end": 4.0, "text": "My parcel never "
                                          "arrived."}])
    store.flush()
    hits = api_search(store, "message tone")["items"]
    assert [(h["call_uuid"], h["speaker"], h["kind"]) for h in hits] == [(cid, "server", "live")]
    assert "<mark>message</mark>" in hits[0]["snippet"]
    parcel = api_search(store, "parcel")
    assert parcel["total"] == 1 and parcel["items"][0]["speaker"] == "caller"  # final only
    listed = api_calls(store, q="tone")["items"]
    assert [c["uuid"] for c in listed] == [cid]
    assert listed[0]["snippet_speaker"] == "server" and "<mark>tone</mark>" in listed[0]["snippet"]
    assert api_calls(store, q="arrived")["items"][0]["snippet_speaker"] == "caller"


def test_messages_are_stored_transcribed_and_deleted_with_the_call(store: CallStore) -> None:
    cid = make_call(store)
    store.save_message(cid, "message", "messages/m.wav", 4.25, start=12.5,
                       stopped_by="terminator")
    store.flush()
    msg = api_call(store, cid)["messages"]  # type: ignore[index]
    assert msg == [{"name": "message", "url": f"/api/calls/{cid}/messages/message.wav",
                    "start": 12.5, "seconds": 4.25, "stopped_by": "terminator",
                    "transcript": None, "created_at": msg[0]["created_at"]}]
    assert store.set_message_transcript(cid, "message", "Call me back.").result(5) is True
    assert store.set_message_transcript(cid, "other", "x").result(5) is False
    assert api_call(store, cid)["messages"][0]["transcript"] == "Call me back."  # type: ignore[index]
    assert store.messages_for(cid)[0].path == "messages/m.wav"
    assert store.delete_call(cid).result(5)
    assert store.execute_read("SELECT count(*) AS n FROM messages")[0]["n"] == 0


# ---- typed rows -------------------------------------------------------------------------


def test_reads_return_rows_in_unix_times_with_highlight_pieces(store: CallStore) -> None:
    """The store says what is stored: unix times, parsed JSON, snippets as marked pieces;
    ISO strings, URLs and HTML are the API's (web.shapes)."""
    cid = make_call(store, meta={"source": "x.wav"})
    store.add_segment(cid, 0.0, 1.0, "a <b> refund please", 0.9, 120.0)
    store.set_ivr(cid, ["menu"], {"choice": "1"}, "sales")
    store.set_recording(cid, "wav", "/tmp/x.wav", 10, 1.0)
    store.call_ended(cid, T0 + 2, "remote_closed", 100, 0)
    store.flush()
    detail = store.get_call(cid)
    assert detail is not None
    assert detail.call.started_at == T0 and detail.call.ended_at == T0 + 2
    assert detail.call.meta == {"source": "x.wav"} and not detail.call.live
    assert detail.transcript[0].text == "a <b> refund please"
    assert detail.ivr is not None and detail.ivr.path == ["menu"]
    assert detail.recordings == ("wav",) and store.recordings_for(cid)["wav"].bytes == 10
    page = store.list_calls(q="refund")
    assert page.searched and page.total == 1
    snippet = page.items[0].snippet
    assert snippet is not None and ("refund", True) in snippet.pieces
    assert all("<mark>" not in text for text, _ in snippet.pieces)
    hit = store.search("refund").items[0]
    assert hit.started_at == T0 and hit.snippet == snippet
