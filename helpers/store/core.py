"""The call store's single-writer core: SQLite in the data directory (``<data_dir>/calls.db``),
or PostgreSQL when given a ``postgresql://`` URL (``cluster.store``).

Rule 1 of the design says the event loop never blocks, and a database blocks (fsync, locks,
page cache misses, the network). So:

* **Writes** never run on the caller's thread. Every write method builds a small closure,
  puts it on a queue and returns at once with a :class:`concurrent.futures.Future`; callers
  on the loop ignore it (fire-and-forget), callers that need the outcome (tests, the CLI,
  post-call workers) call ``.result()`` or ``await asyncio.wrap_future(f)``. ONE writer thread
  owns the only write connection; it drains whatever is queued and commits it in one
  transaction (one fsync per batch, not per row), each item inside its own SAVEPOINT so a
  bad statement only loses itself (on SQLite a write of one statement needs none: a failed
  statement is undone alone there).
* **Lazy writes** (live transcript lines, and the IVR path rewritten at every node: only
  the portal's search and the call page read them, and never at once; the live view gets
  them from the call itself) wait up to ``commit_window_s`` for company before they
  commit. At 1000 IVR calls the writer otherwise committed nearly every prompt's line
  alone, an FTS5 segment flush each: about 2 % of a core, halved by a 0.1 s window and
  down to ~0.65 % by the 0.5 s one (most of what a commit costs is per commit: the WAL
  frames and FTS5's segment of the transaction). Any other write or a flush ends the wait.
  A lazy write only queues: the writer wakes once per window, not once per line.
* **Reads** use separate connections (WAL lets readers run beside the writer; on
  PostgreSQL a ``psycopg_pool.ConnectionPool``). From asyncio,
  ``await store.aread(store.get_call, uuid)`` runs the read in a small thread pool; the same
  methods may be called directly from any thread outside the loop.

Schema changes are numbered migrations recorded in ``PRAGMA user_version`` (PostgreSQL: a
``schema_version`` table); each runs in its own transaction so a failure leaves the database
at the previous, consistent version (``helpers.store.schema``, ``helpers.store.pg_schema``).
What differs between the two databases is behind :class:`helpers.store.dialect.Dialect`.

This module is the mechanism (:class:`StoreCore`: connections, the writer thread, flush);
the writes and reads of each table live in the query modules (``calls``, ``segments``,
``messages``, ``jobs``), each a mixin over the core, and :class:`helpers.store.db.CallStore`
combines them. Reads return the typed rows of ``helpers.store.rows``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import structlog
from prometheus_client import Counter

from helpers.store.dialect import DB_FILENAME, Conn, Dialect, is_pg_url
from helpers.store.schema import MIGRATIONS, Migration

__all__ = [
    "DB_FILENAME",
    "JOB_STATUSES",
    "MIGRATIONS",
    "RECORDING_FORMATS",
    "SPEAKERS",
    "STORE_ERRORS",
    "StoreClosedError",
    "StoreCore",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")
JOB_STATUSES = ("pending", "running", "done", "failed")
RECORDING_FORMATS = ("wav", "m4a", "mp3", "peaks")
SPEAKERS = ("caller", "server")

# kind: statement (a write failed and was dropped), disk_full (a transient failure that
# will be retried), dropped (gave up after the retries), queue_full (refused at the door),
# call_id_taken (a new call under an id another call has: it would have overwritten it).
STORE_ERRORS = Counter(
    "audiosocket_store_errors_total",
    "Call store write failures, by kind",
    ["kind"],
)

def dialect_for(
    target: str | Path,
    *,
    migrations: Sequence[Migration] | None,
    readers: int,
    connect_timeout: float,
) -> Dialect:
    """The dialect for a store at ``target``: a ``postgresql://`` URL, or a SQLite file (a
    directory means ``calls.db`` inside it). ``migrations`` are SQLite's (None: all)."""
    if is_pg_url(target):
        from helpers.store.pg import PgDialect

        return PgDialect(str(target), readers=readers, connect_timeout=connect_timeout)
    p = Path(target)
    path = p / DB_FILENAME if p.is_dir() else p
    return Dialect(path, MIGRATIONS if migrations is None else migrations, readers)


class StoreClosedError(RuntimeError):
    """A write was submitted to a store that is not open."""


@dataclass(eq=False)
class _Write:
    """One queued write: ``op`` runs on the writer connection inside a transaction."""

    op: Callable[[Conn], Any]
    future: concurrent.futures.Future[Any]
    name: str
    attempts: int = 0
    # A claim nobody waits for any more (its awaiting task was cancelled, e.g. at
    # shutdown) must not run: it would leave a job 'running' with no worker on it.
    skip_if_cancelled: bool = False
    # May wait up to the store's commit window for other writes to share its commit.
    lazy: bool = False
    # ``op`` runs one statement: where the database undoes a failed statement alone
    # (``Dialect.statement_atomic``) it needs no savepoint, two statements fewer a write.
    single: bool = False


