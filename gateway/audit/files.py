"""The audit's view of data directories: every data partition (its Parquet file, then the
segments that file does not hold, then the complete lines of segments still open, reported
apart) and every dead-letter partition, read under each directory's shared lock so that
compaction and retention wait until the audit is done.

Several directories (one per gateway of a scale-out) are read as one store: segment names may
repeat across them, and each file is read once from where it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.compaction.partitions import (
    Partition,
    dead_letter_partitions,
    hour_partitions,
    tree_lock,
)
from gateway.errors import CompactionError
from gateway.segment_reader import complete_lines, open_live_segment, open_segment

# (data line, whether it came from an open segment)
OnLine = Callable[[bytes, bool], None]
# (device_id, seq, number of metric values) of one Parquet row
OnRow = Callable[[object, object, int], None]


@dataclass(slots=True)
class FilesRead:
    """How many files of each kind were read, and what could not be read as expected."""

    data_files: int = 0
    parquet_files: int = 0
    open_files: int = 0
    dead_letter_files: int = 0
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def shared_locks(data_dirs: Sequence[Path]) -> Iterator[None]:
    """Hold every directory's tree lock shared: nothing moves while the audit reads."""
    with contextlib.ExitStack() as stack:
        for data_dir in data_dirs:
            stack.enter_context(tree_lock(data_dir, exclusive=False, wait=True))
        yield


def read_data(data_dir: Path, read: FilesRead, on_line: OnLine, on_row: OnRow) -> None:
    """Every reading stored under `data_dir`, each counted once."""
    for partition in hour_partitions(data_dir):
        covered = _read_parquet(partition, read, on_row) if partition.parquet else frozenset()
        for stem in sorted(partition.sealed.keys() - covered):
            read.data_files += 1
            with open_segment(partition.directory, stem) as source:
                for line in complete_lines(source):
                    on_line(line, False)
        for stem in sorted(partition.open):
            read.data_files += 1
            read.open_files += 1
            with open_live_segment(partition.directory, stem) as source:
                for line in complete_lines(source):
                    on_line(line, True)


def _read_parquet(partition: Partition, read: FilesRead, on_row: OnRow) -> frozenset[str]:
    """Count the rows of a partition's Parquet file; return the segments it holds."""
    # Here, not at the top: `gateway run` imports this module, and pyarrow stays out of it.
    from gateway.columnar.reader import audit_rows, covered_segments  # noqa: PLC0415

    path = partition.parquet_path
    try:
        covered = covered_segments(path)
    except CompactionError as exc:
        read.notes.append(f"{partition.name}: {exc.detail}; its JSON Lines were read instead")
        return frozenset()
    read.data_files += 1
    read.parquet_files += 1
    for device_id, seq, values in audit_rows(path):
        on_row(device_id, seq, values)
    return covered


def read_dead_letter(data_dir: Path, read: FilesRead, on_line: Callable[[bytes], None]) -> None:
    """Every dead-letter record stored under `data_dir`."""
    for partition in dead_letter_partitions(data_dir):
        for stem in sorted(partition.sealed):
            read.dead_letter_files += 1
            with open_segment(partition.directory, stem) as source:
                for line in complete_lines(source):
                    on_line(line)
        for stem in sorted(partition.open):
            read.dead_letter_files += 1
            with open_live_segment(partition.directory, stem) as source:
                for line in complete_lines(source):
                    on_line(line)
