"""Seeding the dedupe window at start: from this client id's latest segments (plain, gzip, cut
after a crash) and the Parquet files compacted from them; only the span, only the newest."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway.channel import Channel
from gateway.compaction.maintenance import Maintenance
from gateway.config import CompactionConfig, DedupeConfig, FilesConfig, RetentionConfig
from gateway.metrics import Registry, StorageMetrics
from gateway.model import Reading
from gateway.sinks import seed
from gateway.sinks.files import FileSink
from gateway.sinks.lines import IdentityReader
from gateway.sinks.recovery import recover_segments
from gateway.sinks.seed import seed_identities
from harness.poll import eventually
from tests.support.partitions import HOUR_S, T0, hour_dir, write_segment
from tests.support.readings import line_of
from tests.support.sinks import Acks, fresh_metrics, put_all, records, running, sample

CLIENT = "gw-test"


def reading(seq: int, ts: float = T0, device: str = "dev-1", received_at: float = 0) -> Reading:
    return Reading(device, ts + seq / 1000, received_at or time.time(), {"t": 1.0}, seq)


def identities(readings: list[Reading]) -> list[tuple[str, int | None, float]]:
    return IdentityReader()(b"".join(map(line_of, readings)))


def age(path: Path, seconds: float) -> None:
    """Make a file look last written `seconds` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def seeded(root: Path, segments: list[Path], window_s: float = 600, most: int = 10**6):
    result = seed_identities(
        root, segments, client_id=CLIENT, window_s=window_s, max_identities=most
    )
    return [identity for chunk in result.chunks for identity in chunk], result


async def store_again(tmp_path: Path, readings: list[Reading], **files: object):
    """A new sink with dedupe on, started on the data directory: what it writes of `readings`."""
    config = FilesConfig.model_validate({"data_dir": tmp_path / "data"} | files)
    metrics = fresh_metrics()
    sink = FileSink(config, CLIENT, metrics, dedupe=DedupeConfig())
    await sink.recover()
    acks: Acks[Reading] = Acks()
    channel: Channel[Reading] = Channel(100_000)
    await put_all(channel, acks.envelopes(readings))
    async with running(sink.run, channel):
        await eventually(acks.reached(len(readings)))
    return metrics


# -- what is read -------------------------------------------------------------------------------


async def test_readings_a_crash_left_in_an_open_segment_are_not_written_again(
    tmp_path: Path,
) -> None:
    """A SIGKILL after the write, before the ack: the broker redelivers; the start recovers the
    segment (cutting its torn tail) and seeds the window from it, so the redelivery is dropped,
    while the reading whose line was torn (never stored) is written."""
    data = tmp_path / "data"
    first = [reading(s) for s in range(10)]
    path = write_segment(data, f"{CLIENT}-00000001", first, suffix=".jsonl.open")
    with path.open("ab") as f:
        f.write(line_of(reading(10))[:20])  # torn mid-line
    metrics = await store_again(tmp_path, [*first, reading(10)])
    assert sample(metrics, "gateway_readings_dropped_total", reason="duplicate") == 10
    assert sample(metrics, "gateway_readings_written_total") == 1
    assert sorted(r["seq"] for r in records(data)) == list(range(11))


