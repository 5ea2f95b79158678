"""Retention: delete whole partitions past an age, then the oldest ones past a size budget.

The data tree (hour partitions) and the dead-letter tree (day partitions) have their own
limits. A partition with an open segment is never touched: it belongs to a running gateway.
Deleting is by whole partition, oldest first, so what remains is always a contiguous recent
window; a partition's Parquet file goes last, so a crash midway never leaves a segment counted
twice (the file still lists it) or a partition half read.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.compaction.partitions import Partition
from gateway.errors import DeleteReason
from gateway.layout import PARQUET_NAME, is_hour_dir
from gateway.sinks.segment import fsync_dir


@dataclass(slots=True)
class Kept:
    """What retention did to one tree, and what is left."""

    deleted: dict[DeleteReason, int] = field(default_factory=dict)  # files, by reason
    partitions_deleted: int = 0
    size_bytes: int = 0  # on disk after this pass


def apply_limits(
    partitions: list[Partition], *, max_age_s: float, max_bytes: int, now: float
) -> Kept:
    """Delete partitions (oldest first) past `max_age_s` after their end, then while the tree
    is larger than `max_bytes` (0 disables either). Blocking: run in a thread, under the lock."""
    kept = Kept(size_bytes=sum(p.size_bytes for p in partitions))
    for partition in partitions:  # oldest first
        reason: DeleteReason
        if max_age_s and partition.end <= now - max_age_s:
            reason = "max_age"
        elif max_bytes and kept.size_bytes > max_bytes:
            reason = "max_bytes"
        else:
            continue
        if partition.open:
            continue  # a running gateway writes here; never delete under it
        files = _delete_partition(partition.directory)
        kept.deleted[reason] = kept.deleted.get(reason, 0) + files
        kept.partitions_deleted += 1
        kept.size_bytes -= partition.size_bytes
    return kept


def _delete_partition(directory: Path) -> int:
    names = sorted(os.listdir(directory), key=lambda name: name == PARQUET_NAME)  # Parquet last
    deleted = 0
    for name in names:
        path = directory / name
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted += 1
    fsync_dir(directory)
    # A gateway may have just created a segment here (a late reading): then the directory stays.
    with contextlib.suppress(OSError):
        directory.rmdir()
        fsync_dir(directory.parent)
        if is_hour_dir(directory):
            directory.parent.rmdir()
            fsync_dir(directory.parent.parent)
    return deleted
