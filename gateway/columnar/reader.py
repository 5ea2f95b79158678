"""Read back what the writer made: a file's schema and covered segments, and rows for the audit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gateway.columnar.schema import OTHER_METRICS, metric_column, segments_of, shape_of
from gateway.errors import CompactionError

AUDIT_BATCH_ROWS = 65536


def read_schema(path: Path) -> pa.Schema:
    """The schema (footer only); CompactionError("invalid_parquet") when it is not ours."""
    try:
        schema = pq.read_schema(path)
        shape_of(schema)
        segments_of(schema)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise CompactionError("invalid_parquet", f"{path}: {exc}") from exc
    return schema


def covered_segments(path: Path) -> frozenset[str]:
    """The segment stems whose readings the file holds."""
    return segments_of(read_schema(path))


def audit_rows(path: Path) -> Iterator[tuple[str, int | None, int]]:
    """(device_id, seq, number of metric values) for each row, streamed."""
    schema = read_schema(path)
    shape = shape_of(schema)
    metrics = [metric_column(m) for m in sorted(shape.metrics)]
    other = [OTHER_METRICS] if shape.other else []
    source = pq.ParquetFile(path)
    try:
        batches = source.iter_batches(
            batch_size=AUDIT_BATCH_ROWS, columns=["device_id", "seq", *metrics, *other]
        )
        for batch in batches:
            count = pa.array([0] * len(batch), pa.int64())
            for name in metrics:
                count = pc.add(count, pc.cast(pc.is_valid(batch.column(name)), pa.int64()))
            if other:
                lengths = pc.fill_null(pc.list_value_length(batch.column(OTHER_METRICS)), 0)
                count = pc.add(count, pc.cast(lengths, pa.int64()))
            yield from zip(
                batch.column("device_id").to_pylist(),
                batch.column("seq").to_pylist(),
                count.to_pylist(),
                strict=True,
            )
    except pa.ArrowInvalid as exc:
        raise CompactionError("invalid_parquet", f"{path}: {exc}") from exc
    finally:
        source.close()
