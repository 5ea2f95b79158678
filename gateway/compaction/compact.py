"""Compact one closed partition to Parquet, crash-safely; and one pass over the data directory.

Per partition, every step leaves a state in which each reading is counted exactly once:

    write      readings.parquet.tmp grows (readers ignore it)      -> the JSON Lines count
    fsync      the temp file is complete and durable               -> the JSON Lines count
    rename     readings.parquet, listing its segments, appears     -> Parquet counts; the listed
    fsync_dir  ... and survives a power loss                          segments are skipped
    delete     the listed segments go (unless retention.keep_jsonl)

A Parquet file lists the stems of the segments it holds (gateway/columnar/schema.py), so a
reader never counts a segment twice, whatever it finds. The next pass removes a stale temp
file, finishes a deletion, and merges segments that arrived after the file was written (late
readings) into a new file that replaces it.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field

from gateway.columnar.reader import covered_segments, read_schema
from gateway.columnar.schema import Shape, shape_of
from gateway.columnar.writer import Written, write_partition
from gateway.compaction.partitions import Partition
from gateway.compaction.steps import Step, no_step
from gateway.config import CompactionConfig
from gateway.errors import CompactionError, compaction_error
from gateway.layout import PARQUET_TMP_NAME
from gateway.segment_reader import open_segment
from gateway.sinks.segment import fsync_dir


@dataclass(slots=True)
class Compacted:
    """What compacting one partition did."""

    written: Written | None = None  # None when nothing new was there to write
    deleted: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class PassResult:
    """What one pass over a data directory did."""

    compacted: list[tuple[Partition, Compacted]] = field(default_factory=list)
    errors: list[tuple[Partition, CompactionError]] = field(default_factory=list)
    lag_s: float = 0.0


def pending(partition: Partition) -> list[str]:
    """Sealed segments the partition's Parquet file does not hold yet (sorted)."""
    covered = covered_segments(partition.parquet_path) if partition.parquet else frozenset()
    return sorted(partition.sealed.keys() - covered)


def compact_partition(
    partition: Partition,
    config: CompactionConfig,
    *,
    keep_jsonl: bool,
    base: Shape | None = None,
    step: Step = no_step,
) -> Compacted:
    """Write the partition's sealed segments (and its earlier Parquet file) to one Parquet file,
    then delete the segments it holds. Blocking (in the `gateway compact` process), under the
    tree lock."""
    started = time.perf_counter()
    directory = partition.directory
    tmp = directory / PARQUET_TMP_NAME
    final = partition.parquet_path
    result = Compacted()
    if partition.parquet_tmp:
        tmp.unlink(missing_ok=True)  # a crash's leftover: never renamed, so never counted
    new = pending(partition)
    if new:
        result.written = write_partition(
            tmp,
            new,
            functools.partial(open_segment, directory),
            previous=final if partition.parquet else None,
            base=base,
            batch_rows=config.batch_rows,
            step=step,
        )
        step("fsync")
        os.replace(tmp, final)
        step("rename")
        fsync_dir(directory)
        step("fsync_dir")
    if not keep_jsonl and final.exists():
        result.deleted = _delete_covered(partition, step)
    result.seconds = time.perf_counter() - started
    return result


def _delete_covered(partition: Partition, step: Step) -> int:
    covered = covered_segments(partition.parquet_path)
    deleted = 0
    for stem in sorted(covered & partition.sealed.keys()):
        for suffix in sorted(partition.sealed[stem]):
            try:
                os.unlink(partition.directory / f"{stem}{suffix}")
            except FileNotFoundError:
                continue  # gzipped meanwhile: the .gz goes at the next pass
            deleted += 1
            if deleted == 1:
                step("delete")
    if deleted:
        fsync_dir(partition.directory)
    return deleted


def compact_due(
    partitions: list[Partition],
    config: CompactionConfig,
    *,
    keep_jsonl: bool,
    now: float,
    step: Step = no_step,
) -> PassResult:
    """Compact every partition due (hour + grace past, nothing open). Blocking, under the lock.

    A partition that fails is logged and left as it is (its JSON Lines are intact); the others
    go on. The lag is the age, past its due time, of the oldest due partition still holding
    readings outside Parquet.
    """
    result = PassResult()
    known = _newest_shape(partitions)
    for partition in partitions:
        due = partition.end + config.grace_s
        if now < due:
            continue
        if partition.open:
            result.lag_s = max(result.lag_s, now - due)  # waits for its segments to be sealed
            continue
        try:
            if not (partition.sealed or partition.parquet_tmp):
                continue
            compacted = compact_partition(
                partition, config, keep_jsonl=keep_jsonl, base=known, step=step
            )
        except CompactionError as exc:
            result.errors.append((partition, exc))
        except OSError as exc:
            result.errors.append((partition, compaction_error(exc)))
        else:
            result.compacted.append((partition, compacted))
            if compacted.written is not None and compacted.written.shape is not None:
                known = compacted.written.shape
            continue
        result.lag_s = max(result.lag_s, now - due)
    return result


def _newest_shape(partitions: list[Partition]) -> Shape | None:
    """The columns of the newest Parquet file: later files keep them (readers of many files
    then meet one schema while a fleet's metrics stay the same)."""
    for partition in reversed(partitions):
        if partition.parquet:
            try:
                return shape_of(read_schema(partition.parquet_path))
            except CompactionError:
                continue
    return None
