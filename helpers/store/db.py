"""The call store: the single-writer core with every table's queries.

``open_store(cluster.store, data_dir, node=…)`` is what the composition root and the CLI
commands call: SQLite in ``<data_dir>/calls.db`` when ``store`` is empty, else the
PostgreSQL database of that URL, retried until ``connect_timeout_s`` and then
:class:`StoreUnavailableError` (never a silent fall-back to SQLite). ``CallStore(path)``
(or ``with CallStore(path) as store:``) opens one directly. Each query module is a mixin over
:class:`helpers.store.core.StoreCore`; this class only puts them together.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog

from helpers.store.calls import CallQueries
from helpers.store.dialect import DB_FILENAME, is_pg_url
from helpers.store.jobs import JobQueries
from helpers.store.messages import MessageQueries
from helpers.store.segments import SegmentQueries

__all__ = ["CallStore", "StoreUnavailableError", "open_store"]

log = structlog.get_logger("helpers.store.core")


class CallStore(CallQueries, SegmentQueries, MessageQueries, JobQueries):
    """The call store (SQLite or PostgreSQL) with one writer thread and pooled readers.

    ``path`` is the SQLite database file, or a directory (the data dir), in which case
    ``calls.db`` inside it is used; or a ``postgresql://`` URL. Call :meth:`open` first (or
    use it as a context manager); :meth:`close` drains queued writes.
    """


class StoreUnavailableError(RuntimeError):
    """The PostgreSQL store could not be reached within the connect timeout."""


def open_store(
    store: str,
    data_dir: str | Path,
    *,
    node: str = "",
    connect_timeout_s: float = 10.0,
    **options: Any,
) -> CallStore:
    """Open the call store a config names (blocking): ``store`` empty is SQLite in
    ``data_dir``, a ``postgresql://`` URL is that database.

    PostgreSQL is retried until ``connect_timeout_s`` has passed (it may be starting beside
    us); then :class:`StoreUnavailableError` says why. Errors that are not about reaching
    the server (a schema newer than this code) are raised at once. ``options`` go to
    :class:`CallStore` (readers, batch_max, …).
    """
    if not store:
        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        return CallStore(data / DB_FILENAME, node=node, **options).open()
    if not is_pg_url(store):
        raise ValueError(f"store: {store!r} is not empty (SQLite) or a postgresql:// URL")
    from helpers.store.pg import _is_transient, redact

    started = time.monotonic()
    deadline = started + connect_timeout_s
    attempt = 0
    while True:
        attempt += 1
        left = deadline - time.monotonic()
        s = CallStore(store, node=node, data_dir=data_dir, connect_timeout=max(0.1, left),
                      **options)
        try:
            return s.open()
        except Exception as exc:
            if not _is_transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                waited = time.monotonic() - started
                raise StoreUnavailableError(
                    f"PostgreSQL store ({redact(store)}) not reachable after {attempt} "
                    f"attempts in {waited:.1f} s (cluster.connect_timeout_s = "
                    f"{connect_timeout_s:g}): {str(exc).strip()}"
                ) from exc
            log.warning("store_connect_retry", location=redact(store), attempt=attempt,
                        error=str(exc).strip(), left_s=round(left, 1))
            time.sleep(min(left, 0.25 * attempt, 1.0))
