"""Write one partition's readings to one Parquet file, streamed in record batches.

Two passes over the segments: the first finds the partition's columns (a Parquet schema is fixed
before the first row), the second converts `batch_rows` lines at a time and writes each batch as
a row group. Memory holds one batch, whatever the size of the partition. Blocking: run it in a
thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from gateway.columnar.reader import read_schema
from gateway.columnar.schema import STRING_MAP, TIMESTAMP, Shape, segments_of, shape_of
from gateway.errors import CompactionError

# zstd level 3 (its default): measured on readings, higher levels cost far more CPU for a few %.
ZSTD_LEVEL = 3

OpenSegment = Callable[[str], AbstractContextManager[IO[bytes]]]
Step = Callable[[str], None]


@dataclass(slots=True)
class Written:
    """What one write did."""

    rows: int = 0
    input_bytes: int = 0  # JSON Lines bytes read (uncompressed)
    output_bytes: int = 0  # the Parquet file
    shape: Shape | None = None  # the columns it has


def _lines(open_segment: OpenSegment, stem: str) -> Iterator[tuple[int, bytes]]:
    with open_segment(stem) as src:
        for number, line in enumerate(src, 1):
            if line.strip():
                yield number, line


def _invalid(stem: str, number: int, why: object) -> CompactionError:
    return CompactionError("invalid_line", f"segment {stem} line {number}: {why}")


def scan(open_segment: OpenSegment, stem: str) -> Shape:
    """Pass one: the metric and tag names of one segment."""
    shape = Shape()
    metrics, tags = shape.metrics, shape.tags
    loads = orjson.loads
    for number, line in _lines(open_segment, stem):
        try:
            record = loads(line)
            values = record["metrics"]
            metrics.update(values)
            tags.update(record["tags"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise _invalid(stem, number, exc) from exc
        if not shape.other:
            for value in values.values():
                kind = type(value)
                if kind is not float and kind is not int:
                    shape.other = True
    return shape


class _Columns:
    """Columns of one batch being filled, row by row."""

    def __init__(self, shape: Shape) -> None:
        self.tags = sorted(shape.tags)
        self.metrics = sorted(shape.metrics)
        self.other = shape.other
        self.clear()

    def clear(self) -> None:
        self.device_id: list[Any] = []
        self.ts: list[Any] = []
        self.received_at: list[Any] = []
        self.seq: list[Any] = []
        self.tag_values: dict[str, list[Any]] = {t: [] for t in self.tags}
        self.metric_values: dict[str, list[Any]] = {m: [] for m in self.metrics}
        self.units: list[Any] = []
        self.flags: list[Any] = []
        self.others: list[Any] = []

    def __len__(self) -> int:
        return len(self.device_id)

    def add(self, record: dict[str, Any]) -> None:
        row = len(self.device_id)
        self.device_id.append(record["device_id"])
        self.ts.append(record["ts"])
        self.received_at.append(record["received_at"])
        self.seq.append(record.get("seq"))
        tags = record["tags"]
        for name, column in self.tag_values.items():
            column.append(tags.get(name))
        others: list[tuple[str, str]] = []
        for name, value in record["metrics"].items():
            column = self.metric_values[name]
            column.extend([None] * (row - len(column)))
            kind = type(value)
            if kind is float:
                column.append(value)
            elif kind is int:
                column.append(float(value))
            else:
                others.append((name, orjson.dumps(value).decode()))
        self.units.append(list(record.get("units", {}).items()))
        self.flags.append(record.get("flags", []))
        if self.other:
            self.others.append(others)

    def batch(self, schema: pa.Schema) -> pa.RecordBatch:
        rows = len(self.device_id)
        arrays = [
            pa.array(self.device_id, pa.string()),
            pa.array(self.ts, pa.string()).cast(TIMESTAMP),
            pa.array(self.received_at, pa.string()).cast(TIMESTAMP),
            pa.array(self.seq, pa.int64()),
            *(pa.array(self.tag_values[t], pa.string()) for t in self.tags),
        ]
        for name in self.metrics:
            column = self.metric_values[name]
            column.extend([None] * (rows - len(column)))
            arrays.append(pa.array(column, pa.float64()))
        arrays.append(pa.array(self.units, STRING_MAP))
        arrays.append(pa.array(self.flags, pa.list_(pa.string())))
        if self.other:
            arrays.append(pa.array(self.others, STRING_MAP))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch of an earlier file of this partition, in the new (wider) schema."""
    arrays = []
    for target in schema:
        index = batch.schema.get_field_index(target.name)
        arrays.append(batch.column(index) if index >= 0 else pa.nulls(len(batch), target.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def previous_shape(path: Path) -> tuple[Shape, frozenset[str]]:
    """Columns and covered segments of a partition's existing Parquet file."""
    schema = read_schema(path)
    return shape_of(schema), segments_of(schema)


def write_partition(
    tmp: Path,
    segments: Sequence[str],
    open_segment: OpenSegment,
    *,
    previous: Path | None = None,
    base: Shape | None = None,
    batch_rows: int,
    step: Step = lambda _name: None,
) -> Written:
    """Write `previous` (a partition's earlier Parquet file, if any) and then every line of
    `segments` to `tmp`, fsynced. `step("write")` is called after each batch written (it may
    raise to stop the write; `tmp` is then left incomplete, for the caller to remove).

    CompactionError("invalid_line") names the first line that is not a reading;
    CompactionError("invalid_parquet") an earlier file that cannot be read.

    The columns are the union over the partition, plus those of `base` (the newest file's, so
    that a metric seen once keeps its column in every later file, null where absent).
    """
    shape = Shape()
    if base is not None:
        shape.add(base)
    covered: set[str] = set(segments)
    if previous is not None:
        before, before_segments = previous_shape(previous)
        shape.add(before)
        covered |= before_segments
    for stem in segments:
        shape.add(scan(open_segment, stem))
    schema = shape.schema(covered)
    with open(tmp, "wb") as raw:
        out = _Output(raw, schema, batch_rows, step)
        try:
            if previous is not None:
                for batch in _previous_batches(previous, batch_rows):
                    out.put(_conform(batch, schema))
            columns = _Columns(shape)
            for stem in segments:
                out.written.input_bytes += out.convert(open_segment, stem, columns)
            if len(columns):
                out.put(_batch(columns, schema, stem="(last batch)"))
        finally:
            out.writer.close()
        raw.flush()
        os.fsync(raw.fileno())
        out.written.output_bytes = raw.tell()
    out.written.shape = shape
    return out.written


class _Output:
    """The Parquet writer of one file, and what went into it."""

    def __init__(self, raw: BinaryIO, schema: pa.Schema, batch_rows: int, step: Step) -> None:
        self.schema = schema
        self.batch_rows = batch_rows
        self.step = step
        self.written = Written()
        self.writer = pq.ParquetWriter(
            raw, schema, compression="zstd", compression_level=ZSTD_LEVEL, use_dictionary=True
        )

    def put(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch, row_group_size=self.batch_rows)
        self.written.rows += len(batch)
        self.step("write")

    def convert(self, open_segment: OpenSegment, stem: str, columns: _Columns) -> int:
        """Pass two for one segment: lines into `columns`, a batch out whenever it is full."""
        loads = orjson.loads
        size = 0
        for number, line in _lines(open_segment, stem):
            size += len(line)
            try:
                columns.add(loads(line))
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise _invalid(stem, number, exc) from exc
            if len(columns) >= self.batch_rows:
                self.put(_batch(columns, self.schema, stem))
        return size


def _batch(columns: _Columns, schema: pa.Schema, stem: str) -> pa.RecordBatch:
    try:
        return columns.batch(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise CompactionError("invalid_line", f"segment {stem}: {exc}") from exc
    finally:
        columns.clear()


def _previous_batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    source = pq.ParquetFile(path)
    try:
        yield from source.iter_batches(batch_size=batch_rows)
    except pa.ArrowInvalid as exc:
        raise CompactionError("invalid_parquet", f"{path.name}: {exc}") from exc
    finally:
        source.close()
