"""Maintenance: every `compaction.interval_s`, compact what is due, then apply retention.

One pass runs in one thread under the tree lock (so gateways sharing a data directory, and a
`gateway compact` from cron, take turns), and sets the storage metrics. The event loop only
waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.compaction.compact import PassResult, Step, compact_due
from gateway.compaction.partitions import dead_letter_partitions, hour_partitions, tree_lock
from gateway.compaction.retention import Kept, apply_limits
from gateway.config import CompactionConfig, RetentionConfig
from gateway.errors import GatewayError
from gateway.metrics import StorageMetrics

log = logging.getLogger(__name__)


class StoppedError(GatewayError):
    """Raised inside a pass when the gateway stops: the temp file is left for the next pass."""

    reason = "stopped"


@dataclass(slots=True)
class Report:
    """One pass: None for a part that did not run (the lock was held elsewhere)."""

    compaction: PassResult | None
    data: Kept | None
    dead_letter: Kept | None


class Maintenance:
    """Compaction and retention of one data directory."""

    def __init__(
        self,
        data_dir: Path,
        compaction: CompactionConfig,
        retention: RetentionConfig,
        metrics: StorageMetrics,
    ) -> None:
        self._data_dir = data_dir
        self._compaction = compaction
        self._retention = retention
        self._metrics = metrics
        self._stop = threading.Event()
        self._warned: dict[str, str] = {}  # partition -> reason last logged
        metrics.max_bytes["files"].set(retention.max_bytes)
        metrics.max_bytes["dead_letter"].set(retention.dead_letter_max_bytes)

    async def run(self) -> None:
        """A pass now and every interval_s after, until cancelled."""
        try:
            while True:
                await asyncio.to_thread(self.run_pass)
                await asyncio.sleep(self._compaction.interval_s)
        finally:
            # A pass still in its thread notices at its next batch and stops there.
            self._stop.set()

    def run_pass(
        self, *, now: float | None = None, step: Step | None = None, wait: bool = False
    ) -> Report:
        """Blocking. Skips (returns an empty report) while another process holds the lock,
        unless `wait`."""
        if not self._data_dir.is_dir():
            return Report(None, None, None)

        def checked(name: str) -> None:
            if self._stop.is_set():
                raise StoppedError("stopping")
            if step is not None:
                step(name)

        with tree_lock(self._data_dir, exclusive=True, wait=wait) as locked:
            if not locked:
                return Report(None, None, None)
            when = time.time() if now is None else now
            try:
                result = compact_due(
                    hour_partitions(self._data_dir),
                    self._compaction,
                    keep_jsonl=self._retention.keep_jsonl,
                    now=when,
                    step=checked,
                )
            except StoppedError:
                return Report(None, None, None)
            self._observe(result)
            r = self._retention
            data = apply_limits(
                hour_partitions(self._data_dir),
                max_age_s=r.max_age_s,
                max_bytes=r.max_bytes,
                now=when,
            )
            dead = apply_limits(
                dead_letter_partitions(self._data_dir),
                max_age_s=r.dead_letter_max_age_s,
                max_bytes=r.dead_letter_max_bytes,
                now=when,
            )
        self._observe_kept("files", data)
        self._observe_kept("dead_letter", dead)
        return Report(result, data, dead)

    def _observe(self, result: PassResult) -> None:
        m = self._metrics
        for partition, done in result.compacted:
            self._warned.pop(partition.name, None)
            m.files_deleted[("files", "compacted")].inc(done.deleted)
            if done.written is None:
                continue
            w = done.written
            m.partitions.inc()
            m.rows.inc(w.rows)
            m.input_bytes.inc(w.input_bytes)
            m.output_bytes.inc(w.output_bytes)
            m.seconds.observe(done.seconds)
            if w.output_bytes:
                m.ratio.set(w.input_bytes / w.output_bytes)
            log.info(
                "compacted %s: %d readings, %d -> %d bytes in %.1fs",
                partition.name,
                w.rows,
                w.input_bytes,
                w.output_bytes,
                done.seconds,
            )
        for partition, error in result.errors:
            m.errors[error.reason].inc()
            # One line per partition and cause, not one per pass.
            if self._warned.get(partition.name) != error.reason:
                self._warned[partition.name] = error.reason
                log.warning(
                    "cannot compact %s (%s): %s; its JSON Lines stay, retried every %.0fs",
                    partition.name,
                    error.reason,
                    error.detail,
                    self._compaction.interval_s,
                )
        m.lag.set(result.lag_s)

    def _observe_kept(self, sink: str, kept: Kept) -> None:
        self._metrics.disk_bytes[sink].set(kept.size_bytes)
        for reason, files in kept.deleted.items():
            self._metrics.files_deleted[(sink, reason)].inc(files)
        if kept.partitions_deleted:
            log.info(
                "retention: deleted %d %s partitions (%s)",
                kept.partitions_deleted,
                sink,
                ", ".join(f"{n} files {why}" for why, n in kept.deleted.items()),
            )
