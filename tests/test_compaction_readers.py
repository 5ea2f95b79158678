"""DuckDB, Polars and pandas read the compacted partitions with exactly the readings of the JSON
Lines they came from: every row once, every value, timestamps to the microsecond, in UTC."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pytest

from gateway.compaction.maintenance import Maintenance
from gateway.config import CompactionConfig, RetentionConfig
from gateway.metrics import Registry, StorageMetrics
from gateway.model import Reading
from tests.support.partitions import HOUR_S, T0, reading, write_segment
from tests.support.readings import line_of

HOURS = 3
Row = tuple[Any, ...]


def epoch_us(iso: str) -> int:
    """ISO 8601 `...T..:..:..mmmZ` (the line format) to epoch microseconds, exactly."""
    moment = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(moment.timestamp() * 1_000_000)


def expected_rows(readings: list[Reading], metrics: tuple[str, ...]) -> list[Row]:
    """Each JSON line as (device, ts µs, received µs, seq, site, *metrics, units, flags, date,
    hour): the truth the readers must reproduce."""
    rows = []
    for r in readings:
        line = json.loads(line_of(r))
        day, hour = line["ts"][:10], int(line["ts"][11:13])
        rows.append(
            (
                line["device_id"],
                epoch_us(line["ts"]),
                epoch_us(line["received_at"]),
                line["seq"],
                line["tags"].get("site"),
                *(line["metrics"].get(m) for m in metrics),
                tuple(sorted(line["units"].items())),
                tuple(line.get("flags", [])),
                day,
                hour,
            )
        )
    return sorted(rows, key=repr)


def _null(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def normalised(records: list[dict[str, Any]], metrics: tuple[str, ...]) -> list[Row]:
    """Reader output (dicts whose ts are epoch µs) in the form of expected_rows."""
    rows = []
    for r in records:
        units = r["units"]
        if isinstance(units, dict):
            pairs = units.items()
        else:  # pandas: [(k, v)]; polars: [{"key": k, "value": v}]
            pairs = [(u["key"], u["value"]) if isinstance(u, dict) else tuple(u) for u in units]
        rows.append(
            (
                r["device_id"],
                int(r["ts"]),
                int(r["received_at"]),
                _null(r["seq"]),
                r["tag_site"],
                *(_null(r[m]) for m in metrics),
                tuple(sorted(pairs)),
                tuple(r["flags"]),
                str(r["date"])[:10],
                int(r["hour"]),
            )
        )
    return sorted(rows, key=repr)


def compact(data: Path) -> None:
    registry = Registry()
    Maintenance(
        data, CompactionConfig(batch_rows=1024), RetentionConfig(), StorageMetrics(registry)
    ).run_pass(now=T0 + (HOURS + 1) * HOUR_S)
    assert (
        registry.get_sample_value("gateway_compaction_errors_total", {"reason": "invalid_line"})
        == 0
    )


def steady_fleet(data: Path) -> list[Reading]:
    """Three hours of a fleet, two segments an hour, one reading without a seq."""
    readings = []
    for hour in range(HOURS):
        start = T0 + hour * HOUR_S
        batch = [reading(d, seq, start) for seq in range(40) for d in range(25)]
        batch[7].seq = None
        write_segment(data, f"gw-{2 * hour + 1:08d}", batch[:600])
        write_segment(data, f"gw-{2 * hour + 2:08d}", batch[600:], suffix=".jsonl.gz")
        readings += batch
    return readings


@pytest.fixture
def steady(tmp_path: Path) -> tuple[Path, list[Row]]:
    data = tmp_path / "data"
    expected = expected_rows(steady_fleet(data), ("temperature", "humidity"))
    compact(data)
    assert not list(data.rglob("*.jsonl*")), "every segment compacted and removed"
    return data, expected


METRICS = ("temperature", "humidity")


def test_duckdb_reads_exactly_the_readings(steady: tuple[Path, list[Row]]) -> None:
    data, expected = steady
    rel = duckdb.sql(
        f"""SELECT * REPLACE (epoch_us(ts) AS ts, epoch_us(received_at) AS received_at)
        FROM read_parquet('{data}/**/*.parquet', hive_partitioning = true)"""
    )
    records = [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]
    assert normalised(records, METRICS) == expected
    types = dict(zip(rel.columns, map(str, rel.types), strict=True))
    assert (types["temperature"], types["seq"]) == ("DOUBLE", "BIGINT")


def test_polars_reads_exactly_the_readings(steady: tuple[Path, list[Row]]) -> None:
    data, expected = steady
    frame = pl.read_parquet(f"{data}/**/*.parquet", hive_partitioning=True)
    assert str(frame.schema["ts"]) == "Datetime(time_unit='us', time_zone='UTC')"
    frame = frame.with_columns(pl.col("ts").dt.epoch("us"), pl.col("received_at").dt.epoch("us"))
    assert normalised(frame.to_dicts(), METRICS) == expected


def test_pandas_reads_exactly_the_readings(steady: tuple[Path, list[Row]]) -> None:
    data, expected = steady
    frame = pd.read_parquet(data)
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]"
    for column in ("ts", "received_at"):
        frame[column] = frame[column].astype("int64")
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert normalised(records, METRICS) == expected


def test_a_metric_added_later_is_read_by_name_with_the_documented_options(
    tmp_path: Path,
) -> None:
    """README: files written before a metric existed lack its column; read them by name."""
    data = tmp_path / "data"
    before = [reading(d, seq, T0) for seq in range(5) for d in range(3)]
    after = [
        reading(d, seq, T0 + HOUR_S, temperature=1.0 * seq, humidity=2.0, pressure=990.0 + d)
        for seq in range(5)
        for d in range(3)
    ]
    write_segment(data, "gw-00000001", before)
    write_segment(data, "gw-00000002", after)
    compact(data)
    metrics = ("temperature", "humidity", "pressure")
    expected = expected_rows(before + after, metrics)

    rel = duckdb.sql(
        f"""SELECT * REPLACE (epoch_us(ts) AS ts, epoch_us(received_at) AS received_at)
        FROM read_parquet('{data}/**/*.parquet', hive_partitioning = true,
                          union_by_name = true)"""
    )
    records = [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]
    assert normalised(records, metrics) == expected

    files = sorted(data.glob("**/*.parquet"))
    frame = pl.concat(
        [pl.read_parquet(f, hive_partitioning=True) for f in files], how="diagonal_relaxed"
    ).with_columns(pl.col("ts").dt.epoch("us"), pl.col("received_at").dt.epoch("us"))
    assert normalised(frame.to_dicts(), metrics) == expected

    parts = []
    for f in files:
        part = pd.read_parquet(f)
        part["date"], part["hour"] = f.parent.parent.name[5:], int(f.parent.name[5:])
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    for column in ("ts", "received_at"):
        frame[column] = frame[column].astype("int64")
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert normalised(records, metrics) == expected
