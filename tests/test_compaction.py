"""Compaction: a closed hour partition becomes one Parquet file holding exactly its readings."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gateway.compaction.maintenance import Maintenance
from gateway.config import CompactionConfig, RetentionConfig
from gateway.layout import PARQUET_NAME, PARQUET_TMP_NAME
from gateway.metrics import Registry, StorageMetrics
from gateway.model import Reading
from tests.support.partitions import HOUR_S, T0, fleet, hour_dir, reading, write_segment
from tests.support.readings import line_of

GRACE_S = 300.0
CLOSED = T0 + HOUR_S + GRACE_S  # the moment the T0 hour becomes due


def maintenance(data_dir: Path, **retention: Any) -> tuple[Maintenance, Registry]:
    registry = Registry()
    m = Maintenance(
        data_dir,
        CompactionConfig(grace_s=GRACE_S, batch_rows=1024),
        RetentionConfig.model_validate(retention),
        StorageMetrics(registry),
    )
    return m, registry


def sample(registry: Registry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def parquet_rows(path: Path, columns: str = "*") -> list[dict[str, Any]]:
    rel = duckdb.sql(f"SELECT {columns} FROM read_parquet('{path}')")
    names = rel.columns
    return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]


def as_rows(readings: list[Reading]) -> list[tuple[Any, ...]]:
    """What the JSON lines say, in the form DuckDB returns the Parquet columns."""
    out = []
    for r in readings:
        line = json.loads(line_of(r))
        out.append(
            (
                line["device_id"],
                round(r.ts * 1_000_000),
                round(r.received_at * 1_000_000),
                line["seq"],
                line["tags"].get("site"),
                line["metrics"].get("temperature"),
                line["metrics"].get("humidity"),
                line["units"],
                line.get("flags", []),
            )
        )
    return sorted(out, key=repr)


def compacted_rows(path: Path) -> list[tuple[Any, ...]]:
    rows = duckdb.sql(
        f"""SELECT device_id, epoch_us(ts), epoch_us(received_at), seq, tag_site, temperature,
        humidity, units, flags FROM read_parquet('{path}')"""
    ).fetchall()
    return sorted(((*row[:7], dict(row[7]), list(row[8])) for row in rows), key=repr)


def test_a_closed_partition_becomes_one_parquet_file_with_exactly_its_readings(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    readings = fleet(devices=7, per_device=300)  # 2,100 readings: three record batches
    write_segment(data, "gw-00000001", readings[:1000])
    write_segment(data, "gw-00000002", readings[1000:1500], suffix=".jsonl.gz")
    write_segment(data, "gw-2-00000001", readings[1500:])  # a second gateway's segment
    jsonl_bytes = sum(len(line_of(r)) for r in readings)
    m, registry = maintenance(data)

    report = m.run_pass(now=CLOSED)

    directory = hour_dir(data, T0)
    assert sorted(os.listdir(directory)) == [PARQUET_NAME], "segments removed once durable"
    assert compacted_rows(directory / PARQUET_NAME) == as_rows(readings)
    assert report.compaction is not None
    assert not report.compaction["errors"]
    assert sample(registry, "gateway_compaction_rows_total") == len(readings)
    assert sample(registry, "gateway_compaction_partitions_total") == 1
    assert sample(registry, "gateway_compaction_input_bytes_total") == jsonl_bytes
    parquet_bytes = (directory / PARQUET_NAME).stat().st_size
    assert sample(registry, "gateway_compaction_output_bytes_total") == parquet_bytes
    ratio = sample(registry, "gateway_compaction_compression_ratio")
    assert ratio == pytest.approx(jsonl_bytes / parquet_bytes)
    assert ratio > 4
    assert sample(registry, "gateway_files_deleted_total", sink="files", reason="compacted") == 3
    assert sample(registry, "gateway_compaction_lag_seconds") == 0


def test_the_file_is_zstd_with_microsecond_utc_timestamps(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_segment(data, "gw-00000001", fleet(2, 3))
    maintenance(data)[0].run_pass(now=CLOSED)
    path = hour_dir(data, T0) / PARQUET_NAME
    codecs = duckdb.sql(f"SELECT DISTINCT compression FROM parquet_metadata('{path}')").fetchall()
    assert codecs == [("ZSTD",)]
    types = dict(duckdb.sql(f"SELECT name, logical_type FROM parquet_schema('{path}')").fetchall())
    for column in ("ts", "received_at"):
        assert "isAdjustedToUTC=1" in types[column].replace(" ", "").replace("true", "1")
        assert "MICROS" in types[column]


def test_nothing_is_compacted_before_the_hour_and_grace_are_past_or_while_a_segment_is_open(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    write_segment(data, "gw-00000001", fleet(2, 3))
    m, registry = maintenance(data)
    m.run_pass(now=CLOSED - 1)
    assert not (hour_dir(data, T0) / PARQUET_NAME).exists()

    still_open = hour_dir(data, T0) / "gw-00000002.jsonl.open"
    still_open.write_bytes(line_of(reading(9, 0)))
    m.run_pass(now=CLOSED + 60)
    assert not (hour_dir(data, T0) / PARQUET_NAME).exists()
    assert sample(registry, "gateway_compaction_lag_seconds") == 60, "due, not compacted"

    still_open.rename(still_open.with_name("gw-00000002.jsonl"))
    m.run_pass(now=CLOSED + 120)
    assert len(parquet_rows(hour_dir(data, T0) / PARQUET_NAME)) == 7
    assert sample(registry, "gateway_compaction_lag_seconds") == 0


def test_late_readings_are_merged_into_the_partitions_file_and_counted_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = fleet(3, 10)
    write_segment(data, "gw-00000001", first)
    m, _ = maintenance(data)
    m.run_pass(now=CLOSED)
    late = [reading(1, 500, T0, temperature=30.0, pressure=990.0)]
    write_segment(data, "gw-00000009", late)

    m.run_pass(now=CLOSED + 3600)

    path = hour_dir(data, T0) / PARQUET_NAME
    rows = parquet_rows(path, "seq, pressure")
    assert sorted(r["seq"] for r in rows) == sorted(r.seq for r in first + late)
    assert [r["pressure"] for r in rows if r["seq"] == 500] == [990.0]
    assert all(r["pressure"] is None for r in rows if r["seq"] != 500), "null where absent"
    assert os.listdir(path.parent) == [PARQUET_NAME]
    again = m.run_pass(now=CLOSED + 7200).compaction
    assert again is not None
    assert again["compacted"] == [], "idempotent"


def test_metric_names_and_values_that_do_not_fit_follow_the_documented_rule(
    tmp_path: Path,
) -> None:
    """Integers become float64; a non-number is kept as JSON text; reserved names are escaped."""
    data = tmp_path / "data"
    directory = hour_dir(data, T0)
    directory.mkdir(parents=True)
    base = json.loads(line_of(reading(1, 1)))
    odd = [
        {**base, "seq": 1, "metrics": {"temperature": 21, "ts": 5.0, "tag_x": 1.5}},
        {**base, "seq": 2, "metrics": {"temperature": "warm", "door": True}},
        {**base, "seq": 3, "metrics": {"temperature": 22.5}},
    ]
    (directory / "other-00000001.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in odd), encoding="utf-8"
    )
    m, registry = maintenance(data)
    m.run_pass(now=CLOSED)
    rows = parquet_rows(
        directory / PARQUET_NAME, "seq, temperature, metric_ts, metric_tag_x, other_metrics"
    )
    by_seq = {r["seq"]: r for r in sorted(rows, key=lambda r: r["seq"])}
    assert by_seq[1]["temperature"] == 21.0
    assert (by_seq[1]["metric_ts"], by_seq[1]["metric_tag_x"]) == (5.0, 1.5)
    assert by_seq[2]["temperature"] is None
    assert by_seq[2]["other_metrics"] == {"temperature": '"warm"', "door": "true"}
    assert by_seq[3]["temperature"] == 22.5
    assert sample(registry, "gateway_compaction_rows_total") == 3


def test_a_line_that_is_not_a_reading_stops_that_partition_only_and_is_counted(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    bad = write_segment(data, "gw-00000001", fleet(2, 3))
    bad.write_bytes(bad.read_bytes() + b'{"device_id": "dev-1", "ts": \n')
    good = fleet(2, 3, ts=T0 + HOUR_S)
    write_segment(data, "gw-00000002", good)
    m, registry = maintenance(data)

    report = m.run_pass(now=CLOSED + HOUR_S)

    assert report.compaction is not None
    (error,) = report.compaction["errors"]
    assert error["reason"] == "invalid_line"
    assert "gw-00000001 line 7" in error["detail"]
    assert sorted(os.listdir(bad.parent)) == [bad.name], "the JSON Lines stay, no temp file"
    assert sample(registry, "gateway_compaction_errors_total", reason="invalid_line") == 1
    assert sample(registry, "gateway_compaction_lag_seconds") == HOUR_S
    assert len(parquet_rows(hour_dir(data, T0 + HOUR_S) / PARQUET_NAME)) == len(good)


def test_keep_jsonl_keeps_the_segments_beside_the_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    segment = write_segment(data, "gw-00000001", fleet(2, 3))
    m, _ = maintenance(data, keep_jsonl=True)
    m.run_pass(now=CLOSED)
    m.run_pass(now=CLOSED + 60)
    assert sorted(os.listdir(segment.parent)) == [segment.name, PARQUET_NAME]
    assert len(parquet_rows(segment.parent / PARQUET_NAME)) == 6


def test_a_temp_file_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    segment = write_segment(data, "gw-00000001", fleet(2, 3))
    (segment.parent / PARQUET_TMP_NAME).write_bytes(b"PAR1 half a file")
    maintenance(data)[0].run_pass(now=CLOSED)
    assert os.listdir(segment.parent) == [PARQUET_NAME]
    assert len(parquet_rows(segment.parent / PARQUET_NAME)) == 6


def test_a_metric_seen_once_keeps_its_column_in_later_files(tmp_path: Path) -> None:
    """So readers of many files meet one schema while the fleet's metrics stay the same."""
    data = tmp_path / "data"
    write_segment(data, "gw-00000001", [reading(1, 1, T0, temperature=1.0, door=1.0)])
    write_segment(data, "gw-00000002", [reading(1, 2, T0 + HOUR_S, temperature=2.0)])
    maintenance(data)[0].run_pass(now=CLOSED + HOUR_S)
    later = parquet_rows(hour_dir(data, T0 + HOUR_S) / PARQUET_NAME)
    assert later[0]["door"] is None
    assert later[0]["temperature"] == 2.0


def test_a_gzip_segment_is_read_uncompressed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    readings = fleet(2, 3)
    path = write_segment(data, "gw-00000001", readings, suffix=".jsonl.gz")
    assert gzip.decompress(path.read_bytes()).count(b"\n") == 6
    m, registry = maintenance(data)
    m.run_pass(now=CLOSED)
    assert compacted_rows(path.parent / PARQUET_NAME) == as_rows(readings)
    assert sample(registry, "gateway_compaction_input_bytes_total") == sum(
        len(line_of(r)) for r in readings
    )
