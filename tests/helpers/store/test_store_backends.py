"""What the PostgreSQL store adds: node-scoped start-up, schema_version, search without stop
words, transient errors, and the connect timeout. Most run on both back-ends."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from helpers.store.db import CallStore, StoreUnavailableError, open_store
from helpers.store.pg import to_pg
from helpers.store.pg_schema import PG_MIGRATIONS
from tests.engines.postgres import PgCluster, free_port
from tests.helpers.store.api_view import api_call, api_calls, api_search

T0 = 1_795_000_000.0


@pytest.fixture
def store(store_target: str | Path) -> Iterator[CallStore]:
    s = CallStore(store_target, node="node-a", max_retries=3, retry_backoff=0.01).open()
    yield s
    s.close()


def make_call(store: CallStore, started_at: float = T0) -> str:
    cid = str(uuid.uuid4())
    store.call_started(cid, "transcribe", 8000, "127.0.0.1:1", started_at)
    return cid


# ---- search -------------------------------------------------------------------------


def test_stop_words_are_searchable(store: CallStore) -> None:
    cid = make_call(store)
    store.add_segment(cid, 0, 1, "the parcel is not here", 0.9, 1.0)
    store.add_segment(cid, 1, 2, "parcel arrived", 0.9, 1.0)
    store.flush()
    assert api_search(store, "the")["total"] == 1
    assert api_search(store, "not")["total"] == 1
    assert api_search(store, "is not")["total"] == 1
    assert "<mark>the</mark>" in api_search(store, "the")["items"][0]["snippet"]
    assert api_calls(store, q="the")["total"] == 1


def test_stemming_finds_other_forms(store: CallStore) -> None:
    cid = make_call(store)
    store.add_segment(cid, 0, 1, "I called yesterday", 0.9, 1.0)
    store.flush()
    res = api_search(store, "calling")
    assert res["total"] == 1 and "<mark>called</mark>" in res["items"][0]["snippet"]
    assert api_search(store, "calls")["total"] == 1
    assert api_search(store, "yesterdays call")["total"] == 1


def test_snippets_are_cut_with_an_ellipsis_around_the_match(store: CallStore) -> None:
    cid = make_call(store)
    words = " ".join(f"w{i}" for i in range(40))
    store.add_segment(cid, 0, 1, f"{words} refund {words}", 0.9, 1.0)
    store.flush()
    hit = store.search("refund").items[0]
    assert hit.snippet is not None
    text = "".join(t for t, _ in hit.snippet.pieces)
    assert text.startswith("…") and text.endswith("…") and "refund" in text
    assert ("refund", True) in hit.snippet.pieces
    assert len(text.split()) < 20


def test_search_pages_and_total(store: CallStore) -> None:
    cid = make_call(store)
    for i in range(30):
        store.add_segment(cid, i, i + 1, f"order number {i}", 0.9, 1.0)
    store.flush()
    first = store.search("order", limit=10)
    assert first.total == 30 and len(first.items) == 10
    ids = [h.segment_id for h in first.items]
    assert ids == sorted(ids, reverse=True)  # newest first
    rest = store.search("order", limit=100, offset=10)
    assert len(rest.items) == 20 and rest.items[0].segment_id < ids[-1]


# ---- calls.node ---------------------------------------------------------------------


def test_start_up_closes_only_its_own_nodes_calls(store_target: str | Path) -> None:
    with CallStore(store_target, node="node-a") as a, CallStore(store_target, node="node-b") as b:
        mine = make_call(a)
        theirs = make_call(b)
        a.flush()
        b.flush()
        rows = {r["uuid"]: r["node"] for r in a.execute_read("SELECT uuid, node FROM calls")}
        assert rows == {mine: "node-a", theirs: "node-b"}
        # node-a restarts after a crash: its live call is closed, node-b's stays live.
        assert a.close_dangling_calls(T0 + 60).result(5) == 1
        assert api_call(a, mine)["end_reason"] == "server_restart"  # type: ignore[index]
        assert api_call(a, theirs)["live"] is True  # type: ignore[index]
        assert b.close_dangling_calls(T0 + 60).result(5) == 1
        assert api_call(b, theirs)["live"] is False  # type: ignore[index]


def test_a_v3_sqlite_file_gets_calls_node(tmp_path: Path) -> None:
    from helpers.store.schema import MIGRATIONS

    old = str(uuid.uuid4())
    with CallStore(tmp_path, migrations=MIGRATIONS[:3]) as s:
        s._submit(lambda conn: conn.execute(  # as v3 code wrote it: no node column yet
            "INSERT INTO calls (uuid, app, rate, started_at) VALUES (?, 'echo', 8000, ?)",
            (old, T0),
        )).result(5)
    with CallStore(tmp_path, node="n1") as s:
        new = make_call(s)
        s.flush()
        nodes = {r["uuid"]: r["node"] for r in s.execute_read("SELECT uuid, node FROM calls")}
        assert nodes == {old: None, new: "n1"}
        # A call from before nodes were recorded is closed by whichever node starts.
        assert s.close_dangling_calls(T0 + 60).result(5) == 2


# ---- PostgreSQL only ----------------------------------------------------------------


def test_pg_schema_version_and_search_config(pg_url: str) -> None:
    with CallStore(pg_url) as s:
        assert s.backend == "postgresql" and s.path is None
        assert s.execute_read("SELECT version FROM schema_version") == [
            {"version": len(PG_MIGRATIONS)}
        ]
        tsv = s.execute_read("SELECT to_tsvector('english_nostop', 'The cafés were calling')"
                             " AS v")[0]["v"]
        assert tsv == "'cafe':2 'call':4 'the':1 'were':3"
        plan = "\n".join(r["QUERY PLAN"] for r in s.execute_read(
            "EXPLAIN SELECT id FROM segments s WHERE s.tsv @@ "
            "plainto_tsquery('english_nostop', 'x')"))
        assert "segments_tsv" in plan or "Seq Scan" in plan  # GIN once the table is big


def test_pg_refuses_a_newer_schema(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (len(PG_MIGRATIONS) + 1,))
    with pytest.raises(RuntimeError, match="schema version"):
        CallStore(pg_url).open()


def test_pg_two_servers_migrate_one_new_database_at_once(pg_cluster: PgCluster) -> None:
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    pg_cluster.admin(f"CREATE DATABASE {name}")  # empty: no template
    url = pg_cluster.url(name)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            CallStore(url).open().close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with CallStore(url) as s:
        assert s.execute_read("SELECT count(*) AS n FROM schema_version")[0]["n"] == 1
    pg_cluster.drop_db(name)


def test_pg_writer_reconnects_after_losing_its_connection(pg_url: str) -> None:
    with CallStore(pg_url, max_retries=5, retry_backoff=0.01) as s:
        cid = make_call(s)
        s.flush()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        assert killed
        # The writer's (and the readers') connections are gone: the next write is retried
        # on a new connection, and reads get a checked one from the pool.
        assert s.add_segment(cid, 0, 1, "after the outage", 0.9, 1.0).result(10) > 0
        assert api_search(s, "outage")["total"] == 1


def test_pg_claims_from_two_stores_never_overlap(pg_url: str) -> None:
    with CallStore(pg_url, node="a") as a, CallStore(pg_url, node="b") as b:
        cid = make_call(a)
        a.enqueue_jobs(cid, [f"s{i}" for i in range(40)], not_before=T0)
        a.flush()
        claimed: list[int] = []
        lock = threading.Lock()

        def worker(store: CallStore) -> None:
            while (job := store.claim_job()) is not None:
                with lock:
                    claimed.append(job.id)

        threads = [threading.Thread(target=worker, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert len(claimed) == 40 and len(set(claimed)) == 40


def test_placeholders_are_translated_outside_quotes_only() -> None:
    assert to_pg("SELECT a FROM t WHERE b = ? AND c LIKE '%?%'") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE '%%?%%'"
    )
    assert to_pg('SELECT "?" , ?') == 'SELECT "?" , %s'


# ---- opening through the factory ------------------------------------------------------


def test_open_store_sqlite_by_default(tmp_path: Path) -> None:
    s = open_store("", tmp_path / "data", node="n1")
    try:
        assert s.backend == "sqlite" and s.path == tmp_path / "data" / "calls.db"
        assert s.node == "n1" and s.data_dir == tmp_path / "data"
    finally:
        s.close()


def test_open_store_postgresql(pg_cluster: PgCluster, pg_url: str, tmp_path: Path) -> None:
    s = open_store(pg_url, tmp_path, node="n2", connect_timeout_s=5)
    try:
        assert s.backend == "postgresql" and s.data_dir == tmp_path
        cid = make_call(s)
        s.flush()
        assert s.get_call_row(cid) is not None
        assert "password" not in s.location
    finally:
        s.close()
    tcp = pg_url.split("?")[0].replace("postgresql://postgres@/",
                                       f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/")
    with open_store(tcp, tmp_path, connect_timeout_s=5) as s2:  # TCP works as well
        assert s2.get_call_row(cid) is not None


def test_connect_timeout_fails_clearly_within_the_timeout(tmp_path: Path) -> None:
    url = f"postgresql://audiosocket:secret@127.0.0.1:{free_port()}/calls"
    t = time.monotonic()
    with pytest.raises(StoreUnavailableError) as err:
        open_store(url, tmp_path, connect_timeout_s=1.5)
    took = time.monotonic() - t
    assert 1.4 <= took < 3.0, took
    msg = str(err.value)
    assert "not reachable" in msg and "connect_timeout_s = 1.5" in msg
    assert "secret" not in msg
    assert not (tmp_path / "calls.db").exists()  # never a SQLite fall-back
