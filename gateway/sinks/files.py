"""FileSink: group commit of readings as JSON lines, fsync, rotate, seal; then ack."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from gateway.channel import Channel
from gateway.config import DedupeConfig, FilesConfig
from gateway.layout import HOUR_GLOB
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Reading
from gateway.sinks.dedupe import DedupeWindow, Identity
from gateway.sinks.lines import LineEncoder
from gateway.sinks.seed import seed_identities
from gateway.sinks.segments import Parts, SegmentStore

log = logging.getLogger(__name__)


class FileSink:
    """Stores readings under `<data_dir>/date=YYYY-MM-DD/hour=HH/` by the reading's own time.

    With dedupe on, a reading whose identity was written recently (or comes twice in one batch)
    is not written again: it is counted as dropped (`duplicate`) and its ack is released with its
    batch, once that batch is durable (sinks/dedupe.py says why the check is made here).
    """

    def __init__(
        self,
        config: FilesConfig,
        client_id: str,
        metrics: GatewayMetrics,
        on_durable: Callable[[list[Reading]], None] | None = None,
        dedupe: DedupeConfig | None = None,
    ) -> None:
        """`on_durable` sees each batch's readings once durable and acked (app.py wires it)."""
        self._metrics = metrics
        self._on_durable = on_durable
        self._encode_lines = LineEncoder()
        self._client_id = client_id
        self._data_dir = config.data_dir
        self._dedupe = dedupe if dedupe is not None and dedupe.enabled else None
        self._window: DedupeWindow | None = None
        # Per batch written and not yet settled: the identities it claimed (one list per envelope).
        self._unsettled: deque[list[list[Identity]]] = deque()
        if self._dedupe is not None:
            window = self._window = DedupeWindow(self._dedupe)
            metrics.dedupe_identities.set_function(lambda: len(window))
        self._store = SegmentStore(
            config.data_dir,
            partition_glob=HOUR_GLOB,
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
        """Seal segments a crash left open, then seed the dedupe window from what the latest
        segments hold (call before run, before the first message)."""
        segments = await self._store.recover()
        dedupe, window = self._dedupe, self._window
        if dedupe is None or window is None or not dedupe.seed:
            return
        seeded = await asyncio.to_thread(
            seed_identities,
            self._data_dir,
            segments,
            client_id=self._client_id,
            window_s=dedupe.window_s,
            max_identities=dedupe.max_identities,
        )
        window.seed(seeded.chunks)
        self._metrics.dedupe_seed_seconds.set(seeded.seconds)
        if seeded.segments or seeded.parquet_files:
            log.info(
                "dedupe window seeded with %d identities from %d segments and %d Parquet files "
                "in %.2fs%s",
                seeded.identities,
                seeded.segments,
                seeded.parquet_files,
                seeded.seconds,
                f" ({seeded.skipped_lines} lines not readings)" if seeded.skipped_lines else "",
            )

    def reconfigure(self, config: FilesConfig, dedupe: DedupeConfig) -> None:
        """Rotation, fsync, batch and retry settings, and the dedupe window's bounds, from now
        on (a reload; turning dedupe on or off takes a restart, see reload.py)."""
        self._store.reconfigure(config)
        if self._window is not None:
            self._window.reconfigure(dedupe)

    async def rename(self, client_id: str) -> None:
        """Seal everything; later segments are named after `client_id` (a reload changed it)."""
        await self._store.rename(client_id)

    async def seal_now(self) -> int:
        """Seal every open segment now (while run() runs); returns how many were open."""
        return await self._store.seal_now()

    async def run(self, channel: Channel[Reading]) -> None:
        """Store until the channel is drained, then seal every segment and return."""
        try:
            await self._store.run(channel, self._encode, self._settle)
        finally:
            # Batches claimed but never settled were not (all) made durable: forget their
            # identities, so that nothing unwritten can pass for written.
            if self._window is not None:
                while self._unsettled:
                    for claimed in self._unsettled.popleft():
                        self._window.withdraw(claimed)

    def _encode(self, batch: list[Envelope[Reading]]) -> Parts:
        window = self._window
        if window is not None:
            claims = []
            repeats = 0
            for envelope in batch:
                kept, claimed = window.claim(envelope.body)
                if len(kept) != len(envelope.body):
                    repeats += len(envelope.body) - len(kept)
                    envelope.body = kept  # what _settle counts as written
                claims.append(claimed)
            self._unsettled.append(claims)
            if repeats:
                m = self._metrics
                m.dropped["duplicate"].inc(repeats)
                m.in_flight.dec(repeats)
        if len(batch) == 1:
            return self._encode_lines(batch[0].body)
        return self._encode_lines([reading for envelope in batch for reading in envelope.body])

    def _settle(self, batch: list[Envelope[Reading]]) -> None:
        # Called only once the batch is durable (per the fsync policy): now a crash is harmless.
        if self._window is not None:
            self._unsettled.popleft()  # batches settle in the order they were written
        now = time.time()
        m = self._metrics
        written = 0
        for envelope in batch:
            envelope.ack.release()
            readings = envelope.body
            written += len(readings)
            if readings:
                m.end_to_end_latency.observe_many([now - r.ts for r in readings])
                if self._on_durable is not None:
                    self._on_durable(readings)
        m.readings_written.inc(written)
        m.in_flight.dec(written)
