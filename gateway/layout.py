"""The data directory's layout: partition, segment, Parquet and lock names (one place for each).

    <data_dir>/date=YYYY-MM-DD/hour=HH/<client-id>-<seq>.jsonl[.open|.gz]   readings, UTC hour
    <data_dir>/date=YYYY-MM-DD/hour=HH/readings.parquet                      compacted readings
    <data_dir>/dead-letter/date=YYYY-MM-DD/<client-id>-<seq>.jsonl[...]       rejections, by day
    <data_dir>/.compaction.lock                                              the tree lock

A segment is `.jsonl.open` while written, `.jsonl` once sealed, `.jsonl.gz` once compressed
(through `.jsonl.gz.tmp`); it is known by its stem `<client-id>-<seq>` whatever its suffix.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

DEAD_LETTER_DIR = "dead-letter"
OPEN_SUFFIX = ".jsonl.open"
SEALED_SUFFIX = ".jsonl"
GZIP_SUFFIX = ".jsonl.gz"
GZIP_TMP_SUFFIX = ".jsonl.gz.tmp"
# Longest first: `.jsonl` is a suffix of none of the others, but they all end differently.
SEGMENT_SUFFIXES = (GZIP_TMP_SUFFIX, GZIP_SUFFIX, OPEN_SUFFIX, SEALED_SUFFIX)
PARQUET_NAME = "readings.parquet"
PARQUET_TMP_NAME = PARQUET_NAME + ".tmp"
# Held exclusively while compaction or retention changes the tree, shared while an audit reads it.
LOCK_NAME = ".compaction.lock"
HOUR_GLOB = "date=*/hour=*"  # the readings' partitions, under the data directory
DAY_GLOB = "date=*"  # the rejections' partitions, under DEAD_LETTER_DIR
DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
HOUR_DIR = re.compile(r"^hour=(\d{2})$")


def segment_name(client_id: str, seq: int) -> str:
    """A segment's stem: its writer's client id and an increasing number."""
    return f"{client_id}-{seq:08d}"


def split_name(name: str) -> tuple[str, str] | None:
    """(stem, suffix) of a segment file name, or None for anything else."""
    for suffix in SEGMENT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


def hour_partition(ts: float) -> str:
    """`date=YYYY-MM-DD/hour=HH` (UTC) of an epoch time: the Hive partition of a reading."""
    return datetime.fromtimestamp(int(ts // 3600) * 3600, UTC).strftime("date=%Y-%m-%d/hour=%H")


def day_partition(ts: float) -> str:
    """`date=YYYY-MM-DD` (UTC) of an epoch time: the partition of a rejection."""
    return datetime.fromtimestamp(int(ts // 86400) * 86400, UTC).strftime("date=%Y-%m-%d")


def is_hour_dir(directory: Path) -> bool:
    """Whether `directory` is a `date=.../hour=...` partition (not a dead-letter day)."""
    return directory.parent.name.startswith("date=") and directory.name.startswith("hour=")


def segment_files(root: Path, *, include_open: bool = False) -> list[Path]:
    """Every readable segment file under `root` (any depth), sorted by path; a segment that is
    both `.jsonl` and `.jsonl.gz` (a crash between gzip and unlink) is listed once, as the .gz."""
    wanted = {SEALED_SUFFIX, GZIP_SUFFIX} | ({OPEN_SUFFIX} if include_open else set())
    found: dict[Path, Path] = {}
    for path in root.rglob("*.jsonl*"):
        parts = split_name(path.name)
        if parts is None or parts[1] not in wanted or not path.is_file():
            continue
        stem = path.with_name(parts[0])
        if stem not in found or parts[1] == GZIP_SUFFIX:
            found[stem] = path
    return sorted(found.values())
