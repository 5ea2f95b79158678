"""What is on disk: the hour (and dead-letter day) partitions, their segments, their Parquet file.

Names and suffixes are gateway/layout.py's; a segment is known by its stem `<client-id>-<seq>`,
whatever suffix it has now, since a seal or a gzip renames it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway.layout import (
    DATE_DIR,
    DEAD_LETTER_DIR,
    GZIP_TMP_SUFFIX,
    HOUR_DIR,
    LOCK_NAME,
    OPEN_SUFFIX,
    PARQUET_NAME,
    PARQUET_TMP_NAME,
    split_name,
)

HOUR_S = 3600.0
DAY_S = 86400.0


@dataclass(slots=True)
class Partition:
    """One `date=/hour=` directory (or a dead-letter `date=` directory) as listed right now."""

    directory: Path
    start: float  # epoch seconds, UTC
    length_s: float
    sealed: dict[str, set[str]] = field(default_factory=dict)  # stem -> suffixes present
    open: set[str] = field(default_factory=set)  # stems still being written
    parquet: bool = False
    parquet_tmp: bool = False
    size_bytes: int = 0

    @property
    def end(self) -> float:
        return self.start + self.length_s

    @property
    def name(self) -> str:
        """`date=.../hour=...`, for logs."""
        return (
            "/".join(self.directory.parts[-2:]) if self.length_s == HOUR_S else self.directory.name
        )

    @property
    def parquet_path(self) -> Path:
        return self.directory / PARQUET_NAME


def _day_start(name: str) -> float | None:
    match = DATE_DIR.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match[1], "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _list(directory: Path, start: float, length_s: float) -> Partition:
    partition = Partition(directory, start, length_s)
    with os.scandir(directory) as entries:
        for entry in entries:
            # Symlinks are followed: a view of several gateways' segments is read like one tree.
            if not entry.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):  # renamed or removed meanwhile
                partition.size_bytes += entry.stat().st_size
            if entry.name == PARQUET_NAME:
                partition.parquet = True
            elif entry.name == PARQUET_TMP_NAME:
                partition.parquet_tmp = True
            elif (parts := split_name(entry.name)) is not None:
                stem, suffix = parts
                if suffix == OPEN_SUFFIX:
                    partition.open.add(stem)
                elif suffix != GZIP_TMP_SUFFIX:
                    partition.sealed.setdefault(stem, set()).add(suffix)
    # A segment sealed between two directory entries shows as both open and sealed: sealed wins.
    partition.open -= partition.sealed.keys()
    return partition


def hour_partitions(data_dir: Path) -> list[Partition]:
    """Every `date=YYYY-MM-DD/hour=HH` directory under `data_dir`, oldest first."""
    found = []
    for day in _subdirs(data_dir):
        day_start = _day_start(day.name)
        if day_start is None:
            continue
        for hour in _subdirs(day):
            match = HOUR_DIR.match(hour.name)
            if match is not None and int(match[1]) < 24:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    found.append(_list(hour, day_start + int(match[1]) * HOUR_S, HOUR_S))
    return sorted(found, key=lambda p: p.start)


def dead_letter_partitions(data_dir: Path) -> list[Partition]:
    """Every `dead-letter/date=YYYY-MM-DD` directory, oldest first."""
    found = []
    for day in _subdirs(data_dir / DEAD_LETTER_DIR):
        day_start = _day_start(day.name)
        if day_start is not None:
            with contextlib.suppress(FileNotFoundError):
                found.append(_list(day, day_start, DAY_S))
    return sorted(found, key=lambda p: p.start)


def _subdirs(directory: Path) -> list[Path]:
    try:
        with os.scandir(directory) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


@contextlib.contextmanager
def tree_lock(data_dir: Path, *, exclusive: bool, wait: bool) -> Iterator[bool]:
    """flock on `<data_dir>/.compaction.lock`; yields whether it was taken.

    Exclusive for compaction and retention (one at a time, whichever gateway or cron job runs
    them), shared for an audit, so nothing moves under a reader. The lock dies with its process.
    A data directory where the lock file cannot be made (read-only) is read without it.
    """
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
        yield False
        return
    try:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock
