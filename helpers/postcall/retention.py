"""Retention: delete recordings and archives older than a number of days, per format.

Never while a job still needs the file (any pending or running job of the call), and never a
WAV before both archives were made and verified (their jobs are done). Every deletion is
written to the audit log with the file, its age and the rule that deleted it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from helpers.storage import resolve_stored

__all__ = ["Deletion", "apply_retention"]

log = structlog.get_logger("audiosocket.retention")


@dataclass(frozen=True)
class Deletion:
    """One file removed (or that would be, in a dry run)."""

    call_uuid: str
    fmt: str
    path: str
    age_days: float


def _candidates(store: Any, fmt: str, cutoff: float) -> list[dict[str, Any]]:
    # The store's read pool (either back-end); this runs in a thread, beside its writer.
    rows: list[dict[str, Any]] = store.execute_read(
        "SELECT r.call_uuid, r.path, c.ended_at, "
        " (SELECT count(*) FROM jobs j WHERE j.call_uuid = r.call_uuid "
        "   AND j.status IN ('pending', 'running')) AS busy, "
        " (SELECT count(*) FROM jobs j WHERE j.call_uuid = r.call_uuid "
        "   AND j.step IN ('archive_aac', 'archive_mp3') AND j.status = 'done') AS archived "
        "FROM recordings r JOIN calls c ON c.uuid = r.call_uuid "
        "WHERE r.format = ? AND c.ended_at IS NOT NULL AND c.ended_at < ?",
        (fmt, cutoff),
    )
    return rows


def apply_retention(
    store: Any, days_by_format: dict[str, float], *, now: float | None = None,
    dry_run: bool = False, root: Path | None = None,
) -> list[Deletion]:
    """Delete what the rules allow; a format with 0 days is kept forever. Blocking.

    ``root``: the files root relative paths are stored under (``config.shared_path``);
    None: the store's own (``store.files``), else paths are taken as they are.
    """
    now = time.time() if now is None else now
    files = getattr(store, "files", None)
    if root is None and files is not None:
        root = files.root
    done: list[Deletion] = []
    for fmt, days in days_by_format.items():
        if not days or days <= 0:
            continue
        for row in _candidates(store, fmt, now - days * 86400):
            if row["busy"]:
                continue  # a job still needs the call's files
            if fmt == "wav" and row["archived"] < 2:
                continue  # the original stays until both archives are verified
            age = (now - row["ended_at"]) / 86400
            item = Deletion(row["call_uuid"], fmt, row["path"], round(age, 2))
            done.append(item)
            if dry_run:
                continue
            try:
                os.remove(resolve_stored(root, row["path"]) if root is not None
                          else row["path"])
            except FileNotFoundError:
                pass
            store.delete_recording(row["call_uuid"], fmt)
            store.audit("retention_delete", row["call_uuid"], {
                "format": fmt, "path": row["path"], "age_days": item.age_days, "rule_days": days,
            })
            log.info("retention_delete", call=row["call_uuid"], format=fmt, age_days=item.age_days)
    if done and not dry_run:
        store.flush()
    return done
