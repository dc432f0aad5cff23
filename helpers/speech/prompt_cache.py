"""A size-capped, crash-safe disk cache of rendered prompts (raw PCM), with a hot RAM layer.

Text-to-speech costs a tenth of real time or more per sentence; an IVR says the same few
prompts thousands of times a day. Rendering each (voice, text, rate, settings) once and
keeping the PCM makes a repeated prompt cost a dictionary lookup.

Layout: one file per entry, ``<sha256>.pcm`` in ``directory``, holding raw int16 LE mono PCM
(no header: the rate is part of the key). Writes go to a temporary name and are moved into
place with :func:`os.replace`, so a crash leaves either the whole entry or none; leftover
temporary files are deleted at start-up.

Eviction is least-recently-used by total bytes. Recency lives in an in-memory
``OrderedDict``; it is rebuilt from file modification times at start-up, and a hit touches the
file's mtime (deferred to the next blocking call when the hit came through :meth:`get_hot`,
which never touches the disk) so the order roughly survives restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

__all__ = ["PromptCache"]

_SUFFIX = ".pcm"
_TMP_SUFFIX = ".tmp"
_KEY_LEN = 64  # hex sha256


def _is_key(name: str) -> bool:
    return len(name) == _KEY_LEN and all(c in "0123456789abcdef" for c in name)


class PromptCache:
    """Disk cache of prompt PCM keyed by :meth:`key_for`, LRU-evicted above ``max_bytes``.

    ``memory_bytes`` caps a RAM copy of recently used entries no larger than
    ``memory_entry_max`` each (short prompts, the ones said most often), so a hot prompt is
    served without a disk read and :meth:`get_hot` can be called from the event loop.
    All methods are thread-safe.
    """

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int = 200 * 2**20,
        *,
        memory_bytes: int = 16 * 2**20,
        memory_entry_max: int = 2**20,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.memory_bytes = max(0, memory_bytes)
        self.memory_entry_max = min(memory_entry_max, self.memory_bytes)
        self._lock = threading.Lock()
        # key -> size in bytes; first = least recently used.
        self._index: OrderedDict[str, int] = OrderedDict()
        self._size = 0
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self._mem_size = 0
        # Keys hit through get_hot() whose file mtime is still to be refreshed.
        self._touch_pending: set[str] = set()
        self.hits = 0
        self.misses = 0
        self._scan()

    # -- keys ---------------------------------------------------------------------------

    @staticmethod
    def key_for(voice_id: str, text: str, rate: int, settings: object) -> str:
        """The cache key: sha256 of the voice id, normalised text, rate and settings repr.

        Text is stripped and its whitespace collapsed, so formatting differences in a flow
        file do not cause misses. ``settings`` may be any object with a stable ``repr``
        (a frozen dataclass) or a string.
        """
        norm = " ".join(text.split())
        settings_s = settings if isinstance(settings, str) else repr(settings)
        payload = json.dumps([voice_id, norm, int(rate), settings_s], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    # -- reading ------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{_SUFFIX}"

    def get_hot(self, key: str) -> bytes | None:
        """The entry if it is in the RAM layer, else ``None``; never touches the disk.

        Safe to call on the event loop. A ``None`` here is not a miss: the entry may still
        be on disk, so follow up with :meth:`get` in a thread. Counts a hit only.
        """
        with self._lock:
            data = self._mem.get(key)
            if data is None:
                return None
            self._mem.move_to_end(key)
            self._index.move_to_end(key)
            self._touch_pending.add(key)
            self.hits += 1
            return data

    def get(self, key: str) -> bytes | None:
        """The entry's PCM, or ``None`` when absent. May read the disk (blocking)."""
        with self._lock:
            data = self._mem.get(key)
            if data is not None:
                self._mem.move_to_end(key)
                self._index.move_to_end(key)
            elif key in self._index:
                self._index.move_to_end(key)
            else:
                self.misses += 1
                return None
            pending = self._take_touches()
        path = self._path(key)
        if data is None:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                # Deleted behind our back (or by a racing eviction): forget it.
                with self._lock:
                    self._drop(key)
                    self.misses += 1
                return None
            with self._lock:
                if key in self._index:
                    self._remember(key, data)
        with self._lock:
            self.hits += 1
        pending.add(key)
        self._touch(pending)
        return data

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def size_bytes(self) -> int:
        """Total bytes of the entries on disk."""
        with self._lock:
            return self._size

    @property
    def memory_size_bytes(self) -> int:
        """Bytes held by the RAM layer."""
        with self._lock:
            return self._mem_size

    def keys_lru(self) -> list[str]:
        """Keys from least to most recently used (for tests and diagnostics)."""
        with self._lock:
            return list(self._index)

    # -- writing ------------------------------------------------------------------------

    def put(self, key: str, pcm: bytes) -> bool:
        """Store ``pcm`` under ``key`` (blocking). Returns False when it cannot be stored.

        Empty PCM and entries larger than ``max_bytes`` are refused. The file is written
        under a temporary name, fsynced and renamed into place, so readers and crashes never
        see half an entry.
        """
        if not _is_key(key):
            raise ValueError(f"not a cache key: {key!r}")
        if not pcm or len(pcm) > self.max_bytes:
            return False
        final = self._path(key)
        tmp = self.directory / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                f.write(pcm)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            old = self._index.pop(key, None)
            if old is not None:
                self._size -= old
            self._index[key] = len(pcm)
            self._size += len(pcm)
            self._remember(key, pcm)
            self._evict()
            pending = self._take_touches()
        self._touch(pending)
        return True

    def clear(self) -> None:
        """Delete every entry."""
        with self._lock:
            for key in list(self._index):
                self._path(key).unlink(missing_ok=True)
            self._index.clear()
            self._mem.clear()
            self._size = self._mem_size = 0
            self._touch_pending.clear()

    # -- internals (callers hold the lock unless noted) ---------------------------------

    def _scan(self) -> None:
        """Rebuild the index from disk; delete temporaries and damaged entries."""
        found: list[tuple[int, str, int]] = []
        with os.scandir(self.directory) as it:
            for entry in it:
                name = entry.name
                if name.endswith(_TMP_SUFFIX):
                    # A write that never reached os.replace (crash or kill): never valid.
                    Path(entry.path).unlink(missing_ok=True)
                    continue
                if not name.endswith(_SUFFIX) or not _is_key(name[: -len(_SUFFIX)]):
                    continue  # not ours: leave it alone
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                # int16 PCM has an even, non-zero length; anything else is damage.
                if st.st_size == 0 or st.st_size % 2:
                    Path(entry.path).unlink(missing_ok=True)
                    continue
                found.append((st.st_mtime_ns, name[: -len(_SUFFIX)], st.st_size))
        found.sort()
        with self._lock:
            for _, key, size in found:
                self._index[key] = size
                self._size += size
            self._evict()

    def _remember(self, key: str, data: bytes) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._mem_size -= len(old)
        if len(data) > self.memory_entry_max:
            return
        self._mem[key] = data
        self._mem_size += len(data)
        while self._mem_size > self.memory_bytes and self._mem:
            _, dropped = self._mem.popitem(last=False)
            self._mem_size -= len(dropped)

    def _drop(self, key: str) -> None:
        size = self._index.pop(key, None)
        if size is not None:
            self._size -= size
        data = self._mem.pop(key, None)
        if data is not None:
            self._mem_size -= len(data)
        self._touch_pending.discard(key)

    def _evict(self) -> None:
        while self._size > self.max_bytes and self._index:
            key = next(iter(self._index))
            self._drop(key)
            # Unlinked under the lock so a concurrent put of the same key cannot be undone.
            self._path(key).unlink(missing_ok=True)

    def _take_touches(self) -> set[str]:
        pending = self._touch_pending
        self._touch_pending = set()
        return pending

    def _touch(self, keys: set[str]) -> None:
        """Refresh mtimes (outside the lock) so LRU order survives a restart."""
        for key in keys:
            try:
                os.utime(self._path(key))
            except FileNotFoundError:
                pass
