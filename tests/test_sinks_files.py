"""FileSink: readings are acked only once durable, partitioned by their hour, rotated and sealed."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gateway.channel import Channel
from gateway.config import FilesConfig
from gateway.metrics import GatewayMetrics
from gateway.model import Reading
from gateway.sinks.files import FileSink
from gateway.sinks.recovery import recover_segments
from harness.poll import eventually
from tests.support.readings import expected_record, line_of
from tests.support.sinks import (
    Acks,
    files,
    fill,
    fresh_metrics,
    lines_of,
    put_all,
    records,
    running,
    sample,
    small_tmpfs,
)

CLIENT = "gw-test"
# 2026-11-25T11:00:00Z: a fixed hour, so partitions are known in advance.
T0 = datetime(2026, 11, 25, 11, tzinfo=UTC).timestamp()
HOUR_11 = Path("date=2026-11-25/hour=11")


def make_config(tmp_path: Path, **fields: Any) -> FilesConfig:
    # Short retry delays: the failure tests wait for several retries.
    base: dict[str, Any] = {"data_dir": tmp_path / "data", "retry_min_s": 0.01, "retry_max_s": 0.05}
    return FilesConfig.model_validate(base | fields)


def reading(seq: int, ts: float = T0, device_id: str = "dev-1") -> Reading:
    return Reading(
        device_id=device_id,
        ts=ts + seq * 0.001,
        received_at=ts + 0.5,
        metrics={"temp": 20.0 + seq, "rh": 40.5},
        seq=seq,
        units={"temp": "degC"},
        tags={"site": "lab", "room": "r1"},
        flags=["out_of_range:temp"] if seq % 2 else [],
    )


def make_sink(
    tmp_path: Path, client_id: str = CLIENT, **fields: Any
) -> tuple[FileSink, GatewayMetrics, FilesConfig]:
    config = make_config(tmp_path, **fields)
    metrics = fresh_metrics()
    return FileSink(config, client_id, metrics), metrics, config


async def filled(acks: Acks[Reading], readings: list[Reading]) -> Channel[Reading]:
    channel: Channel[Reading] = Channel(100_000)
    await put_all(channel, acks.envelopes(readings))
    return channel


async def store(sink: FileSink, acks: Acks[Reading], readings: list[Reading]) -> None:
    """Recover, write everything, drain and seal."""
    await sink.recover()
    channel = await filled(acks, readings)
    channel.close()
    async with asyncio.timeout(30):
        await sink.run(channel)


def on_disk_seqs(data_dir: Path) -> list[int]:
    """Seqs of every complete line in open and sealed segments, read right now."""
    return [r["seq"] for p in files(data_dir, "*.jsonl*") for r in lines_of(p)]


async def test_group_commit_acks_each_reading_only_once_its_line_is_on_disk(tmp_path: Path) -> None:
    """Acks come after the write, once per reading; every field is stored; metrics add up."""
    data_dir = tmp_path / "data"
    seen_at_ack: list[bool] = []
    acks: Acks[Reading] = Acks(lambda r: seen_at_ack.append(r.seq in on_disk_seqs(data_dir)))
    sink, metrics, _ = make_sink(tmp_path)
    readings = [reading(i) for i in range(50)]
    metrics.in_flight.inc(len(readings))

    await store(sink, acks, readings)

    assert acks.count == 50
    assert all(seen_at_ack)
    assert records(data_dir) == [expected_record(r) for r in readings]
    assert sample(metrics, "gateway_readings_written_total") == 50
    assert sample(metrics, "gateway_readings_in_flight") == 0
    assert sample(metrics, "gateway_end_to_end_latency_seconds_count") == 50
    # All 50 were waiting, so they went out as one group commit.
    assert sample(metrics, "gateway_file_write_seconds_count", sink="files") == 1
    size = sum(p.stat().st_size for p in files(data_dir, "*.jsonl"))
    assert sample(metrics, "gateway_bytes_written_total", sink="files") == size


async def test_max_batch_bounds_one_commit(tmp_path: Path) -> None:
    acks: Acks[Reading] = Acks()
    sink, metrics, _ = make_sink(tmp_path, max_batch=10)
    await store(sink, acks, [reading(i) for i in range(35)])
    assert acks.count == 35
    assert sample(metrics, "gateway_file_write_seconds_count", sink="files") == 4


async def test_readings_are_partitioned_by_their_own_hour_in_utc(tmp_path: Path) -> None:
    acks: Acks[Reading] = Acks()
    sink, _, _ = make_sink(tmp_path)
    late = reading(1, ts=T0 - 3600)  # 10:00 of the same day
    next_day = reading(2, ts=T0 + 13 * 3600)  # 00:00 the next day
    await store(sink, acks, [reading(0), late, next_day, reading(3)])

    data_dir = tmp_path / "data"
    by_dir = {str(p.parent.relative_to(data_dir)): lines_of(p) for p in files(data_dir, "*.jsonl")}
    assert {k: [r["seq"] for r in v] for k, v in by_dir.items()} == {
        "date=2026-11-25/hour=11": [0, 3],
        "date=2026-11-25/hour=10": [1],
        "date=2026-11-26/hour=00": [2],
    }


async def test_size_rotation_seals_numbered_segments(tmp_path: Path) -> None:
    acks: Acks[Reading] = Acks()
    sink, metrics, _ = make_sink(tmp_path, rotate_bytes=1024, max_batch=4)
    await store(sink, acks, [reading(i) for i in range(40)])

    sealed = files(tmp_path / "data", "*.jsonl")
    names = [p.name for p in sealed]
    assert len(names) > 3
    assert names == [f"{CLIENT}-{n:08d}.jsonl" for n in range(1, len(names) + 1)]
    # Each segment is sealed at the first commit that takes it past rotate_bytes.
    assert all(p.stat().st_size >= 1024 for p in sealed[:-1])
    assert [r["seq"] for p in sealed for r in lines_of(p)] == list(range(40))
    assert sample(metrics, "gateway_segments_sealed_total", sink="files") == len(names)
    assert not files(tmp_path / "data", "*.open")


async def test_open_segment_is_hidden_from_readers_until_sealed_by_age(tmp_path: Path) -> None:
    """While written the file is `.jsonl.open`; the age rotation renames it even when idle."""
    acks: Acks[Reading] = Acks()
    sink, _, _ = make_sink(tmp_path, rotate_age_s=1.5)
    await sink.recover()
    data_dir = tmp_path / "data"
    channel: Channel[Reading] = Channel(100)
    async with running(sink.run, channel):
        await channel.put(acks.envelope(reading(0)))
        await eventually(lambda: acks.count == 1, timeout_s=5)
        assert [p.name for p in files(data_dir, "*")] == [f"{CLIENT}-00000001.jsonl.open"]
        assert not files(data_dir, "*.jsonl")

        await eventually(lambda: bool(files(data_dir, "*.jsonl")), timeout_s=10)
        assert [p.name for p in files(data_dir, "*.jsonl*")] == [f"{CLIENT}-00000001.jsonl"]

        await channel.put(acks.envelope(reading(1)))
        await eventually(lambda: acks.count == 2, timeout_s=5)
        assert files(data_dir, "*.open")[0].name == f"{CLIENT}-00000002.jsonl.open"
    assert [p.name for p in files(data_dir, "*.jsonl*")] == [
        f"{CLIENT}-00000001.jsonl",
        f"{CLIENT}-00000002.jsonl",
    ]


async def test_least_recently_written_segment_is_sealed_beyond_max_open(tmp_path: Path) -> None:
    acks: Acks[Reading] = Acks()
    sink, _, _ = make_sink(tmp_path, max_open_segments=2)
    await sink.recover()
    data_dir = tmp_path / "data"
    channel: Channel[Reading] = Channel(100)
    async with running(sink.run, channel):
        for hour in range(3):
            await channel.put(acks.envelope(reading(hour, ts=T0 + hour * 3600)))
            await eventually(acks.reached(hour + 1), timeout_s=5)
        assert [p.parent.name for p in files(data_dir, "*.jsonl")] == ["hour=11"]
        assert sorted(p.parent.name for p in files(data_dir, "*.open")) == ["hour=12", "hour=13"]


async def test_segment_numbers_continue_after_a_restart(tmp_path: Path) -> None:
    other = tmp_path / "data" / HOUR_11 / "gw-test-2-00000099.jsonl"
    other.parent.mkdir(parents=True)
    other.write_text('{"seq": 99}\n')  # another gateway's segment: its numbers are not ours
    for expected in (1, 2):
        acks: Acks[Reading] = Acks()
        sink, _, _ = make_sink(tmp_path)
        await store(sink, acks, [reading(expected)])
        assert (tmp_path / "data" / HOUR_11 / f"{CLIENT}-{expected:08d}.jsonl").exists()


async def test_gzip_replaces_sealed_segments_with_complete_gz_files(tmp_path: Path) -> None:
    acks: Acks[Reading] = Acks()
    sink, _, _ = make_sink(tmp_path, gzip=True, rotate_bytes=1024, max_batch=8)
    readings = [reading(i) for i in range(30)]
    await store(sink, acks, readings)

    data_dir = tmp_path / "data"
    packed = files(data_dir, "*")
    assert packed
    assert all(p.name.endswith(".jsonl.gz") for p in packed)
    got = [
        json.loads(line) for p in packed for line in gzip.decompress(p.read_bytes()).splitlines()
    ]
    assert got == [expected_record(r) for r in readings]


async def test_recovery_cuts_our_torn_line_seals_and_leaves_other_gateways_alone(
    tmp_path: Path,
) -> None:
    part = tmp_path / "data" / HOUR_11
    part.mkdir(parents=True)
    whole = b"".join(line_of(reading(i)) for i in range(2))
    ours = part / f"{CLIENT}-00000005.jsonl.open"
    ours.write_bytes(whole + b'{"device_id":"dev-1","ts":"2026-')
    theirs = part / "gw-other-00000007.jsonl.open"
    theirs.write_bytes(b'{"seq":1}\n{"se')
    empty = part / f"{CLIENT}-00000006.jsonl.open"  # created just before the crash
    empty.touch()

    acks: Acks[Reading] = Acks()
    sink, metrics, _ = make_sink(tmp_path)
    await sink.recover()

    sealed = part / f"{CLIENT}-00000005.jsonl"
    assert sealed.read_bytes() == whole
    assert not ours.exists()
    assert not empty.exists()
    assert theirs.read_bytes() == b'{"seq":1}\n{"se'
    assert sample(metrics, "gateway_torn_lines_recovered_total", sink="files") == 1
    assert sample(metrics, "gateway_segments_sealed_total", sink="files") == 1

    channel = await filled(acks, [reading(9)])
    channel.close()
    await sink.run(channel)
    assert (part / f"{CLIENT}-00000007.jsonl").exists()


async def test_recovery_finishes_a_gzip_the_crash_interrupted(tmp_path: Path) -> None:
    """A complete .gz beside its .jsonl wins; an unfinished one is done again."""
    part = tmp_path / "data" / HOUR_11
    part.mkdir(parents=True)
    line = line_of(reading(0)).decode()
    (part / f"{CLIENT}-00000002.jsonl").write_text(line)
    (part / f"{CLIENT}-00000002.jsonl.gz").write_bytes(gzip.compress(line.encode()))
    (part / f"{CLIENT}-00000003.jsonl").write_text(line)
    (part / f"{CLIENT}-00000003.jsonl.gz.tmp").write_bytes(b"\x1f\x8b half")

    acks: Acks[Reading] = Acks()
    sink, _, _ = make_sink(tmp_path, gzip=True)
    await store(sink, acks, [reading(1)])

    assert sorted(p.name for p in files(part, "*")) == [
        f"{CLIENT}-00000002.jsonl.gz",
        f"{CLIENT}-00000003.jsonl.gz",
        f"{CLIENT}-00000004.jsonl.gz",
    ]
    assert gzip.decompress((part / f"{CLIENT}-00000003.jsonl.gz").read_bytes()).decode() == line


@pytest.mark.parametrize("compress", [False, True])
def test_recovery_keeps_each_segments_modification_time_and_lists_ours(
    tmp_path: Path, compress: bool
) -> None:
    """A segment's mtime is the time of its last write (the dedupe window's seeding picks
    segments by it): cutting a torn tail or gzipping at start must not make it look new."""
    part = tmp_path / "data" / HOUR_11
    part.mkdir(parents=True)
    torn = part / f"{CLIENT}-00000001.jsonl.open"
    torn.write_bytes(line_of(reading(1)) + b'{"device_id": "torn')
    sealed = part / f"{CLIENT}-00000002.jsonl"
    sealed.write_bytes(line_of(reading(2)))
    (part / "gw-other-00000003.jsonl").write_bytes(line_of(reading(3)))
    then = time.time() - 3600
    for path in (torn, sealed):
        os.utime(path, (then, then))
    found = recover_segments(tmp_path / "data", "date=*/hour=*", CLIENT, compress=compress)
    assert found.torn_lines == 1
    suffix = ".jsonl.gz" if compress else ".jsonl"
    assert [p.name for p in found.segments] == [
        f"{CLIENT}-00000001{suffix}",
        f"{CLIENT}-00000002{suffix}",
    ]
    for path in found.segments:
        assert path.stat().st_mtime == pytest.approx(then, abs=1e-3)


async def test_duckdb_reads_sealed_segments_as_they_are(tmp_path: Path) -> None:
    acks: Acks[Reading] = Acks()
    sink, _, _ = make_sink(tmp_path, rotate_bytes=2048, max_batch=16)
    readings = [reading(i, ts=T0 + (i % 3) * 3600) for i in range(60)]
    await store(sink, acks, readings)

    glob = f"{tmp_path / 'data'}/**/*.jsonl"
    query = "SELECT count(*), max(metrics.temp) FILTER (WHERE seq = 7) FROM read_json_auto(?)"
    [(rows, temp)] = duckdb.connect().execute(query, [glob]).fetchall()
    assert rows == 60
    assert temp == 27.0


@pytest.fixture
def fsync_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each fsync of a regular file (not a directory) in one list with the acks."""
    log: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            log.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return log