async def test_gzip_segments_seed_the_window(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = [reading(s) for s in range(10)]
    write_segment(data, f"{CLIENT}-00000001", first[:5], suffix=".jsonl.gz")
    write_segment(data, f"{CLIENT}-00000002", first[5:], suffix=".jsonl")  # gzipped at start
    metrics = await store_again(tmp_path, first, gzip=True)
    assert sample(metrics, "gateway_readings_dropped_total", reason="duplicate") == 10
    assert sample(metrics, "gateway_readings_written_total") == 0


def test_only_segments_written_within_the_span_of_the_last_write_are_read(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    old = write_segment(data, f"{CLIENT}-00000001", [reading(s) for s in range(5)])
    edge = write_segment(data, f"{CLIENT}-00000002", [reading(s) for s in range(5, 10)])
    new = write_segment(data, f"{CLIENT}-00000003", [reading(s) for s in range(10, 15)])
    # Down for a day: the span ends at the last write, not now.
    age(new, 86400)
    age(edge, 86400 + 590)
    age(old, 86400 + 610)
    found, result = seeded(data, [old, edge, new], window_s=600)
    assert found == identities([reading(s) for s in range(5, 15)])
    assert result.segments == 2


def test_segments_of_other_client_ids_are_not_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_segment(data, f"{CLIENT}-00000001", [reading(1)])
    write_segment(data, f"{CLIENT}-2-00000001", [reading(2)])  # another gateway's
    found = recover_segments(data, "date=*/hour=*", CLIENT, compress=False)
    assert [p.name for p in found.segments] == [f"{CLIENT}-00000001.jsonl"]
    assert seeded(data, found.segments)[0] == identities([reading(1)])


def test_only_the_newest_max_identities_are_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    older = write_segment(data, f"{CLIENT}-00000001", [reading(s) for s in range(50)])
    newer = write_segment(data, f"{CLIENT}-00000002", [reading(s) for s in range(50, 100)])
    age(older, 10)
    found, _ = seeded(data, [older, newer], most=70)
    assert found == identities([reading(s) for s in range(30, 100)]), "oldest first, newest kept"


@pytest.mark.parametrize("block_bytes", [7, 64, 150, 1 << 20])
def test_a_segment_read_backwards_in_blocks_gives_every_line_once_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int
) -> None:
    """Lines shorter and longer than a block, a block boundary at every possible place."""
    monkeypatch.setattr(seed, "BLOCK_BYTES", block_bytes)
    data = tmp_path / "data"
    readings = [reading(s, device="d" * (1 + s * 7 % 90)) for s in range(60)]
    path = write_segment(data, f"{CLIENT}-00000001", readings)
    assert seeded(data, [path])[0] == identities(readings)
    assert seeded(data, [path], most=13)[0] == identities(readings[-13:])


# -- Parquet ---------------------------------------------------------------------------------


async def test_readings_compacted_to_parquet_within_the_span_seed_the_window(
    tmp_path: Path,
) -> None:
    """Compaction (a sibling worker, cron) moved some of our recent segments into Parquet: a
    `gateway identities` child reads the rows received within the span."""
    data = tmp_path / "data"
    now = time.time()
    compacted = [reading(s, ts=T0, received_at=now - 60) for s in range(20)]
    long_ago = [reading(s, ts=T0 + 0.5, received_at=now - 4000) for s in range(20)]
    still_jsonl = [reading(s, ts=now - 5, received_at=now - 5) for s in range(5)]
    write_segment(data, f"{CLIENT}-00000001", compacted)
    write_segment(data, f"{CLIENT}-2-00000001", long_ago)  # in the same Parquet file
    latest = write_segment(data, f"{CLIENT}-00000002", still_jsonl)
    maintenance = Maintenance(
        data, CompactionConfig(), RetentionConfig(), StorageMetrics(Registry())
    )
    maintenance.run_pass(now=T0 + 2 * HOUR_S)
    assert (hour_dir(data, T0) / "readings.parquet").is_file()
    assert not list(hour_dir(data, T0).glob("*.jsonl")), "the compacted segments are gone"

    found, result = seeded(data, [latest])
    assert result.parquet_files == 1
    assert sorted(found) == sorted(identities(compacted + still_jsonl)), (
        "rows received within the span, not the older ones"
    )
    metrics = await store_again(tmp_path, compacted + still_jsonl)
    assert sample(metrics, "gateway_readings_written_total") == 0
    assert sample(metrics, "gateway_dedupe_seed_seconds") > 0


def test_a_parquet_file_without_our_segments_is_not_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    now = time.time()
    write_segment(data, "other-00000001", [reading(s, received_at=now) for s in range(5)])
    latest = write_segment(data, f"{CLIENT}-00000001", [reading(9, ts=now, received_at=now)])
    maintenance = Maintenance(
        data, CompactionConfig(), RetentionConfig(), StorageMetrics(Registry())
    )
    maintenance.run_pass(now=T0 + 2 * HOUR_S)
    found, result = seeded(data, [latest])
    assert result.parquet_files == 1
    assert found == identities([reading(9, ts=now, received_at=now)])


def test_an_unreadable_segment_is_passed_over_not_fatal(tmp_path: Path) -> None:
    """Seeding saves storing twice, never storing at all: a broken gzip does not stop a start."""
    data = tmp_path / "data"
    good = write_segment(data, f"{CLIENT}-00000001", [reading(1)])
    broken = hour_dir(data, T0) / f"{CLIENT}-00000002.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 not gzip at all")
    found, result = seeded(data, [good, broken])
    assert found == identities([reading(1)])
    assert result.unreadable == 1
