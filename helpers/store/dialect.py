"""The seam between the store's one query layer and its two databases.

The query modules (``calls``, ``segments``, ``messages``, ``jobs``) write their SQL once,
SQLite-style: ``?`` placeholders, ``ON CONFLICT … DO UPDATE SET x=excluded.x``,
``RETURNING``, ``CASE`` rather than two-argument ``max()``. They run it on a :class:`Conn`:
a ``sqlite3.Connection`` as it is, or ``helpers.store.pg.PgConn``, which translates the
placeholders in one place. What cannot be written once is a hook of :class:`Dialect`:

* the connections: how the writer's is made, where readers come from, what "begin" and
  "commit" are, which errors are worth retrying (SQLite's "busy"/"full", PostgreSQL's lost
  connection or serialization failure);
* full-text search (:class:`TextSearch`): FTS5 ``MATCH`` with ``snippet()`` here,
  a generated ``tsvector`` with ``plainto_tsquery`` and ``ts_headline`` on PostgreSQL;
* ``skip_locked``: the row lock a job claim takes (PostgreSQL's ``FOR UPDATE SKIP LOCKED``;
  SQLite has one writer, so nothing).

``helpers.store.core.dialect_for`` picks one from what ``CallStore`` was given: a path
(SQLite) or a ``postgresql://`` URL.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from helpers.store.rows import Highlight
from helpers.store.schema import Migration
from helpers.store.schema import migrate as _migrate

__all__ = [
    "DB_FILENAME",
    "MARK_CLOSE",
    "MARK_OPEN",
    "Conn",
    "Dialect",
    "SqliteDialect",
    "TextSearch",
    "highlight",
    "is_pg_url",
]

DB_FILENAME = "calls.db"

# Snippet markers that cannot occur in transcript text: the database puts them around each
# match, and :func:`highlight` cuts the snippet into marked and unmarked pieces at them.
MARK_OPEN = "\x02"
MARK_CLOSE = "\x03"


class Conn(Protocol):
    """What the query modules use of a connection (``sqlite3.Connection`` or
    :class:`helpers.store.pg.PgConn`). ``execute`` returns a cursor with ``fetchone``,
    ``fetchall``, ``rowcount`` and iteration; rows are indexed by name or position."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


def is_pg_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.split("://", 1)[0] in ("postgresql", "postgres")


def highlight(raw: str | None) -> Highlight | None:
    """A snippet with the markers above as pieces of text, marked or not."""
    if raw is None:
        return None
    pieces: list[tuple[str, bool]] = []
    for i, part in enumerate(raw.split(MARK_OPEN)):
        if i == 0:
            marked, rest = "", part
        else:
            marked, _, rest = part.partition(MARK_CLOSE)
            if marked:
                pieces.append((marked, True))
        if rest:
            pieces.append((rest, False))
    return Highlight(tuple(pieces))


class TextSearch:
    """Full-text search over ``segments`` (alias ``s``): FTS5 on SQLite.

    ``source`` is the FROM fragment that brings in ``segments s``, ``match`` the WHERE
    fragment with one ``?`` for :meth:`query`'s value, ``order`` the column that orders
    hits by segment id. :meth:`page` and :meth:`first_in_call` add the snippets.
    """

    source = "segments_fts JOIN segments s ON s.id = segments_fts.rowid"
    match = "segments_fts MATCH ?"
    order = "segments_fts.rowid"

    def query(self, q: str) -> str | None:
        """Turn free user text into a safe FTS5 query, or None when nothing is searchable.

        Every whitespace-separated token becomes a quoted phrase (internal quotes doubled),
        so FTS5 operators typed by a user (``OR``, ``NEAR(``, ``*``, ``"``, ``col:``) are
        plain words and can never be a syntax error. Tokens without a letter or digit are
        dropped: they index to nothing. Phrases are ANDed (FTS5's implicit operator). A NUL
        separates words: inside a phrase SQLite took it for the end of the query text
        ("unterminated string").
        """
        phrases = [
            '"' + token.replace('"', '""') + '"'
            for token in q.replace("\x00", " ").split()
            if any(ch.isalnum() for ch in token)
        ]
        return " ".join(phrases) if phrases else None

    def page(self, columns: str, base: str, match: str, limit: int, offset: int
             ) -> tuple[str, list[Any]]:
        """SQL and parameters for one page of hits, newest first, each with ``snip``.

        ``base`` is ``FROM {source} … WHERE {match} AND …`` with one ``?`` (the match).
        """
        sql = (f"SELECT {columns}, snippet(segments_fts, 0, ?, ?, '…', 12) AS snip {base} "
               f"ORDER BY {self.order} DESC LIMIT ? OFFSET ?")
        return sql, [MARK_OPEN, MARK_CLOSE, match, limit, offset]

    def snippet(self, row: Any) -> Highlight | None:
        """The highlight of a row of :meth:`page`."""
        return highlight(row["snip"])

    def first_in_call(
        self, conn: Conn, match: str, call_uuid: str, transcript_sql: str
    ) -> tuple[Highlight | None, str | None]:
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
            f"AND s.call_uuid = ? AND {transcript_sql} "
            "ORDER BY segments_fts.rowid LIMIT 1",
            (MARK_OPEN, MARK_CLOSE, match, lo, hi, call_uuid),
        ).fetchone()
        return (None, None) if row is None else (highlight(row[0]), row[1])


