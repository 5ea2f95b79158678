"""Write one partition's readings to one Parquet file, streamed in record batches.

Two passes over the segments: the first finds the partition's columns (a Parquet schema is fixed
before the first row), the second decodes `CHUNK_ROWS` lines at a time into Arrow arrays and
writes a row group whenever `batch_rows` rows are ready. Memory holds one chunk of decoded lines
and one row group of Arrow arrays, whatever the size of the partition. Blocking; it runs in the
`gateway compact` process, never in the gateway's.
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

ZSTD_LEVEL = 3  # zstd's own default
# Lines decoded to Python objects at once: a column is then one list comprehension and one
# pa.array() call (per row, Python code costs ~10x more); ~10 MB of decoded lines at a time.
CHUNK_ROWS = 2048
FLAGS = pa.list_(pa.string())

OpenSegment = Callable[[str], AbstractContextManager[IO[bytes]]]
Step = Callable[[str], None]
Record = dict[str, Any]


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


def _invalid(stem: str, where: str, why: object) -> CompactionError:
    return CompactionError("invalid_line", f"segment {stem} {where}: {why}")


def scan(open_segment: OpenSegment, stem: str) -> Shape:
    """Pass one: the metric and tag names of one segment, and whether a value is no number."""
    shape = Shape()
    metrics, tags = shape.metrics, shape.tags
    loads = orjson.loads
    for number, line in _lines(open_segment, stem):
        try:
            record = loads(line)
            values = record["metrics"]
            metrics.update(values)
            tags.update(record["tags"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise _invalid(stem, f"line {number}", exc) from exc
        if not shape.other:
            for value in values.values():
                kind = type(value)  # bool is not int here: true is not a number in JSON
                if kind is not float and kind is not int:
                    shape.other = True
    return shape


def _split_other(metrics: list[Record]) -> tuple[list[Record], list[list[tuple[str, str]]]]:
    """Per row: the numeric metrics, and the others as (name, JSON text)."""
    numeric, others = [], []
    for values in metrics:
        keep: Record = {}
        other: list[tuple[str, str]] = []
        for name, value in values.items():
            kind = type(value)
            if kind is float or kind is int:
                keep[name] = value
            else:
                other.append((name, orjson.dumps(value).decode()))
        numeric.append(keep)
        others.append(other)
    return numeric, others


def to_batch(records: list[Record], shape: Shape, schema: pa.Schema) -> pa.RecordBatch:
    """Decoded lines to one record batch of `schema` (KeyError, TypeError or Arrow errors when
    a line is not a reading)."""
    metrics = [r["metrics"] for r in records]
    others = None
    if shape.other:
        metrics, others = _split_other(metrics)
    tags = [r["tags"] for r in records]
    arrays = [
        pa.array([r["device_id"] for r in records], pa.string()),
        pa.array([r["ts"] for r in records], pa.string()).cast(TIMESTAMP),
        pa.array([r["received_at"] for r in records], pa.string()).cast(TIMESTAMP),
        pa.array([r.get("seq") for r in records], pa.int64()),
        *(pa.array([t.get(name) for t in tags], pa.string()) for name in sorted(shape.tags)),
        # Only ints and floats reach here (pass one sends the rest to other_metrics).
        *(pa.array([m.get(name) for m in metrics], pa.float64()) for name in sorted(shape.metrics)),
        pa.array([r.get("units") or {} for r in records], STRING_MAP),
        pa.array([r.get("flags") or [] for r in records], FLAGS),
    ]
    if others is not None:
        arrays.append(pa.array(others, STRING_MAP))
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
    `segments` to `tmp`, fsynced. `step("write")` is called after each row group written (it
    may raise to stop the write; `tmp` is then left incomplete, for the caller to remove).

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
        out = _Output(raw, shape, schema, batch_rows, step)
        try:
            if previous is not None:
                for batch in _previous_batches(previous, batch_rows):
                    out.put(_conform(batch, schema))
            for stem in segments:
                out.written.input_bytes += out.convert(open_segment, stem)
            out.flush()
        finally:
            out.writer.close()
        raw.flush()
        os.fsync(raw.fileno())
        out.written.output_bytes = raw.tell()
    out.written.shape = shape
    return out.written


class _Output:
    """The Parquet writer of one file: batches gathered into row groups of `batch_rows`."""

    def __init__(
        self, raw: BinaryIO, shape: Shape, schema: pa.Schema, batch_rows: int, step: Step
    ) -> None:
        self.shape = shape
        self.schema = schema
        self.batch_rows = batch_rows
        self.step = step
        self.written = Written()
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.writer = pq.ParquetWriter(
            raw, schema, compression="zstd", compression_level=ZSTD_LEVEL, use_dictionary=True
        )

    def put(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.pending_rows += len(batch)
        if self.pending_rows >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending_rows:
            return
        table = pa.Table.from_batches(self.pending, schema=self.schema)
        self.pending, self.pending_rows = [], 0
        self.writer.write_table(table, row_group_size=len(table))
        self.written.rows += len(table)
        self.step("write")

    def convert(self, open_segment: OpenSegment, stem: str) -> int:
        """Pass two for one segment; returns the bytes read."""
        loads = orjson.loads
        size = 0
        chunk: list[Record] = []
        first = 1
        for number, line in _lines(open_segment, stem):
            size += len(line)
            try:
                chunk.append(loads(line))
            except orjson.JSONDecodeError as exc:
                raise _invalid(stem, f"line {number}", exc) from exc
            if len(chunk) >= CHUNK_ROWS:
                self._put_chunk(chunk, stem, f"lines {first}-{number}")
                chunk, first = [], number + 1
        if chunk:
            self._put_chunk(chunk, stem, f"lines {first}-")
        return size

    def _put_chunk(self, chunk: list[Record], stem: str, where: str) -> None:
        try:
            batch = to_batch(chunk, self.shape, self.schema)
        except (KeyError, TypeError, AttributeError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise _invalid(stem, where, exc) from exc
        self.put(batch)


def _previous_batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    source = pq.ParquetFile(path)
    try:
        yield from source.iter_batches(batch_size=batch_rows)
    except pa.ArrowInvalid as exc:
        raise CompactionError("invalid_parquet", f"{path.name}: {exc}") from exc
    finally:
        source.close()