async def test_fsync_always_acks_after_each_commit_is_fsynced(
    tmp_path: Path, fsync_log: list[str]
) -> None:
    acks: Acks[Reading] = Acks(lambda _: fsync_log.append("ack"))
    sink, _, _ = make_sink(tmp_path, fsync="always", max_batch=2)
    await store(sink, acks, [reading(i) for i in range(4)])
    assert fsync_log[:6] == ["fsync", "ack", "ack", "fsync", "ack", "ack"]


async def test_fsync_never_acks_after_write_without_fsync(
    tmp_path: Path, fsync_log: list[str]
) -> None:
    acks: Acks[Reading] = Acks(lambda _: fsync_log.append("ack"))
    sink, _, _ = make_sink(tmp_path, fsync="never", max_batch=2)
    await store(sink, acks, [reading(i) for i in range(4)])
    assert fsync_log == ["ack"] * 4 + ["fsync"]  # only sealing fsyncs


async def test_fsync_interval_holds_acks_until_the_next_fsync(
    tmp_path: Path, fsync_log: list[str]
) -> None:
    interval_s = 1.5
    acks: Acks[Reading] = Acks(lambda _: fsync_log.append("ack"))
    sink, _, _ = make_sink(tmp_path, fsync="interval", fsync_interval_s=interval_s)
    await sink.recover()
    data_dir = tmp_path / "data"
    channel: Channel[Reading] = Channel(100)
    async with running(sink.run, channel):
        put_at = time.monotonic()
        await put_all(channel, acks.envelopes([reading(0), reading(1)]))
        await eventually(lambda: on_disk_seqs(data_dir) == [0, 1], timeout_s=5)
        assert acks.count == 0  # written, not yet fsynced: not acked
        await eventually(lambda: acks.count == 2, timeout_s=5)
        assert time.monotonic() - put_at >= interval_s
        assert fsync_log == ["fsync", "ack", "ack"]


