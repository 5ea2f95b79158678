"""Drive a sink in this event loop: envelopes that record their acks, and what landed on disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from gateway.channel import Channel
from gateway.layout import SEALED_SUFFIX
from gateway.metrics import GatewayMetrics
from gateway.model import Ack, Envelope
from gateway.segment_reader import open_segment_file

T = TypeVar("T")


def fresh_metrics() -> GatewayMetrics:
    return GatewayMetrics(CollectorRegistry(), "test")


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    """A sample's value, 0 when absent."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Acks(Generic[T]):
    """Wraps values in envelopes whose ack records the value, in ack order.

    `on_ack` runs inside each ack, so a test can check what was on disk at that moment.
    """

    def __init__(self, on_ack: Callable[[T], None] | None = None) -> None:
        self.acked: list[T] = []
        self._on_ack = on_ack

    @property
    def count(self) -> int:
        return len(self.acked)

    def reached(self, count: int) -> Callable[[], bool]:
        """A predicate for `eventually`: at least `count` acks."""
        return lambda: len(self.acked) >= count

    def envelope(self, body: T) -> Envelope[T]:
        """One value in its own envelope, so each value's ack is seen on its own."""

        def done() -> None:
            if self._on_ack is not None:
                self._on_ack(body)
            self.acked.append(body)

        return Envelope([body], Ack(done))

    def envelopes(self, bodies: list[T]) -> list[Envelope[T]]:
        return [self.envelope(b) for b in bodies]


async def put_all(channel: Channel[T], envelopes: list[Envelope[T]]) -> None:
    for envelope in envelopes:
        await channel.put(envelope)


@contextlib.asynccontextmanager
async def running(
    run: Callable[[Channel[T]], Coroutine[Any, Any, None]],
    channel: Channel[T],
    drain_timeout_s: float = 30.0,
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a sink as a task; on exit close the channel and wait for it to drain and seal."""
    task = asyncio.create_task(run(channel), name="sink.test")
    try:
        yield task
    except BaseException:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    channel.close()
    async with asyncio.timeout(drain_timeout_s):
        await task


def files(root: Path, pattern: str) -> list[Path]:
    """Regular files under root matching a glob, sorted by name."""
    return sorted((p for p in root.rglob(pattern) if p.is_file()), key=lambda p: p.name)


def lines_of(path: Path) -> list[dict[str, Any]]:
    """Every line of a segment file (plain or gzipped), parsed; fails on a torn or invalid line."""
    with open_segment_file(path) as source:
        data = source.read()
    assert not data or data.endswith(b"\n"), f"{path} ends in a torn line"
    return [json.loads(line) for line in data.splitlines()]


def records(root: Path, pattern: str = f"*{SEALED_SUFFIX}") -> list[dict[str, Any]]:
    return [record for path in files(root, pattern) for record in lines_of(path)]


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "256k") at `mount_point`, for a real ENOSPC; the test is skipped
    where mounting is not permitted (it needs root)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill the disk up to about `leave_bytes` free; return the filler to delete later."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - leave_bytes))
    return filler