def _settle(
    fut: concurrent.futures.Future[Any], result: Any = None, exc: BaseException | None = None
) -> None:
    """Resolve ``fut`` unless its waiter cancelled it: a cancelled future raises
    InvalidStateError on set_result, and that must never kill the writer thread."""
    if fut.done():
        return
    with suppress(concurrent.futures.InvalidStateError):
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


@dataclass(eq=False)
class _Control:
    """Barrier items: ``flush`` resolves once everything before it is committed."""

    kind: str  # 'flush' | 'stop'
    future: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)
    #: A barrier never waits for company: it ends a commit window (``_Write.lazy``).
    lazy: ClassVar[bool] = False


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


class StoreCore:
    """One writer thread and pooled readers over SQLite or PostgreSQL (the query modules
    add the tables).

    ``path`` is the SQLite database file, or a directory (the data dir), in which case
    ``calls.db`` inside it is used; or a ``postgresql://`` URL. ``node`` is this server's
    name, written into the calls it starts (``calls.node``). ``connect_timeout`` bounds
    each PostgreSQL connection attempt (``open_store`` retries them); ``data_dir`` is where
    recordings and uploads live when the database is not a file beside them. Call
    :meth:`open` first (or use it as a context manager); :meth:`close` drains queued writes.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        node: str = "",
        readers: int = 4,
        batch_max: int = 500,
        queue_max: int = 100_000,
        max_retries: int = 5,
        retry_backoff: float = 0.05,
        migrations: Sequence[Migration] | None = None,
        connect_timeout: float = 10.0,
        data_dir: str | Path | None = None,
        commit_window_s: float = 0.5,
    ) -> None:
        self._dialect: Dialect = dialect_for(
            path, migrations=migrations, readers=readers, connect_timeout=connect_timeout
        )
        #: The SQLite file (None on PostgreSQL).
        self.path: Path | None = None if self._dialect.name != "sqlite" else self._dialect.path
        #: Where recordings and uploads live: given, else the SQLite file's directory.
        self.data_dir: Path = (
            Path(data_dir) if data_dir is not None
            else self.path.parent if self.path is not None else Path(".")
        )
        self.node = node
        self._readers = readers
        self._batch_max = batch_max
        self._commit_window_s = commit_window_s
        self._max_retries = max_retries
        self._retry_backoff = retry_backoff
        # Bounded (rule 3): if the disk stalls for long, refuse new writes (counted)
        # rather than grow without limit; put_nowait never blocks the loop.
        self._queue: queue.Queue[_Write | _Control] = queue.Queue(maxsize=queue_max)
        # Set by every write that is not lazy and by every barrier: it ends a commit
        # window's wait. Lazy writes only queue, so they do not wake the writer each time.
        self._urgent = threading.Event()
        self._writer: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._open = False

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._dialect.name

    @property
    def listen_url(self) -> str | None:
        """Where to LISTEN for new jobs (``helpers.store.pg_listen``): the PostgreSQL URL;
        None on SQLite, where idle workers poll."""
        return getattr(self._dialect, "url", None) if self._dialect.name == "postgresql" else None

    @property
    def location(self) -> str:
        """The SQLite file, or the PostgreSQL URL without its password (for logs)."""
        return self._dialect.location

    # ---- lifecycle ---------------------------------------------------------------

    def open(self) -> Self:
        """Create/migrate the database and start the writer thread and reader pool."""
        if self._open:
            return self
        self._dialect.prepare()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._writer = threading.Thread(
            target=self._writer_main, args=(ready,), name="store-writer", daemon=True
        )
        self._writer.start()
        try:
            ready.result()
        except BaseException:
            self._dialect.close_readers()
            raise
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._readers, thread_name_prefix="store-read"
        )
        self._open = True
        log.info("store_opened", backend=self.backend, location=self.location, node=self.node)
        return self

    def close(self) -> None:
        """Commit everything queued, stop the writer, close all connections."""
        if not self._open:
            return
        self._open = False
        stop = _Control("stop")
        self._enqueue(stop, block=True)  # the stop must not be dropped
        if self._writer is not None:
            # Wait for the writer, not for the barrier alone: should the thread ever die
            # before reaching the stop, close() must still return (and say so).
            while self._writer.is_alive():
                self._writer.join(timeout=1.0)
            if not stop.future.done():
                STORE_ERRORS.labels(kind="writer_died").inc()
                log.error("store_writer_died", location=self.location)
        # A write that raced with close() landed behind the stop barrier: fail it
        # rather than leave its future unresolved forever.
        while True:
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(late, _Write):
                _settle(late.future, exc=StoreClosedError(f"store closed; {late.name} lost"))
            else:
                _settle(late.future)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._dialect.close_readers()
        log.info("store_closed", location=self.location)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._open

    # ---- the writer thread -------------------------------------------------------

    def _submit(
        self, op: Callable[[Conn], T], name: str = "write",
        *, skip_if_cancelled: bool = False, lazy: bool = False, single: bool = False,
    ) -> concurrent.futures.Future[T]:
        """Queue ``op`` for the writer; never blocks. The future resolves after COMMIT
        (``lazy``: up to the commit window later, see the module's docstring). ``single``:
        ``op`` runs exactly one statement (see ``_Write.single``)."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if not self._open:
            fut.set_exception(StoreClosedError(f"store is closed; {name} not written"))
            log.warning("store_write_after_close", op=name)
            return fut
        try:
            self._enqueue(_Write(op, fut, name, skip_if_cancelled=skip_if_cancelled, lazy=lazy,
                                single=single))
        except queue.Full:
            STORE_ERRORS.labels(kind="queue_full").inc()
            log.error("store_queue_full", op=name, depth=self._queue.qsize())
            fut.set_exception(RuntimeError("store write queue full"))
        return fut

    def _enqueue(
        self, item: _Write | _Control, *, block: bool = False, timeout: float | None = None
    ) -> None:
        """Queue ``item`` for the writer (``queue.Full`` when it does not fit); anything
        but a lazy write also ends a commit window's wait (``_gather_lazy``)."""
        self._queue.put(item, block, timeout)
        if not item.lazy:
            self._urgent.set()

    def _writer_main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._dialect.connect_writer()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        pending: deque[_Write | _Control] = deque()
        try:
            while True:
                if not pending:
                    pending.append(self._queue.get())
                    self._gather_lazy(pending)
                # Batch: take what is already waiting, up to a barrier or batch_max.
                while len(pending) < self._batch_max and not isinstance(pending[-1], _Control):
                    try:
                        pending.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                conn = self._usable(conn)
                try:
                    if self._run_batch(conn, pending):
                        return
                except Exception as exc:
                    # A bug or an I/O error outside any item: never let the writer die
                    # (every later write would hang). Drop the head item and go on.
                    STORE_ERRORS.labels(kind="statement").inc()
                    log.exception("store_writer_error", error=repr(exc))
                    if conn.in_transaction:
                        with suppress(*self._dialect.errors):
                            conn.execute("ROLLBACK")
                    if not pending:
                        continue
                    head = pending.popleft()
                    if isinstance(head, _Write):
                        _settle(head.future, exc=exc)
                    elif self._finish_control(head):
                        return
        finally:
            with suppress(Exception):
                conn.close()

    def _gather_lazy(self, pending: deque[_Write | _Control]) -> None:
        """While the batch holds only lazy writes, wait (up to the commit window from the
        first) for more; any other item ends the wait at once, and is kept.

        The wait is on ``_urgent``, not on the queue: a lazy write arriving in the window
        only queues. Waking the writer for each (~200 prompt lines a second at 1000 IVR
        calls) cost a thread switch and a GIL hand-over apiece."""
        head = pending[-1]
        if not head.lazy or self._commit_window_s <= 0:
            return
        deadline = time.monotonic() + self._commit_window_s
        urgent = self._urgent
        while True:
            # Cleared before the queue is read: an urgent item queued before this is found
            # below, one queued after sets the event again and ends the wait.
            urgent.clear()
            while len(pending) < self._batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                pending.append(item)
                if not item.lazy:
                    return
            left = deadline - time.monotonic()
            if left <= 0 or len(pending) >= self._batch_max:
                return
            urgent.wait(left)

    def _usable(self, conn: Conn) -> Conn:
        """The writer's connection, made anew when it was lost (PostgreSQL restarted, the
        network dropped). When that fails too the dead one is kept: the batch's BEGIN then
        fails like a busy database, and the head item is retried with backoff (bounded)."""
        if self._dialect.usable(conn):
            return conn
        try:
            fresh = self._dialect.connect_writer()
        except self._dialect.errors as exc:
            log.warning("store_reconnect_failed", location=self.location, error=str(exc))
            return conn
        with suppress(Exception):
            conn.close()
        log.info("store_reconnected", location=self.location)
        return fresh

    def _in_savepoint(self, conn: Conn, op: Callable[[Conn], T]) -> T:
        """``op(conn)`` inside a savepoint of its own: a failure undoes only it."""
        self._dialect.savepoint(conn)
        try:
            result = op(conn)
        except BaseException:
            # SQLITE_FULL/IOERR may already have rolled back the whole transaction, taking
            # the savepoint with it; checked before COMMIT.
            with suppress(*self._dialect.errors):
                self._dialect.rollback_to_savepoint(conn)
            raise
        self._dialect.release(conn)
        return result

    def _run_batch(self, conn: Conn, pending: deque[_Write | _Control]) -> bool:
        """Commit the writes at the head of ``pending``; True when told to stop.

        Items that are done are removed from ``pending``; on a transient failure (full
        disk, lock) the failing item and everything after it stay, in order, so a
        dependent write (a segment after its call row) never runs before its parent.
        """
        done: list[tuple[_Write, Any]] = []
        failed: list[_Write] = []
        retry_from: _Write | None = None
        transient_exc: Exception | None = None
        control: _Control | None = None
        try:
            self._dialect.begin(conn)
        except self._dialect.errors as exc:
            head = pending[0]
            if isinstance(head, _Write):
                self._transient(head, exc, pending)
            else:  # nothing to write; the barrier is satisfied as is
                pending.popleft()
                return self._finish_control(head)
            return False
        n = 0
        atomic = self._dialect.statement_atomic
        for item in pending:
            if isinstance(item, _Control):
                control = item
                break
            if item.skip_if_cancelled and item.future.cancelled():
                done.append((item, None))
                n += 1
                continue
            try:
                if item.single and atomic:
                    result = item.op(conn)
                else:
                    result = self._in_savepoint(conn, item.op)
            except Exception as exc:
                if self._dialect.is_transient(exc):
                    retry_from = item
                    transient_exc = exc
                    break
                # A bad statement loses only itself; the writer carries on.
                STORE_ERRORS.labels(kind="statement").inc()
                log.error("store_write_failed", op=item.name, error=repr(exc))
                _settle(item.future, exc=exc)
                failed.append(item)
                n += 1
                continue
            done.append((item, result))
            n += 1
        try:
            self._dialect.commit(conn)
        except self._dialect.errors as exc:
            # Nothing of this batch is durable: roll back and retry it all (bounded),
            # except the items that already failed for good.
            if conn.in_transaction:
                with suppress(*self._dialect.errors):
                    conn.execute("ROLLBACK")
            for item in failed:
                pending.remove(item)
            first = next((i for i in pending if isinstance(i, _Write)), None)
            if first is not None:
                self._transient(first, exc, pending)
            return False
        for _ in range(n):
            pending.popleft()
        for item, result in done:
            _settle(item.future, result)
        if retry_from is not None and transient_exc is not None:
            self._transient(retry_from, transient_exc, pending)
            return False
        if control is not None and pending and pending[0] is control:
            pending.popleft()
            return self._finish_control(control)
        return False

    def _transient(
        self, item: _Write, exc: BaseException, pending: deque[_Write | _Control]
    ) -> None:
        """Count a retryable failure of ``item`` (head of what remains); back off or drop."""
        STORE_ERRORS.labels(kind="disk_full").inc()
        item.attempts += 1
        if item.attempts > self._max_retries:
            STORE_ERRORS.labels(kind="dropped").inc()
            log.error("store_write_dropped", op=item.name, attempts=item.attempts, error=str(exc))
            pending.remove(item)
            _settle(item.future, exc=exc)
            return
        log.warning("store_write_retry", op=item.name, attempts=item.attempts, error=str(exc))
        time.sleep(min(1.0, self._retry_backoff * 2 ** (item.attempts - 1)))

    @staticmethod
    def _finish_control(control: _Control) -> bool:
        _settle(control.future)
        return control.kind == "stop"

    def flush(self, timeout: float | None = None) -> None:
        """Block until every write queued before this call is committed (or dropped)."""
        if not self._open:
            return
        barrier = _Control("flush")
        self._enqueue(barrier, block=True, timeout=timeout)
        barrier.future.result(timeout)

    async def aflush(self) -> None:
        """:meth:`flush` for the event loop (waits without blocking it)."""
        if not self._open:
            return
        barrier = _Control("flush")
        self._enqueue(barrier)
        await asyncio.wrap_future(barrier.future)

    def pending_writes(self) -> int:
        """Writes queued but not yet picked up by the writer (a health figure)."""
        return self._queue.qsize()

    # ---- reads -------------------------------------------------------------------

    def _reader(self) -> AbstractContextManager[Conn]:
        """A pooled read connection inside one read transaction (one consistent snapshot)."""
        return self._dialect.reader()

    async def aread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a sync read (e.g. ``store.get_call``) in the reader pool, off the loop."""
        if self._pool is None or not self._open:
            raise StoreClosedError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
