"""DeadLetterSink: same durability as FileSink, for rejections."""

from __future__ import annotations

import base64
import hashlib
import logging

from gateway.channel import Channel
from gateway.config import DeadLetterConfig, FilesConfig
from gateway.layout import DAY_GLOB, DEAD_LETTER_DIR, day_partition
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Rejection, make_ts_formatter
from gateway.sinks.lines import record_line
from gateway.sinks.segments import Parts, SegmentStore

logger = logging.getLogger(__name__)


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
        self._format_ts = make_ts_formatter()
        self._unknown_reasons: set[str] = set()
        # The readings of one message rejected by a step share its payload: hash it once.
        self._last_digest: tuple[bytes, str] = (b"", "")
        self._store = SegmentStore(
            files.data_dir / DEAD_LETTER_DIR,
            partition_glob=DAY_GLOB,
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

    def reconfigure(self, config: DeadLetterConfig, files: FilesConfig) -> None:
        """Record, rotation, fsync and retry settings from now on (a reload)."""
        self._max_payload_bytes = config.max_payload_bytes
        self._store.reconfigure(files)

    async def rename(self, client_id: str) -> None:
        """Seal everything; later segments are named after `client_id` (a reload changed it)."""
        await self._store.rename(client_id)

    async def seal_now(self) -> int:
        """Seal every open segment now (while run() runs); returns how many were open."""
        return await self._store.seal_now()

    async def run(self, channel: Channel[Rejection]) -> None:
        """Store until the channel is drained, then seal every segment and return."""
        await self._store.run(channel, self._encode, self._settle)

    def _encode(self, batch: list[Envelope[Rejection]]) -> Parts:
        lines: dict[str, list[bytes]] = {}
        for envelope in batch:
            for rejection in envelope.body:
                lines.setdefault(day_partition(rejection.received_at), []).append(
                    self.encode(rejection)
                )
        return {key: b"".join(chunk) for key, chunk in lines.items()}

    def encode(self, rejection: Rejection) -> bytes:
        """The dead-letter line, newline included (UTF-8): README, Files."""
        full_size = rejection.payload_bytes or len(rejection.payload)
        body = rejection.payload[: self._max_payload_bytes]
        record: dict[str, object] = {
            "received_at": self._format_ts(rejection.received_at),
            "topic": rejection.topic,
            "reason": rejection.reason,
            "detail": rejection.detail,
        }
        try:
            record["payload"] = body.decode("utf-8")
            record["payload_encoding"] = "utf-8"
        except UnicodeDecodeError:
            record["payload"] = base64.b64encode(body).decode("ascii")
            record["payload_encoding"] = "base64"
        if len(body) < full_size:
            record["payload_truncated"] = True
            record["payload_bytes"] = full_size
            record["payload_sha256"] = rejection.payload_sha256 or self._sha256(rejection.payload)
        return record_line(record)

    def _sha256(self, payload: bytes) -> str:
        """The SHA-256 of a whole payload cut here (one a step rejected)."""
        last, digest = self._last_digest
        if payload is not last:
            digest = hashlib.sha256(payload).hexdigest()
            self._last_digest = (payload, digest)
        return digest

    def _settle(self, batch: list[Envelope[Rejection]]) -> None:
        # Called only once the batch is durable (per the fsync policy).
        rejected = self._metrics.rejected
        total = 0
        for envelope in batch:
            envelope.ack.release()
            total += len(envelope.body)
            for rejection in envelope.body:
                reason = rejection.reason
                counter = rejected.get(reason)
                if counter is not None:
                    counter.inc()
                elif reason not in self._unknown_reasons:
                    # A reason outside RejectReason is a bug upstream; stored, but not a label.
                    self._unknown_reasons.add(reason)
                    logger.warning(
                        "dead letter: reason %r is not a known reject reason", reason[:64]
                    )
        self._metrics.in_flight.dec(total)