def block_partition(data_dir: Path, partition: Path) -> Path:
    """Put a regular file where the partition directory must go (root ignores chmod)."""
    blocker = data_dir / partition
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory\n")
    return blocker


def sink_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("gateway.sinks") and r.levelno == logging.WARNING
    ]


async def test_write_failure_retries_without_acks_then_writes_everything_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A blocked partition fails the whole batch; the part already written is not duplicated."""
    caplog.set_level(logging.WARNING, logger="gateway.sinks")
    data_dir = tmp_path / "data"
    blocker = block_partition(data_dir, Path("date=2026-11-25/hour=12"))
    acks: Acks[Reading] = Acks()
    sink, metrics, _ = make_sink(tmp_path)
    await sink.recover()
    # hour 11 is writable and comes first in the batch, hour 12 is blocked.
    readings = [reading(i, ts=T0 + (i % 2) * 3600) for i in range(10)]
    channel = await filled(acks, readings)

    async with running(sink.run, channel):

        def errors() -> float:
            return sample(
                metrics, "gateway_write_errors_total", sink="files", reason="not_a_directory"
            )

        await eventually(lambda: errors() >= 3, timeout_s=10)
        assert acks.count == 0
        assert sink.writable is False
        assert sample(metrics, "gateway_sink_writable", sink="files") == 0
        assert sum(1 for m in sink_warnings(caplog) if "not_a_directory" in m) == 1
        assert len(sink_warnings(caplog)) == 1

        blocker.unlink()
        await eventually(lambda: acks.count == 10, timeout_s=10)
        assert sink.writable is True
        assert sample(metrics, "gateway_sink_writable", sink="files") == 1

    assert sorted(r["seq"] for r in records(data_dir)) == list(range(10))
    assert any("writes resumed after" in m for m in sink_warnings(caplog))


async def test_cancel_during_retries_stops_the_sink(tmp_path: Path) -> None:
    block_partition(tmp_path / "data", HOUR_11)
    acks: Acks[Reading] = Acks()
    sink, metrics, _ = make_sink(tmp_path)
    await sink.recover()
    channel = await filled(acks, [reading(0)])
    task = asyncio.create_task(sink.run(channel))
    await eventually(
        lambda: (
            sample(metrics, "gateway_write_errors_total", sink="files", reason="not_a_directory")
            >= 1
        ),
        timeout_s=5,
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert acks.count == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, for a real ENOSPC; skipped where mounting is not permitted."""
    with small_tmpfs(tmp_path / "tiny", "256k") as mount_point:
        yield mount_point


