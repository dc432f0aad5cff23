"""Where recordings, archives, peaks and voicemail live: one root, paths relative to it.

Several servers share one directory (``[cluster] shared_dir``, an NFS or similar mount on
every node; ``data_dir`` when unset). The store keeps each file's path *relative* to that
root (``recordings/<id>.wav``, ``archive/<id>.m4a``), so a node that mounts it elsewhere,
or a portal on another machine, still finds the file; :meth:`LocalStorage.path` is the
one place a stored path becomes a file. Rows written before (absolute paths) are used as
they are.

:class:`Storage` is the interface an object store would implement later (S3: ranges are
``GET`` with ``Range``; measured on moto and SeaweedFS, a multi-range request came back
as the whole file with 200, so only single ranges are asked of it). ``calls.db`` is never
here: SQLite's WAL needs a single host (docs/SCALE-OUT.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

__all__ = ["LocalStorage", "RangeReader", "Storage", "resolve_stored"]


class RangeReader(Protocol):
    """Bytes ``[start, end)`` of a stored file: ``read`` until it returns ``b""``."""

    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None: ...


class Storage(Protocol):
    """Files addressed by a path relative to the storage's root (``recordings/x.wav``)."""

    def open_range(self, rel: str, start: int, end: int) -> RangeReader:
        """Bytes ``start`` (inclusive) to ``end`` (exclusive) of the file. Blocking."""
        ...

    def put(self, rel: str, src_path: Path) -> str:
        """Move a finished local file in under ``rel`` (atomic where the root allows);
        returns the path to store. Blocking."""
        ...

    def exists(self, rel: str) -> bool:
        """Whether the file is there. Blocking."""
        ...

    def delete(self, rel: str) -> bool:
        """Remove the file; False when it was not there. Blocking."""
        ...


def resolve_stored(root: Path, stored: str | Path) -> Path:
    """The file a stored path names: absolute (a row from before the shared root, or a
    file outside it) as it is, relative under ``root``. A relative path that climbs out
    of the root (``..``) is refused: the store's rows are ours, but a bug must not turn
    into a read or a delete anywhere on the disk."""
    path = Path(stored)
    if path.is_absolute():
        return path
    if ".." in PurePosixPath(str(stored)).parts or ".." in path.parts:
        raise ValueError(f"stored path {stored!r} leaves the storage root")
    # Rows written before paths were stored relative to the root hold the path as it was
    # opened: with the default ``data_dir`` of ``./var``, ``var/recordings/x.wav``, relative
    # to the working directory and already under the (relative) root.
    prefix = root.parts
    if prefix and not root.is_absolute() and path.parts[: len(prefix)] == prefix:
        return path
    return root / path


class _FileRange:
    """A byte range of an open file (the local :class:`RangeReader`)."""

    def __init__(self, fh: BinaryIO, start: int, end: int) -> None:
        self._fh = fh
        self._left = max(0, end - start)
        fh.seek(start)

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if size < 0 else min(size, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        if not data:
            self._left = 0
        return data

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _FileRange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalStorage:
    """A directory on this machine (local disk or a mount every node shares)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, rel: str | Path) -> Path:
        """The local file a stored path names (:func:`resolve_stored`)."""
        return resolve_stored(self.root, rel)

    def relative(self, path: str | Path) -> str:
        """What to store for ``path``: relative to the root (POSIX separators) when it is
        under it, else the path as it is (a file outside the root stays absolute)."""
        p = Path(path)
        if not p.is_absolute():
            # Relative to the working directory, under a root named relatively too (the
            # default ``data_dir`` is ``./var``: ``var/recordings/x.wav`` under ``var``);
            # else already relative to the root.
            with contextlib.suppress(ValueError):
                return p.absolute().relative_to(self.root.absolute()).as_posix()
            return PurePosixPath(*p.parts).as_posix()
        with contextlib.suppress(ValueError):
            return p.relative_to(self.root).as_posix()
        # The root may be named through a symlink or with ``..``: compare resolved forms.
        with contextlib.suppress(ValueError, OSError):
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        return str(p)

    def open_range(self, rel: str, start: int, end: int) -> _FileRange:
        """Bytes ``[start, end)`` of the file (fewer if it is shorter)."""
        return _FileRange(open(self.path(rel), "rb"), start, end)

    def put(self, rel: str, src_path: Path) -> str:
        """Move ``src_path`` to ``rel``: a rename when both are on one file system, else a
        copy to a temporary name beside the target and a rename, so no reader ever sees a
        partial file. Returns ``rel`` (what to store)."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src_path, target)
        except OSError:
            tmp = target.with_name(f".{target.name}.partial")
            shutil.copyfile(src_path, tmp)
            os.replace(tmp, target)
            Path(src_path).unlink(missing_ok=True)
        return self.relative(target)

    def exists(self, rel: str) -> bool:
        """Whether the file is there."""
        return self.path(rel).is_file()

    def delete(self, rel: str) -> bool:
        """Remove the file; False when it was already gone."""
        try:
            self.path(rel).unlink()
        except FileNotFoundError:
            return False
        return True
