"""PostgreSQL behind the store's dialect seam (``cluster.store = postgresql://…``).

psycopg 3, synchronous: the writer thread owns one connection (autocommit, with its own
``BEGIN``/``SAVEPOINT``/``COMMIT`` as on SQLite) and reads come from a
``psycopg_pool.ConnectionPool``, each inside a ``REPEATABLE READ READ ONLY`` transaction (one
consistent snapshot, as a SQLite read transaction is).

:class:`PgConn` runs the query modules' SQLite-style SQL: :func:`to_pg` turns ``?`` into
``%s`` (and a literal ``%`` into ``%%``) in one place, cached per statement; rows can be
read by name or position, like ``sqlite3.Row``. Lost connections, serialization failures,
deadlocks, a server shutting down or out of room are *transient*: the writer retries them
with backoff as it does SQLite's "busy", and reconnects.

Search (:class:`PgTextSearch`): ``segments.tsv @@ plainto_tsquery('english_nostop', q)``;
``plainto_tsquery`` has no operators, so no user text is a syntax error. Snippets come from
``ts_headline``, run only on the rows of the page being returned.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, ClassVar

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from helpers.store.dialect import MARK_CLOSE, MARK_OPEN, Conn, Dialect, TextSearch, highlight
from helpers.store.pg_schema import PG_MIGRATIONS, TS_CONFIG, migrate_pg
from helpers.store.rows import Highlight

__all__ = ["PgConn", "PgDialect", "PgRow", "PgTextSearch", "redact", "to_pg"]


@functools.lru_cache(maxsize=1024)
def to_pg(sql: str) -> str:
    """SQLite-style SQL with ``?`` placeholders as psycopg's ``%s`` (``%`` doubled).

    Question marks inside string literals and quoted identifiers are left alone.
    """
    out: list[str] = []
    quote = ""
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
            out.append("%%" if ch == "%" else ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


class PgRow(tuple[Any, ...]):
    """A result row: by position, by column name (``row["uuid"]``), and ``dict(row)``."""

    _index: ClassVar[dict[str, int]] = {}
    _names: ClassVar[tuple[str, ...]] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            key = self._index[key]
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[PgRow]:
    index = {name: i for i, name in enumerate(names)}
    return type("PgRow", (PgRow,), {"_index": index, "_names": names})


def pg_rows(cursor: Any) -> Any:
    """psycopg row factory making :class:`PgRow`."""
    desc = cursor.description
    if desc is None:
        return tuple
    return _row_class(tuple(d.name for d in desc))


def redact(url: str) -> str:
    """The connection string without its password, for logs and errors."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?"
    params.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


class PgConn:
    """A psycopg connection speaking the query modules' dialect (see :class:`Conn`)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        #: The last write's savepoint is still to be released (sent with the next one).
        self.release_pending = False

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.raw.execute(to_pg(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        cur = self.raw.cursor()
        cur.executemany(to_pg(sql), parameters)
        return cur

    @property
    def in_transaction(self) -> bool:
        status = self.raw.info.transaction_status
        return status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR,
                          pq.TransactionStatus.ACTIVE)

    def close(self) -> None:
        self.raw.close()


#: ts_headline options: markers around matches, one fragment of about 12 words (FTS5's
#: snippet() takes 12 tokens), short words kept.
_HEADLINE_OPTIONS = (f"StartSel={MARK_OPEN}, StopSel={MARK_CLOSE}, MaxFragments=1, "
                     "MaxWords=12, MinWords=6, ShortWord=0")
# ts_headline's parser takes <…> for HTML tags and &…; for entities and drops them from the
# headline; transcript text is plain text, so those characters stand in for private-use
# ones while it is parsed and come back after (the portal escapes the pieces itself).
_HIDE, _SHOW = "<>&", "\ue000\ue001\ue002"
_UNHIDE = str.maketrans(_SHOW, _HIDE)
_QUERY = f"plainto_tsquery('{TS_CONFIG}', ?)"
_HEADLINE = f"ts_headline('{TS_CONFIG}', translate({{col}}, '{_HIDE}', ?), {_QUERY}, ?)"
#: At most this many words of a query: plainto_tsquery nests one AND per word, and tens of
#: thousands of them exhaust the server's stack.
MAX_QUERY_WORDS = 64


class PgTextSearch(TextSearch):
    """``segments.tsv`` (generated, GIN-indexed) with ``plainto_tsquery`` and
    ``ts_headline``."""

    source = "segments s"
    match = f"s.tsv @@ {_QUERY}"
    order = "s.id"

    def query(self, q: str) -> str | None:
        """The words of ``q`` that can index to something (NUL cannot reach the server)."""
        words = [w for w in q.replace("\x00", " ").split() if any(ch.isalnum() for ch in w)]
        return " ".join(words[:MAX_QUERY_WORDS]) if words else None

    def page(self, columns: str, base: str, match: str, limit: int, offset: int
             ) -> tuple[str, list[Any]]:
        """The page in a subquery, headlines on its rows only (``columns`` must name
        ``s.id AS segment_id``)."""
        sql = (f"SELECT p.*, {_HEADLINE.format(col='p.text')} AS snip FROM "
               f"(SELECT {columns}, s.text {base} ORDER BY s.id DESC LIMIT ? OFFSET ?) p "
               "ORDER BY p.segment_id DESC")
        return sql, [_SHOW, match, _HEADLINE_OPTIONS, match, limit, offset]

    def snippet(self, row: Any) -> Highlight | None:
        return _headline(row["snip"], row["text"])

    def first_in_call(
        self, conn: Conn, match: str, call_uuid: str, transcript_sql: str
    ) -> tuple[Highlight | None, str | None]:
        row = conn.execute(
            f"SELECT {_HEADLINE.format(col='p.text')}, p.text, p.speaker FROM "
            f"(SELECT s.text, s.speaker FROM segments s WHERE s.call_uuid = ? "
            f"AND {self.match} AND {transcript_sql} ORDER BY s.id LIMIT 1) p",
            (_SHOW, match, _HEADLINE_OPTIONS, call_uuid, match),
        ).fetchone()
        return (None, None) if row is None else (_headline(row[0], row[1]), row[2])


def _headline(raw: str | None, text: str) -> Highlight | None:
    """A ts_headline result as FTS5's snippet() gives it: '…' where text was cut."""
    if raw is None:
        return None
    raw = raw.translate(_UNHIDE)
    plain = raw.replace(MARK_OPEN, "").replace(MARK_CLOSE, "").strip()
    at = text.find(plain) if plain else -1
    if at >= 0:
        before = "…" if text[:at].strip() else ""
        after = "…" if text[at + len(plain):].strip() else ""
        raw = before + raw.strip() + after
    return highlight(raw)


