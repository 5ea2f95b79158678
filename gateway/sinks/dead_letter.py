"""DeadLetterSink: same durability as FileSink, for rejections."""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime

from gateway.channel import Channel
from gateway.config import DeadLetterConfig, FilesConfig
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Rejection
from gateway.sinks.segments import Lines, SegmentStore

logger = logging.getLogger(__name__)

DEAD_LETTER_DIR = "dead-letter"


@functools.lru_cache(maxsize=1024)
def _day_partition(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("date=%Y-%m-%d")


def day_partition(ts: float) -> str:
    """`date=YYYY-MM-DD` (UTC) of an epoch time."""
    return _day_partition(int(ts // 86400))


class DeadLetterSink:
    """Stores rejections under `<data_dir>/dead-letter/date=YYYY-MM-DD/` by when they arrived."""

    def __init__(
        self,
        config: DeadLetterConfig,
        files: FilesConfig,
        client_id: str,
        metrics: GatewayMetrics,
    ) -> None:
        self._max_payload_bytes = config.max_payload_bytes
        self._metrics = metrics
        self._unknown_reasons: set[str] = set()
        self._store = SegmentStore(
            files.data_dir / DEAD_LETTER_DIR,
            partition_glob="date=*",
            sink="dead_letter",
            client_id=client_id,
            config=files,
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

    async def run(self, channel: Channel[Envelope[Rejection]]) -> None:
        """Store until the channel is drained, then seal every segment and return."""
        await self._store.run(channel, self._encode, self._settle)

    def _encode(self, batch: list[Envelope[Rejection]]) -> Lines:
        lines: Lines = {}
        for envelope in batch:
            rejection = envelope.body
            lines.setdefault(day_partition(rejection.received_at), []).append(
                rejection.to_json_bytes(self._max_payload_bytes)
            )
        return lines

    def _settle(self, batch: list[Envelope[Rejection]]) -> None:
        # Called only once the batch is durable (per the fsync policy).
        for envelope in batch:
            envelope.ack()
            reason = envelope.body.reason
            counter = self._metrics.rejected.get(reason)
            if counter is not None:
                counter.inc()
            elif reason not in self._unknown_reasons:
                # A reason outside RejectReason is a bug upstream; stored, but not a label.
                self._unknown_reasons.add(reason)
                logger.warning("dead letter: reason %r is not a known reject reason", reason[:64])
        self._metrics.in_flight.dec(len(batch))
