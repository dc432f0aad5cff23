"""The call store: SQLite in the data directory (``<data_dir>/calls.db``).

(Over 600 lines on purpose: the writer thread and every write method that queues a closure
for it are one mechanism; the schema and the read queries already live in ``store_schema``
and ``store_queries``.)

Rule 1 of the design says the event loop never blocks, and SQLite blocks (fsync, locks,
page cache misses). So:

* **Writes** never run on the caller's thread. Every write method builds a small closure,
  puts it on a queue and returns at once with a :class:`concurrent.futures.Future`; callers
  on the loop ignore it (fire-and-forget), callers that need the outcome (tests, the CLI,
  post-call workers) call ``.result()`` or ``await asyncio.wrap_future(f)``. ONE writer thread
  owns the only write connection; it drains whatever is queued and commits it in one
  transaction (one fsync per batch, not per row), each item inside its own SAVEPOINT so a
  bad statement only loses itself.
* **Reads** use separate connections (WAL lets readers run beside the writer). From asyncio,
  ``await store.aread(store.get_call, uuid)`` runs the read in a small thread pool; the same
  methods may be called directly from any thread outside the loop.

Schema changes are numbered migrations recorded in ``PRAGMA user_version``; each runs in
its own transaction so a failure leaves the file at the previous, consistent version.

Why this module is ~900 lines: the writer thread, its batching, retries and every write
operation (each a closure only the writer runs) belong together; the schema lives in
``helpers.store.schema`` and the read queries in ``helpers.store.queries``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from prometheus_client import Counter

from helpers.store.queries import StoreQueries, fts_query, iso_utc
from helpers.store.schema import MIGRATIONS, Migration
from helpers.store.schema import migrate as _migrate

__all__ = [
    "DB_FILENAME",
    "JOB_STATUSES",
    "MIGRATIONS",
    "RECORDING_FORMATS",
    "SPEAKERS",
    "STORE_ERRORS",
    "CallStore",
    "StoreClosedError",
    "fts_query",
    "iso_utc",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

DB_FILENAME = "calls.db"
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

class StoreClosedError(RuntimeError):
    """A write was submitted to a store that is not open."""


def _is_transient(exc: BaseException) -> bool:
    """Errors worth retrying later: a full disk, or a lock held by another process."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    msg = str(exc).lower()
    return "full" in msg or "locked" in msg or "busy" in msg


@dataclass(eq=False)
class _Write:
    """One queued write: ``op`` runs on the writer connection inside a transaction."""

    op: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any]
    name: str
    attempts: int = 0
    # A claim nobody waits for any more (its awaiting task was cancelled, e.g. at
    # shutdown) must not run: it would leave a job 'running' with no worker on it.
    skip_if_cancelled: bool = False


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


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


