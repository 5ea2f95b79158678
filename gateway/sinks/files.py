"""FileSink: group commit of readings as JSON lines, fsync, rotate, seal; then ack."""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.channel import Channel
from gateway.config import FilesConfig
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Reading
from gateway.sinks.lines import LineEncoder
from gateway.sinks.segments import Parts, SegmentStore


class FileSink:
    """Stores readings under `<data_dir>/date=YYYY-MM-DD/hour=HH/` by the reading's own time."""

    def __init__(
        self,
        config: FilesConfig,
        client_id: str,
        metrics: GatewayMetrics,
        on_durable: Callable[[list[Reading]], None] | None = None,
    ) -> None:
        """`on_durable` sees each batch's readings once durable and acked (app.py wires it)."""
        self._metrics = metrics
        self._on_durable = on_durable
        self._encode_lines = LineEncoder()
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

    def reconfigure(self, config: FilesConfig) -> None:
        """Rotation, fsync, batch and retry settings from now on (a reload)."""
        self._store.reconfigure(config)

    async def rename(self, client_id: str) -> None:
        """Seal everything; later segments are named after `client_id` (a reload changed it)."""
        await self._store.rename(client_id)

    async def seal_now(self) -> int:
        """Seal every open segment now (while run() runs); returns how many were open."""
        return await self._store.seal_now()

    async def run(self, channel: Channel[Reading]) -> None:
        """Store until the channel is drained, then seal every segment and return."""
        await self._store.run(channel, self._encode, self._settle)

    def _encode(self, batch: list[Envelope[Reading]]) -> Parts:
        if len(batch) == 1:
            return self._encode_lines(batch[0].body)
        return self._encode_lines([reading for envelope in batch for reading in envelope.body])

    def _settle(self, batch: list[Envelope[Reading]]) -> None:
        # Called only once the batch is durable (per the fsync policy): now a crash is harmless.
        now = time.time()
        m = self._metrics
        written = 0
        for envelope in batch:
            envelope.ack.release()
            readings = envelope.body
            written += len(readings)
            m.end_to_end_latency.observe_many([now - r.ts for r in readings])
            if self._on_durable is not None:
                self._on_durable(readings)
        m.readings_written.inc(written)
        m.in_flight.dec(written)
