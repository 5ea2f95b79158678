"""Reliability matrix, the disk: full (a small tmpfs filled up) and unwritable (the data
directory made immutable, files and all) while QoS 1 readings stream in. Nothing is acked
while writes fail, so nothing is lost; writing resumes by itself when the disk does."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.broker import Broker
from harness.gateway import GatewayProcess
from harness.poll import eventually
from harness.scrape import get
from tests.support.ledger import accounting, holds_all, keys_of, readings, stored
from tests.support.publish import Stream, publish
from tests.support.reliability import Matrix, Row, stored_and_stopped
from tests.support.sinks import fill, small_tmpfs

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (root only; skipped where mounting is not permitted)."""
    with small_tmpfs(tmp_path / "disk", "16m") as mount_point:
        yield mount_point


def chattr(flag: str, path: Path) -> bool:
    tool = shutil.which("chattr")
    if tool is None:
        return False
    done = subprocess.run([tool, "-R", flag, str(path)], capture_output=True, check=False)
    return done.returncode == 0


async def write_errors(gw: GatewayProcess, reason: str) -> float:
    return await gw.metric("gateway_write_errors_total", sink="files", reason=reason)


async def run_disk_fault(
    gw: GatewayProcess,
    broker: Broker,
    unique: str,
    reason: str,
    break_disk: object,
    mend_disk: object,
) -> tuple[int, int, int, float, int, str]:
    """Store a first batch, break the disk, stream 5,000 readings into the failure, mend it:
    (messages, lost, duplicated, seconds from mending to ready and acking again, peak RSS,
    summary)."""
    first = readings(unique, devices=50, seqs=range(20))  # 1,000
    streamed = readings(unique, devices=50, seqs=range(20, 120))  # 5,000 at ~1,000/s
    sent = keys_of(first) | keys_of(streamed)
    gw.start()
    stream: Stream | None = None
    try:
        await gw.ready()
        await publish(broker.host, broker.port, first)
        await eventually(holds_all(gw.data_dir, keys_of(first)), message="the first batch")
        break_disk()  # type: ignore[operator]
        stream = Stream(broker, streamed, per_round=50, pause_s=0.05).start()

        async def failing() -> bool:
            return await write_errors(gw, reason) >= 3 and stream.acked >= 2000  # type: ignore[union-attr]

        await eventually(failing, timeout_s=60, interval_s=0.1, message=f"writes fail: {reason}")
        unacked = await gw.metric("gateway_unacked_messages")
        mend_disk()  # type: ignore[operator]
        mended_at = time.monotonic()

        async def writing_again() -> bool:
            status, _ = await get(f"{gw.url}/readyz")
            return status == 200 and await gw.metric("gateway_unacked_messages") < unacked

        await eventually(writing_again, timeout_s=60, interval_s=0.05)
        recovery = time.monotonic() - mended_at
        peak = await stored_and_stopped(gw, sent, stream)
    finally:
        if stream is not None:
            stream.close()
        gw.cleanup()
    assert unacked > 0, "nothing was acked while writes failed"
    missing, duplicates, summary = accounting(stored(gw.data_dir), sent)
    return len(first) + len(streamed), len(missing), duplicates, recovery, peak, summary


async def test_a_full_disk_loses_nothing_and_recovers_when_space_returns(
    broker: Broker, small_disk: Path, tmp_path: Path, unique: str, reliability: Matrix
) -> None:
    gw = GatewayProcess.subscribed_to(broker, tmp_path / "gw", unique, data_dir=small_disk / "data")
    fillers: list[Path] = []
    messages, lost, duplicates, recovery, peak, summary = await run_disk_fault(
        gw,
        broker,
        unique,
        "no_space",
        lambda: fillers.append(fill(small_disk, leave_bytes=8 * 1024)),
        lambda: fillers.pop().unlink(),
    )
    reliability.record(
        Row(
            "disk full (16 MiB tmpfs filled while streaming)",
            1,
            messages,
            lost,
            duplicates,
            [recovery],
            "space freed to ready, acking again",
            peak,
            "nothing acked while ENOSPC; /readyz 503; retried with backoff (capped at 0.5 s "
            "here; `files.retry_max_s` is 10 s by default)",
        )
    )
    assert not lost, summary


async def test_an_unwritable_data_directory_loses_nothing_and_recovers(
    broker: Broker, tmp_path: Path, unique: str, reliability: Matrix
) -> None:
    gw = GatewayProcess.subscribed_to(broker, tmp_path / "gw", unique)
    probe = tmp_path / "probe"
    probe.mkdir()
    if not chattr("+i", probe) or not chattr("-i", probe):
        pytest.skip("chattr +i is not available here (needs root and a filesystem that has it)")
    try:
        messages, lost, duplicates, recovery, peak, summary = await run_disk_fault(
            gw,
            broker,
            unique,
            "permission",
            lambda: chattr("+i", gw.data_dir),
            lambda: chattr("-i", gw.data_dir),
        )
    finally:
        chattr("-i", gw.data_dir)
    reliability.record(
        Row(
            "data directory unwritable (`chattr -R +i` while streaming)",
            1,
            messages,
            lost,
            duplicates,
            [recovery],
            "writable again to ready, acking again",
            peak,
            "writes fail with EPERM: nothing acked; retried with backoff (as above)",
        )
    )
    assert not lost, summary