def _is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate or ""
    # 08: connection exception; 40: serialization failure, deadlock; 53: out of disk,
    # memory or connections; 57P: the server shutting down or starting up.
    if state.startswith(("08", "40", "53", "57P")):
        return True
    # No SQLSTATE: the client side lost (or never had) the connection.
    return not state and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class PgDialect(Dialect):
    """PostgreSQL: a writer connection, a reader pool, ``schema_version`` migrations."""

    name = "postgresql"
    errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    skip_locked = " FOR UPDATE SKIP LOCKED"
    fts: TextSearch = PgTextSearch()
    statement_atomic = False

    def __init__(
        self, url: str, *, readers: int, connect_timeout: float,
        migrations: Sequence[str] = PG_MIGRATIONS,
    ) -> None:
        self.url = url
        self._readers = readers
        self._connect_timeout = connect_timeout
        self._pg_migrations = migrations
        self._pool: ConnectionPool[Any] | None = None

    @property
    def location(self) -> str:
        return redact(self.url)

    def _connect_args(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "row_factory": pg_rows,
            # libpq's is whole seconds (and at least 2).
            "connect_timeout": max(2, math.ceil(self._connect_timeout)),
            "application_name": "audiosocket",
        }

    def _raw_connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, **self._connect_args())

    def prepare(self) -> None:
        conn = self._raw_connect()
        try:
            migrate_pg(conn, self._pg_migrations)
        finally:
            conn.close()
        pool: ConnectionPool[Any] = ConnectionPool(
            self.url, min_size=1, max_size=self._readers + 4, kwargs=self._connect_args(),
            open=False, check=ConnectionPool.check_connection, name="store-read",
        )
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
        except BaseException:
            pool.close()
            raise
        self._pool = pool

    def connect_writer(self) -> Conn:
        return PgConn(self._raw_connect())

    def usable(self, conn: Conn) -> bool:
        raw = conn.raw if isinstance(conn, PgConn) else None
        return raw is not None and not raw.closed and not raw.broken

    def begin(self, conn: Conn) -> None:
        assert isinstance(conn, PgConn)
        conn.release_pending = False
        conn.execute("BEGIN")

    # Each round trip to the server costs as much as a small INSERT: a write's savepoint is
    # released together with the next write's SAVEPOINT (one simple-protocol message), and
    # the last one by COMMIT.

    def savepoint(self, conn: Conn) -> None:
        assert isinstance(conn, PgConn)
        conn.raw.execute("RELEASE w; SAVEPOINT w" if conn.release_pending else "SAVEPOINT w")
        conn.release_pending = False

    def release(self, conn: Conn) -> None:
        assert isinstance(conn, PgConn)
        conn.release_pending = True

    def rollback_to_savepoint(self, conn: Conn) -> None:
        assert isinstance(conn, PgConn)
        conn.release_pending = False
        conn.raw.execute("ROLLBACK TO w; RELEASE w")

    def commit(self, conn: Conn) -> None:
        assert isinstance(conn, PgConn)
        status = conn.raw.info.transaction_status
        if status != pq.TransactionStatus.INTRANS:
            # An aborted transaction's COMMIT would quietly roll back: say so instead.
            raise psycopg.OperationalError(f"transaction not committable ({status.name})")
        conn.execute("COMMIT")

    def is_transient(self, exc: BaseException) -> bool:
        return _is_transient(exc)

    def reader(self) -> AbstractContextManager[Conn]:
        return self._pg_reader()

    @contextmanager
    def _pg_reader(self) -> Iterator[Conn]:
        if self._pool is None:
            raise psycopg.OperationalError("the store's reader pool is not open")
        with self._pool.connection() as raw:
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield PgConn(raw)
            finally:
                with suppress(psycopg.Error):
                    raw.execute("ROLLBACK")

    def close_readers(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