class Dialect:
    """One database's connections and SQL differences (this class: SQLite in a file)."""

    name = "sqlite"
    #: Errors of this database's driver (what a failed BEGIN or COMMIT raises).
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    #: Row lock of a job claim's inner SELECT (one writer here: none needed).
    skip_locked = ""
    fts: TextSearch = TextSearch()
    #: A statement that fails inside a transaction is undone alone and the transaction goes
    #: on (SQLite's statement journal): a write of one statement needs no savepoint of its
    #: own. PostgreSQL aborts the whole transaction instead.
    statement_atomic = True

    def __init__(self, path: Path, migrations: Sequence[Migration], readers: int) -> None:
        self.path = path
        self._migrations = migrations
        self._read_conns: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all_read_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        """Where the data is, for logs (no secrets)."""
        return str(self.path)

    def prepare(self) -> None:
        """Create or migrate the database (once, before the writer starts)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            # journal_mode=WAL is persistent in the file; set it before migrating so the
            # migrations themselves are already WAL transactions.
            conn.execute("PRAGMA journal_mode=WAL")
            _migrate(conn, self._migrations)
        finally:
            conn.close()

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (the sqlite3 module's
        # implicit transactions would interleave badly with savepoints and migrations).
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        if read_only:
            conn.execute("PRAGMA query_only=ON")
        return conn

    def connect_writer(self) -> Conn:
        """The writer thread's own connection."""
        conn = self._connect()
        # Each write runs in its own SAVEPOINT, so SQLite keeps the pages it changes in a
        # statement journal: a temporary file by default, a pwrite per page. At 1000 IVR
        # calls that was ~1700 syscalls a second on the writer thread for ~200 transcript
        # lines (FTS5 and two indexes per line). In memory it is a few pages per batch.
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    def usable(self, conn: Conn) -> bool:
        """False when ``conn`` is lost for good and the writer must reconnect."""
        return True

    def begin(self, conn: Conn) -> None:
        """Start the writer's batch transaction (taking the write lock at once)."""
        conn.execute("BEGIN IMMEDIATE")

    def savepoint(self, conn: Conn) -> None:
        """Before each write of a batch: a bad write rolls back to here and loses only
        itself."""
        conn.execute("SAVEPOINT w")

    def release(self, conn: Conn) -> None:
        """After a write that succeeded."""
        conn.execute("RELEASE w")

    def rollback_to_savepoint(self, conn: Conn) -> None:
        """After a write that failed: undo it, keep the batch."""
        conn.execute("ROLLBACK TO w")
        conn.execute("RELEASE w")

    def commit(self, conn: Conn) -> None:
        """Commit the batch; raise if the database already rolled it back (disk full)."""
        if not conn.in_transaction:
            raise sqlite3.OperationalError("transaction rolled back by SQLite (disk full?)")
        conn.execute("COMMIT")

    def is_transient(self, exc: BaseException) -> bool:
        """Errors worth retrying later: a full disk, or a lock held by another process."""
        if not isinstance(exc, sqlite3.OperationalError):
            return False
        msg = str(exc).lower()
        return "full" in msg or "locked" in msg or "busy" in msg

    def reader(self) -> AbstractContextManager[Conn]:
        """A pooled read connection inside one read transaction (one consistent snapshot)."""
        return self._sqlite_reader()

    @contextmanager
    def _sqlite_reader(self) -> Iterator[Conn]:
        try:
            conn = self._read_conns.get_nowait()
        except queue.Empty:
            conn = self._connect(read_only=True)
            with self._lock:
                self._all_read_conns.append(conn)
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("ROLLBACK")
        finally:
            self._read_conns.put(conn)

    def close_readers(self) -> None:
        """Close every read connection (the store is closing)."""
        with self._lock:
            for conn in self._all_read_conns:
                conn.close()
            self._all_read_conns.clear()
        while not self._read_conns.empty():
            self._read_conns.get_nowait()


SqliteDialect = Dialect
