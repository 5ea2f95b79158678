"""Identity rows of recent Parquet files, as data lines, for the dedupe window's seeding.

`gateway identities` runs this in a child process of a starting gateway (sinks/seed.py), so that
pyarrow stays out of the process that acks. Only files that hold a segment of the given client
id are read, and of those only the row groups whose `received_at` reaches `since` (the footer's
statistics tell), and only the columns that identify a reading.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gateway.columnar.schema import TIMESTAMP, segments_of
from gateway.model import format_ts

COLUMNS = ["device_id", "ts", "received_at", "seq"]


def holds_segments_of(schema: pa.Schema, client_id: str) -> bool:
    """Whether the file lists a segment `<client_id>-<seq>` among those it holds."""
    ours = re.compile(rf"^{re.escape(client_id)}-\d{{8,}}$")
    try:
        return any(ours.match(stem) for stem in segments_of(schema))
    except ValueError:  # not one of ours
        return False


def identity_lines(path: Path, client_id: str, since_s: float) -> Iterator[bytes]:
    """Data lines (`device_id`, `ts`, `received_at`, `seq`) of the rows with a seq received at or
    after `since_s`, a row group at a time; nothing when the file holds none of our segments."""
    source = pq.ParquetFile(path)
    try:
        if not holds_segments_of(source.schema_arrow, client_id):
            return
        column = source.schema_arrow.get_field_index("received_at")
        since = pa.scalar(datetime.fromtimestamp(since_s, UTC), TIMESTAMP)
        for group in range(source.metadata.num_row_groups):
            stats = source.metadata.row_group(group).column(column).statistics
            if stats is not None and stats.has_min_max and _utc(stats.max) < since.as_py():
                continue
            table = source.read_row_group(group, columns=COLUMNS)
            recent = pc.greater_equal(table["received_at"], since)
            table = table.filter(pc.and_(pc.is_valid(table["seq"]), recent))
            if table.num_rows:
                yield _lines(table)
    finally:
        source.close()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _lines(table: pa.Table) -> bytes:
    micros = [c.cast(pa.int64()).to_pylist() for c in (table["ts"], table["received_at"])]
    rows = zip(table["device_id"].to_pylist(), *micros, table["seq"].to_pylist(), strict=True)
    return b"".join(
        orjson.dumps(
            {
                "device_id": device_id,
                "ts": format_ts(ts / 1_000_000),
                "received_at": format_ts(received / 1_000_000),
                "seq": seq,
            }
        )
        + b"\n"
        for device_id, ts, received, seq in rows
    )
