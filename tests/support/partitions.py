"""Write JSON Lines segments into hour partitions as the file sink names them."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

from gateway.layout import GZIP_SUFFIX, SEALED_SUFFIX, hour_partition
from gateway.model import Reading
from tests.support.readings import line_of

# 2026-11-25T11:00:00Z: an hour long past (and its grace) whenever a test runs.
T0 = datetime(2026, 11, 25, 11, tzinfo=UTC).timestamp()
HOUR_S = 3600.0


def hour_dir(data_dir: Path, ts: float) -> Path:
    return data_dir / hour_partition(ts)


def reading(device: int, seq: int, ts: float = T0, **metrics: float) -> Reading:
    """A reading like the simulators' (two metrics, a unit, a tag, a flag on every fifth)."""
    return Reading(
        device_id=f"dev-{device:05d}",
        ts=ts + seq * 0.5,
        received_at=ts + seq * 0.5 + 0.25,
        metrics=metrics or {"temperature": 20.0 + seq % 7, "humidity": 40.0 + device},
        seq=seq,
        units={"temperature": "Cel"},
        tags={"site": f"site-{device % 3}"},
        flags=["out_of_range:temperature"] if seq % 5 == 0 else [],
    )


def fleet(devices: int, per_device: int, ts: float = T0) -> list[Reading]:
    return [reading(d, seq, ts) for seq in range(per_device) for d in range(devices)]


def write_segment(
    data_dir: Path, name: str, readings: list[Reading], suffix: str = SEALED_SUFFIX
) -> Path:
    """Segment `<name><suffix>` in the hour partition of its first reading."""
    directory = hour_dir(data_dir, readings[0].ts)
    directory.mkdir(parents=True, exist_ok=True)
    data = b"".join(line_of(r) for r in readings)
    path = directory / f"{name}{suffix}"
    path.write_bytes(gzip.compress(data, mtime=0) if suffix == GZIP_SUFFIX else data)
    return path
