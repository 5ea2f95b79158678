"""FileSink: group commit of readings as JSON lines, fsync, rotate, seal; then ack."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.channel import Channel
from gateway.config import FilesConfig
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Reading
from gateway.sinks.segments import Lines, SegmentStore


@functools.lru_cache(maxsize=4096)
def _hour_partition(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("date=%Y-%m-%d/hour=%H")


def hour_partition(ts: float) -> str:
    """`date=YYYY-MM-DD/hour=HH` (UTC) of an epoch time: the Hive partition of a reading."""
    return _hour_partition(int(ts // 3600))


class FileSink:
    """Stores readings under `<data_dir>/date=YYYY-MM-DD/hour=HH/` by the reading's own time."""

    def __init__(
        self,
        config: FilesConfig,
        client_id: str,
        metrics: GatewayMetrics,
        on_durable: Callable[[list[Envelope[Reading]]], None] | None = None,
    ) -> None:
        """`on_durable` sees each batch once it is durable and acked (app.py wires it)."""
        self._metrics = metrics
        self._on_durable = on_durable
        self._store = SegmentStore(
            config.data_dir,
            partition_glob="date=*/hour=*",
            sink="files",
            client_id=client_id,
            config=config,
            metrics=metrics,
        )

    @property
    def writable(self) -> bool:
        """False while writes fail (they are retried); /readyz reports it."""
        return self._store.writable

    async def recover(self) -> None:
        """Seal segments a crash left open (call before run)."""
        await self._store.recover()

    async def seal_now(self) -> int:
        """Seal every open segment now (while run() runs); returns how many were open."""
        return await self._store.seal_now()

    async def run(self, channel: Channel[Envelope[Reading]]) -> None:
        """Store until the channel is drained, then seal every segment and return."""
        await self._store.run(channel, self._encode, self._settle)

    @staticmethod
    def _encode(batch: list[Envelope[Reading]]) -> Lines:
        lines: Lines = {}
        for envelope in batch:
            reading = envelope.body
            lines.setdefault(hour_partition(reading.ts), []).append(reading.to_json_bytes())
        return lines

    def _settle(self, batch: list[Envelope[Reading]]) -> None:
        # Called only once the batch is durable (per the fsync policy): now a crash is harmless.
        now = time.time()
        for envelope in batch:
            envelope.ack()
        self._metrics.end_to_end_latency.observe_many(
            [max(0.0, now - envelope.body.ts) for envelope in batch]
        )
        self._metrics.readings_written.inc(len(batch))
        self._metrics.in_flight.dec(len(batch))
        if self._on_durable is not None:
            self._on_durable(batch)