async def test_disk_full_is_retried_and_leaves_no_torn_or_duplicate_line(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.sinks")
    config = FilesConfig.model_validate(
        {"data_dir": tiny_disk / "data", "retry_min_s": 0.01, "retry_max_s": 0.05}
    )
    metrics = fresh_metrics()
    sink = FileSink(config, CLIENT, metrics)
    await sink.recover()
    acks: Acks[Reading] = Acks()
    channel: Channel[Reading] = Channel(10_000)
    async with running(sink.run, channel):
        await channel.put(acks.envelope(reading(0)))
        await eventually(lambda: acks.count == 1, timeout_s=5)
        # A few pages free, a batch of ~60 KB: the write gets part-way, then ENOSPC.
        filler = fill(tiny_disk, leave_bytes=16 * 1024)
        batch = [reading(i) for i in range(1, 401)]
        await put_all(channel, acks.envelopes(batch))

        def no_space() -> float:
            return sample(metrics, "gateway_write_errors_total", sink="files", reason="no_space")

        await eventually(lambda: no_space() >= 2, timeout_s=10)
        assert acks.count == 1
        assert sink.writable is False
        assert len(sink_warnings(caplog)) == 1

        filler.unlink()
        await eventually(lambda: acks.count == 401, timeout_s=10)
        assert sink.writable is True
    assert sorted(r["seq"] for r in records(config.data_dir)) == list(range(401))


@pytest.mark.parametrize("policy", ["always", "interval"])
async def test_failed_fsync_writes_the_pending_lines_again_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    """After a failed fsync the kernel may have dropped the pages: rewrite, fsync, then ack."""
    failures = [OSError(5, "Input/output error")] * 2  # EIO, as from a failing disk
    real_fsync = os.fsync

    def flaky(fd: int) -> None:
        if failures and stat.S_ISREG(os.fstat(fd).st_mode):
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    acks: Acks[Reading] = Acks()
    sink, metrics, _ = make_sink(tmp_path, fsync=policy, fsync_interval_s=0.05, max_batch=3)
    await store(sink, acks, [reading(i) for i in range(9)])

    assert acks.count == 9
    assert [r["seq"] for r in records(tmp_path / "data")] == list(range(9))
    assert sample(metrics, "gateway_write_errors_total", sink="files", reason="io_error") == 2
    assert sink.writable is True


async def test_slow_fsync_past_the_deadline_is_an_error_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stuck call keeps its thread; the retry waits for it before touching the file."""
    slow_calls = [0.5]  # the first file fsync hangs five times longer than the deadline
    real_fsync = os.fsync

    def slow(fd: int) -> None:
        if slow_calls and stat.S_ISREG(os.fstat(fd).st_mode):
            time.sleep(slow_calls.pop())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow)
    acks: Acks[Reading] = Acks()
    sink, metrics, _ = make_sink(tmp_path, write_timeout_s=0.1, max_batch=5)
    await store(sink, acks, [reading(i) for i in range(10)])

    assert acks.count == 10
    assert [r["seq"] for r in records(tmp_path / "data")] == list(range(10))
    assert sample(metrics, "gateway_write_errors_total", sink="files", reason="io_error") >= 1
