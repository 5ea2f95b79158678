"""StorageMetrics: compaction to Parquet and the retention budget (gateway/compaction/)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.errors import COMPACTION_ERROR_REASONS, DELETE_REASONS
from gateway.metrics.gateway import SINKS


class StorageMetrics:
    """Compaction to Parquet and the retention budget (gateway/compaction/)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.lag = Gauge(
            "gateway_compaction_lag_seconds",
            "Age of the oldest partition due for compaction (hour + grace past) and not yet "
            "compacted; 0 when none.",
            registry=r,
        )
        self.partitions = Counter(
            "gateway_compaction_partitions", "Partitions compacted to Parquet.", registry=r
        )
        self.rows = Counter("gateway_compaction_rows", "Readings written to Parquet.", registry=r)
        self.input_bytes = Counter(
            "gateway_compaction_input_bytes",
            "JSON Lines bytes (uncompressed) compacted to Parquet.",
            registry=r,
        )
        self.output_bytes = Counter(
            "gateway_compaction_output_bytes", "Parquet bytes written.", registry=r
        )
        self.ratio = Gauge(
            "gateway_compaction_compression_ratio",
            "JSON Lines bytes per Parquet byte, of the last partition compacted.",
            registry=r,
        )
        self.seconds = Histogram(
            "gateway_compaction_seconds",
            "Time to compact one partition.",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        errors = Counter(
            "gateway_compaction_errors",
            "Partitions that could not be compacted (their JSON Lines stay), by cause.",
            ["reason"],
            registry=r,
        )
        self.errors = {reason: errors.labels(reason) for reason in COMPACTION_ERROR_REASONS}
        disk = Gauge(
            "gateway_disk_bytes",
            "Bytes on disk under the data directory (files) or its dead-letter tree, as of the "
            "last compaction pass.",
            ["sink"],
            registry=r,
        )
        self.disk_bytes = {s: disk.labels(s) for s in SINKS}
        budget = Gauge(
            "gateway_retention_max_bytes",
            "The configured size budget (retention.max_bytes, dead_letter_max_bytes); 0 = none.",
            ["sink"],
            registry=r,
        )
        self.max_bytes = {s: budget.labels(s) for s in SINKS}
        deleted = Counter(
            "gateway_files_deleted",
            "Files deleted: JSON Lines compacted to Parquet, or partitions past max_age_s or "
            "max_bytes.",
            ["sink", "reason"],
            registry=r,
        )
        self.files_deleted = {
            (s, reason): deleted.labels(s, reason) for s in SINKS for reason in DELETE_REASONS
        }
