"""Retention: the oldest partitions go first, the size budget holds, open segments are never
touched, and the dead-letter tree has its own limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.compaction.maintenance import Maintenance
from gateway.config import CompactionConfig, RetentionConfig
from gateway.layout import DEAD_LETTER_DIR, day_partition
from gateway.metrics import Registry, StorageMetrics
from gateway.model import Rejection
from tests.support.partitions import HOUR_S, T0, fleet, hour_dir, write_segment
from tests.support.readings import dead_letter_line_of

DAY_S = 86400.0


def maintenance(data: Path, compact: bool = True, **retention: Any) -> tuple[Maintenance, Registry]:
    registry = Registry()
    m = Maintenance(
        data,
        # A grace so long that nothing is compacted, when compaction is not what is tested.
        CompactionConfig(grace_s=0 if compact else 10 * 365 * DAY_S),
        RetentionConfig.model_validate(retention),
        StorageMetrics(registry),
    )
    return m, registry


def sample(registry: Registry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def hours_on_disk(data: Path) -> list[float]:
    return [T0 + h * HOUR_S for h in range(48) if hour_dir(data, T0 + h * HOUR_S).exists()]


def tree_bytes(root: Path) -> int:
    """Bytes of the partitions under root (as gateway_disk_bytes counts them)."""
    return sum(p.stat().st_size for p in root.glob("date=*/**/*") if p.is_file())


def add_hour(data: Path, hour: int) -> None:
    write_segment(data, "gw-00000001", fleet(20, 20, ts=T0 + hour * HOUR_S))


def test_a_small_budget_is_held_by_deleting_the_oldest_partitions_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add_hour(data, 0)
    maintenance(data)[0].run_pass(now=T0 + 2 * HOUR_S)  # measure one compacted hour
    one_hour = tree_bytes(data)
    budget = int(2.5 * one_hour)  # room for two hours, not three
    m, registry = maintenance(data, max_bytes=budget)
    assert sample(registry, "gateway_retention_max_bytes", sink="files") == budget
    for hour in range(1, 8):  # a new hour arrives and is compacted before each pass
        add_hour(data, hour)
        m.run_pass(now=T0 + (hour + 1) * HOUR_S + 1)
        kept = hours_on_disk(data)
        assert kept == [T0 + h * HOUR_S for h in range(max(0, hour - 1), hour + 1)], hour
        assert tree_bytes(data) <= budget
        assert sample(registry, "gateway_disk_bytes", sink="files") == tree_bytes(data)
    deleted = sample(registry, "gateway_files_deleted_total", sink="files", reason="max_bytes")
    assert deleted == 6, "one Parquet file per deleted hour"


def test_partitions_older_than_max_age_are_deleted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for hour in range(6):
        add_hour(data, hour)
    m, registry = maintenance(data, compact=False, max_age_s=2 * HOUR_S)
    m.run_pass(now=T0 + 6 * HOUR_S)  # hours 0..3 ended at least 2 h ago
    assert hours_on_disk(data) == [T0 + 4 * HOUR_S, T0 + 5 * HOUR_S]
    assert sample(registry, "gateway_files_deleted_total", sink="files", reason="max_age") == 4
    assert not (data / "date=2026-11-25" / "hour=11").exists()


def test_a_partition_with_an_open_segment_is_never_deleted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for hour in range(3):
        add_hour(data, hour)
    still_open = hour_dir(data, T0) / "gw-00000009.jsonl.open"
    still_open.write_bytes(b"")
    m, _ = maintenance(data, compact=False, max_bytes=1, max_age_s=1)
    m.run_pass(now=T0 + 10 * HOUR_S)
    assert hours_on_disk(data) == [T0]
    assert still_open.exists()


def write_dead_letters(data: Path, day: int, count: int) -> None:
    received = T0 + day * DAY_S
    directory = data / DEAD_LETTER_DIR / day_partition(received)
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        dead_letter_line_of(
            Rejection("t/x", b"{not json" * 20, "invalid_json", "detail", received), 1024
        )
        for _ in range(count)
    ]
    (directory / "gw-00000001.jsonl").write_bytes(b"".join(lines))


def test_dead_letters_have_their_own_limits(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for day in range(4):
        write_dead_letters(data, day, 50)
    add_hour(data, 0)
    one_day = tree_bytes(data / DEAD_LETTER_DIR) // 4
    m, registry = maintenance(
        data, compact=False, dead_letter_max_bytes=2 * one_day, dead_letter_max_age_s=10 * DAY_S
    )
    m.run_pass(now=T0 + 4 * DAY_S)
    days = sorted(p.name for p in (data / DEAD_LETTER_DIR).iterdir())
    assert days == ["date=2026-11-27", "date=2026-11-28"], "the two newest days"
    assert hours_on_disk(data) == [T0], "data is not the dead letters' budget"
    deleted = sample(
        registry, "gateway_files_deleted_total", sink="dead_letter", reason="max_bytes"
    )
    assert deleted == 2
    assert sample(registry, "gateway_disk_bytes", sink="dead_letter") == 2 * one_day

    m, registry = maintenance(data, compact=False, dead_letter_max_age_s=DAY_S)
    m.run_pass(now=T0 + 5 * DAY_S)
    assert not list((data / DEAD_LETTER_DIR).iterdir())
    assert hours_on_disk(data) == [T0]