class CallStore(StoreQueries):
    """SQLite call store with one writer thread and pooled readers.

    ``path`` is the database file, or a directory (the data dir), in which case
    ``calls.db`` inside it is used. Call :meth:`open` first (or use it as a context
    manager); :meth:`close` drains queued writes.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        readers: int = 4,
        batch_max: int = 500,
        queue_max: int = 100_000,
        max_retries: int = 5,
        retry_backoff: float = 0.05,
        migrations: Sequence[Migration] | None = None,
    ) -> None:
        p = Path(path)
        self.path: Path = p / DB_FILENAME if p.is_dir() else p
        self._readers = readers
        self._batch_max = batch_max
        self._max_retries = max_retries
        self._retry_backoff = retry_backoff
        self._migrations: Sequence[Migration] = MIGRATIONS if migrations is None else migrations
        # Bounded (rule 3): if the disk stalls for long, refuse new writes (counted)
        # rather than grow without limit; put_nowait never blocks the loop.
        self._queue: queue.Queue[_Write | _Control] = queue.Queue(maxsize=queue_max)
        self._writer: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conns: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all_read_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._open = False

    # ---- lifecycle ---------------------------------------------------------------

    def open(self) -> CallStore:
        """Create/migrate the database and start the writer thread and reader pool."""
        if self._open:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            # journal_mode=WAL is persistent in the file; set it before migrating so the
            # migrations themselves are already WAL transactions.
            conn.execute("PRAGMA journal_mode=WAL")
            _migrate(conn, self._migrations)
        finally:
            conn.close()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._writer = threading.Thread(
            target=self._writer_main, args=(ready,), name="store-writer", daemon=True
        )
        self._writer.start()
        ready.result()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._readers, thread_name_prefix="store-read"
        )
        self._open = True
        log.info("store_opened", path=str(self.path))
        return self

    def close(self) -> None:
        """Commit everything queued, stop the writer, close all connections."""
        if not self._open:
            return
        self._open = False
        stop = _Control("stop")
        self._queue.put(stop)  # blocking put: the stop must not be dropped
        if self._writer is not None:
            # Wait for the writer, not for the barrier alone: should the thread ever die
            # before reaching the stop, close() must still return (and say so).
            while self._writer.is_alive():
                self._writer.join(timeout=1.0)
            if not stop.future.done():
                STORE_ERRORS.labels(kind="writer_died").inc()
                log.error("store_writer_died", path=str(self.path))
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
        with self._lock:
            for conn in self._all_read_conns:
                conn.close()
            self._all_read_conns.clear()
        while not self._read_conns.empty():
            self._read_conns.get_nowait()
        log.info("store_closed", path=str(self.path))

    def __enter__(self) -> CallStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._open

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

    # ---- the writer thread -------------------------------------------------------

    def _submit(
        self, op: Callable[[sqlite3.Connection], T], name: str = "write",
        *, skip_if_cancelled: bool = False,
    ) -> concurrent.futures.Future[T]:
        """Queue ``op`` for the writer; never blocks. The future resolves after COMMIT."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if not self._open:
            fut.set_exception(StoreClosedError(f"store is closed; {name} not written"))
            log.warning("store_write_after_close", op=name)
            return fut
        try:
            self._queue.put_nowait(_Write(op, fut, name, skip_if_cancelled=skip_if_cancelled))
        except queue.Full:
            STORE_ERRORS.labels(kind="queue_full").inc()
            log.error("store_queue_full", op=name, depth=self._queue.qsize())
            fut.set_exception(RuntimeError("store write queue full"))
        return fut

    def _writer_main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        pending: deque[_Write | _Control] = deque()
        try:
            while True:
                if not pending:
                    pending.append(self._queue.get())
                # Batch: take what is already waiting, up to a barrier or batch_max.
                while len(pending) < self._batch_max and not isinstance(pending[-1], _Control):
                    try:
                        pending.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    if self._run_batch(conn, pending):
                        return
                except Exception as exc:
                    # A bug or an I/O error outside any item: never let the writer die
                    # (every later write would hang). Drop the head item and go on.
                    STORE_ERRORS.labels(kind="statement").inc()
                    log.exception("store_writer_error", error=repr(exc))
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    if not pending:
                        continue
                    head = pending.popleft()
                    if isinstance(head, _Write):
                        _settle(head.future, exc=exc)
                    elif self._finish_control(head):
                        return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, pending: deque[_Write | _Control]) -> bool:
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
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            head = pending[0]
            if isinstance(head, _Write):
                self._transient(head, exc, pending)
            else:  # nothing to write; the barrier is satisfied as is
                pending.popleft()
                return self._finish_control(head)
            return False
        n = 0
        for item in pending:
            if isinstance(item, _Control):
                control = item
                break
            if item.skip_if_cancelled and item.future.cancelled():
                done.append((item, None))
                n += 1
                continue
            try:
                conn.execute("SAVEPOINT w")
                try:
                    result = item.op(conn)
                except BaseException:
                    # SQLITE_FULL/IOERR may already have rolled back the whole
                    # transaction, taking the savepoint with it; checked before COMMIT.
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                    raise
                conn.execute("RELEASE w")
            except Exception as exc:
                if _is_transient(exc):
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
            if not conn.in_transaction:
                raise sqlite3.OperationalError("transaction rolled back by SQLite (disk full?)")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # Nothing of this batch is durable: roll back and retry it all (bounded),
            # except the items that already failed for good.
            if conn.in_transaction:
                with suppress(sqlite3.Error):
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
        self._queue.put(barrier, timeout=timeout)
        barrier.future.result(timeout)

    async def aflush(self) -> None:
        """:meth:`flush` for the event loop (waits without blocking it)."""
        if not self._open:
            return
        barrier = _Control("flush")
        self._queue.put_nowait(barrier)
        await asyncio.wrap_future(barrier.future)

    def pending_writes(self) -> int:
        """Writes queued but not yet picked up by the writer (a health figure)."""
        return self._queue.qsize()

    # ---- reads -------------------------------------------------------------------

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A pooled read connection inside one read transaction (one consistent snapshot)."""
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

    async def aread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a sync read (e.g. ``store.get_call``) in the reader pool, off the loop."""
        if self._pool is None or not self._open:
            raise StoreClosedError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    # ---- call lifecycle (writes) ---------------------------------------------------

    def call_started(
        self,
        uuid: str,
        app: str,
        rate: int,
        peer: str | None,
        started_at: float,
        caller: str | None = None,
        meta: dict[str, Any] | None = None,
        audiosocket_uuid: str | None = None,
    ) -> concurrent.futures.Future[bool]:
        """Record a new call under its own id ``uuid``; the future says if it was new.

        A row already under that id is another call's and is never touched (the server
        gives a reused AudioSocket UUID a fresh id; see ``audiosocket.call.CallIds``).
        """
        meta_json = json.dumps(meta or {})

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO calls (uuid, app, rate, peer, started_at, caller, meta, "
                "audiosocket_uuid) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(uuid) DO NOTHING",
                (uuid, app, rate, peer, started_at, caller, meta_json, audiosocket_uuid),
            )
            if cur.rowcount == 0:
                STORE_ERRORS.labels(kind="call_id_taken").inc()
                log.error("call_id_taken", call=uuid)
                return False
            return True

        return self._submit(op, "call_started")

    def call_ended(
        self,
        uuid: str,
        ended_at: float,
        end_reason: str,
        frames_in: int,
        frames_out: int,
    ) -> concurrent.futures.Future[None]:
        """Close a live call; duration is computed from its started_at. A call that has
        already ended keeps its end (nothing of a finished call is overwritten)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE calls SET ended_at=?, end_reason=?, frames_in=?, frames_out=?, "
                "duration=max(0.0, ? - started_at) WHERE uuid=? AND ended_at IS NULL",
                (ended_at, end_reason, frames_in, frames_out, ended_at, uuid),
            )

        return self._submit(op, "call_ended")

    def close_dangling_calls(
        self,
        ended_at: float | None = None,
        end_reason: str = "server_restart",
        *,
        recordings: Path | None = None,
    ) -> concurrent.futures.Future[int]:
        """At start-up: calls left 'live' by a crash get an end; returns how many.

        Their duration is the last activity known, never the downtime: the length of the
        recording ``<recordings>/<call id>.wav`` when there is one, else the end of the last
        transcript segment, else 0; ``ended_at`` is ``started_at`` plus that (at most
        ``ended_at``, default now).
        """
        at = time.time() if ended_at is None else ended_at

        def op(conn: sqlite3.Connection) -> int:
            from helpers.recorder import wav_seconds

            rows = conn.execute(
                "SELECT c.uuid, c.started_at, (SELECT max(s.\"end\") FROM segments s "
                "WHERE s.call_uuid = c.uuid) FROM calls c WHERE c.ended_at IS NULL"
            ).fetchall()
            for call_id, started_at, last_segment in rows:
                seconds = None
                if recordings is not None:
                    seconds = wav_seconds(recordings / f"{call_id}.wav")
                if seconds is None:
                    seconds = float(last_segment or 0.0)
                seconds = max(0.0, min(seconds, at - started_at))
                conn.execute(
                    "UPDATE calls SET ended_at=?, end_reason=?, duration=? WHERE uuid=?",
                    (started_at + seconds, end_reason, seconds, call_id),
                )
            return len(rows)

        return self._submit(op, "close_dangling_calls")

    def add_segment(
        self,
        call_uuid: str,
        start: float,
        end: float,
        text: str,
        confidence: float | None,
        latency_ms: float | None,
        kind: str = "live",
        *,
        speaker: str = "caller",
        interrupted: bool = False,
    ) -> concurrent.futures.Future[int]:
        """Append one transcript line; the future gives its id.

        ``speaker`` is ``caller`` (recognised speech) or ``server`` (what the server said:
        stored as ``live``, and shown beside the live or the final caller transcript);
        ``interrupted`` marks a server line cut short.
        """
        if speaker not in SPEAKERS:
            raise ValueError(f"unknown speaker {speaker!r}")
        now = time.time()
        cut = int(bool(interrupted))

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                'INSERT INTO segments (call_uuid, start, "end", text, confidence, latency_ms, '
                "kind, created_at, speaker, interrupted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (call_uuid, start, end, text, confidence, latency_ms, kind, now, speaker, cut),
            )
            return int(cur.lastrowid or 0)

        return self._submit(op, "add_segment")

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

        def op(conn: sqlite3.Connection) -> None:
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

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "UPDATE messages SET transcript=? WHERE call_uuid=? AND name=?",
                (text, call_uuid, name),
            ).rowcount > 0

        return self._submit(op, "set_message_transcript")

    def replace_final_transcript(
        self, call_uuid: str, segments: Sequence[dict[str, Any]]
    ) -> concurrent.futures.Future[None]:
        """Swap in the post-call transcript of the caller (dicts with start, end, text,
        confidence?, latency_ms?); live segments are kept but :meth:`get_call` prefers
        these. The server's lines are left as they are."""
        now = time.time()
        rows = [
            (
                call_uuid,
                float(s["start"]),
                float(s["end"]),
                str(s["text"]),
                s.get("confidence"),
                s.get("latency_ms"),
                now,
            )
            for s in segments
        ]

        def op(conn: sqlite3.Connection) -> None:
            # Only the caller's: what the server said is known, never re-recognised.
            conn.execute(
                "DELETE FROM segments WHERE call_uuid=? AND kind='final' AND speaker='caller'",
                (call_uuid,),
            )
            conn.executemany(
                'INSERT INTO segments (call_uuid, start, "end", text, confidence, latency_ms, '
                "kind, created_at) VALUES (?, ?, ?, ?, ?, ?, 'final', ?)",
                rows,
            )

        return self._submit(op, "replace_final_transcript")

    def set_ivr(
        self,
        call_uuid: str,
        path: Sequence[Any],
        variables: dict[str, Any],
        result: str | None,
    ) -> concurrent.futures.Future[None]:
        """Record (or overwrite) the IVR path taken, its variables and its outcome."""
        path_json = json.dumps(list(path))
        vars_json = json.dumps(variables)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO ivr (call_uuid, path, variables, result) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(call_uuid) DO UPDATE SET path=excluded.path, "
                "variables=excluded.variables, result=excluded.result",
                (call_uuid, path_json, vars_json, result),
            )

        return self._submit(op, "set_ivr")

    def set_summary(
        self,
        call_uuid: str,
        title: str,
        text: str,
        method: str,
        model: str | None = None,
        created_at: float | None = None,
    ) -> concurrent.futures.Future[None]:
        """Record (or overwrite) the call's summary."""
        at = time.time() if created_at is None else created_at

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO summaries (call_uuid, title, text, method, model, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(call_uuid) DO UPDATE SET "
                "title=excluded.title, text=excluded.text, method=excluded.method, "
                "model=excluded.model, created_at=excluded.created_at",
                (call_uuid, title, text, method, model, at),
            )

        return self._submit(op, "set_summary")

    def set_recording(
        self,
        call_uuid: str,
        fmt: str,
        path: str | Path,
        bytes: int,  # shadows a builtin: the column name, as in the brief
        duration: float | None,
    ) -> concurrent.futures.Future[None]:
        """Record (or overwrite) one stored file of the call: wav, m4a, mp3 or peaks."""
        if fmt not in RECORDING_FORMATS:
            raise ValueError(f"unknown recording format {fmt!r}")
        now = time.time()
        size = bytes

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO recordings (call_uuid, format, path, bytes, duration, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(call_uuid, format) DO UPDATE SET "
                "path=excluded.path, bytes=excluded.bytes, duration=excluded.duration, "
                "created_at=excluded.created_at",
                (call_uuid, fmt, str(path), size, duration, now),
            )

        return self._submit(op, "set_recording")

    def delete_recording(self, call_uuid: str, fmt: str) -> concurrent.futures.Future[None]:
        """Forget one stored file of the call (the caller deletes the file itself)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM recordings WHERE call_uuid=? AND format=?", (call_uuid, fmt))

        return self._submit(op, "delete_recording")

    def audit(
        self, action: str, call_uuid: str | None, detail: str | dict[str, Any] = ""
    ) -> concurrent.futures.Future[None]:
        """Append to the audit trail (dict details are stored as JSON)."""
        now = time.time()
        text = detail if isinstance(detail, str) else json.dumps(detail)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit (at, action, call_uuid, detail) VALUES (?, ?, ?, ?)",
                (now, action, call_uuid, text),
            )

        return self._submit(op, "audit")

    def delete_call(self, uuid: str) -> concurrent.futures.Future[bool]:
        """Delete a call and (by cascade) everything about it; the future says if it existed.

        Files on disk are the caller's business: read :meth:`recordings_for` and
        :meth:`messages_for` first.
        """

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM calls WHERE uuid=?", (uuid,)).rowcount > 0

        return self._submit(op, "delete_call")

    # ---- jobs -------------------------------------------------------------------

    def enqueue_jobs(
        self, call_uuid: str, steps: Sequence[str], not_before: float | None = None
    ) -> concurrent.futures.Future[None]:
        """Add pending jobs for a call; a step already present is left as it is."""
        now = time.time()
        nb = now if not_before is None else not_before
        rows = [(call_uuid, step, nb, now) for step in steps]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO jobs (call_uuid, step, status, not_before, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?) ON CONFLICT(call_uuid, step) DO NOTHING",
                rows,
            )

        return self._submit(op, "enqueue_jobs")

    def claim_job_async(
        self, steps: set[str] | None = None, now: float | None = None
    ) -> concurrent.futures.Future[dict[str, Any] | None]:
        """Queue an atomic pending→running claim; the future gives the job dict or None."""
        step_list = sorted(steps) if steps is not None else None

        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            at = time.time() if now is None else now
            where = "status='pending' AND not_before <= ?"
            params: list[Any] = [at]
            if step_list is not None:
                if not step_list:
                    return None
                where += f" AND step IN ({','.join('?' * len(step_list))})"
                params += step_list
            # One UPDATE ... RETURNING: atomic even against another process.
            row = conn.execute(
                "UPDATE jobs SET status='running', attempts=attempts+1, updated_at=? "
                f"WHERE id = (SELECT id FROM jobs WHERE {where} ORDER BY not_before, id "
                "LIMIT 1) RETURNING *",
                [at, *params],
            ).fetchone()
            return dict(row) if row is not None else None

        return self._submit(op, "claim_job", skip_if_cancelled=True)

    def claim_job(
        self, steps: set[str] | None = None, now: float | None = None
    ) -> dict[str, Any] | None:
        """Claim the oldest due pending job (optionally among ``steps``), or None.

        Blocking (it waits for the writer): call it from a worker thread, or await
        ``asyncio.wrap_future(store.claim_job_async(...))`` on the loop.
        """
        return self.claim_job_async(steps, now).result()

    def finish_job(
        self,
        id: int,  # shadows a builtin: the column name, as in the brief
        status: str,
        error: str | None = None,
        duration: float | None = None,
        retry_delay: float | None = None,
    ) -> concurrent.futures.Future[None]:
        """Mark a job 'done' or 'failed'; 'failed' with ``retry_delay`` goes back to
        'pending', not before now + retry_delay (the caller decides how many attempts)."""
        if status not in ("done", "failed"):
            raise ValueError(f"finish_job status must be 'done' or 'failed', not {status!r}")
        now = time.time()
        job_id = id
        if status == "failed" and retry_delay is not None:
            new_status, not_before = "pending", now + retry_delay
        else:
            new_status, not_before = status, None

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET status=?, error=?, duration=?, updated_at=?, "
                "not_before=coalesce(?, not_before) WHERE id=?",
                (new_status, error, duration, now, not_before, job_id),
            )

        return self._submit(op, "finish_job")

    def defer_job(self, id: int, delay: float) -> concurrent.futures.Future[None]:
        """Put a claimed job back to 'pending' without counting the attempt: it could not
        run yet (a step it depends on is not done), which is not a failure."""
        job_id = id
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET status='pending', attempts=max(0, attempts-1), updated_at=?, "
                "not_before=? WHERE id=?",
                (now, now + delay, job_id),
            )

        return self._submit(op, "defer_job")

    def pending_job_count(self) -> int:
        """Jobs waiting or running (the post-call queue depth)."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')"
            ).fetchone()
        return int(row[0])

    def reset_running_jobs(self) -> int:
        """At start-up (crash resume): running → pending. Blocks; returns how many."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE jobs SET status='pending', updated_at=? WHERE status='running'",
                (time.time(),),
            ).rowcount

        return self._submit(op, "reset_running_jobs").result()

    def jobs_for(self, call_uuid: str) -> list[dict[str, Any]]:
        """All jobs of a call, oldest first."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE call_uuid=? ORDER BY id", (call_uuid,)
            ).fetchall()
        return [dict(r) for r in rows]
