"""The call store: the single-writer core with every table's queries.

``CallStore(path).open()`` (or ``with CallStore(path) as store:``) is what the composition
root builds and everything else is handed. Each query module is a mixin over
:class:`helpers.store.core.StoreCore`; this class only puts them together.
"""

from __future__ import annotations

from helpers.store.calls import CallQueries
from helpers.store.jobs import JobQueries
from helpers.store.messages import MessageQueries
from helpers.store.segments import SegmentQueries

__all__ = ["CallStore"]


class CallStore(CallQueries, SegmentQueries, MessageQueries, JobQueries):
    """SQLite call store with one writer thread and pooled readers.

    ``path`` is the database file, or a directory (the data dir), in which case
    ``calls.db`` inside it is used. Call :meth:`open` first (or use it as a context
    manager); :meth:`close` drains queued writes.
    """
