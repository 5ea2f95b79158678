"""GatewayMetrics: every metric of one gateway, built on a registry passed in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from gateway.errors import (
    CONNECTION_FAILURE_REASONS,
    DROP_REASONS,
    MQTT_PROTOCOLS,
    REJECT_REASONS,
    WRITE_ERROR_REASONS,
)
from gateway.metrics.collectors import LeftOutCollector, SensorValuesCollector
from gateway.metrics.histogram import LoopHistogram
from gateway.sensor_values import SensorValues

if TYPE_CHECKING:
    from gateway.channel import Channel

# Fine below 25 ms, where the latency target (p99 <= 10 ms) lives; coarse up to a minute for
# device clocks that are off.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip
FAST_BUCKETS = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1, 0.5, 1)
SINKS = ("files", "dead_letter")
CHANNELS = ("decoded", "store", "rejects")


class GatewayMetrics:
    """All of one gateway's metrics. Labelled children are bound once, here, off the hot path."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self._depths: dict[str, Callable[[], float]] = {}
        r = registry
        Info("gateway_build", "Gateway build.", registry=r).info({"version": version})
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: a
        # fresh registry has none of them (only prometheus_client's global one does).
        ProcessCollector(registry=r)

        self.messages_received = Counter(
            "gateway_messages_received", "MQTT messages received.", registry=r
        )
        self.readings_received = Counter(
            "gateway_readings_received",
            "Items entering the pipeline: decoded readings, plus undecodable messages (one each).",
            registry=r,
        )
        self.readings_written = Counter(
            "gateway_readings_written", "Readings durably written to data files.", registry=r
        )
        rejected = Counter(
            "gateway_readings_rejected",
            "Readings (or undecodable messages) durably dead-lettered, by reason.",
            ["reason"],
            registry=r,
        )
        self.rejected = {reason: rejected.labels(reason) for reason in REJECT_REASONS}
        dropped = Counter(
            "gateway_readings_dropped",
            "Readings deliberately not stored (and acked), by reason.",
            ["reason"],
            registry=r,
        )
        self.dropped = {reason: dropped.labels(reason) for reason in DROP_REASONS}
        self.dedupe_identities = Gauge(
            "gateway_dedupe_identities",
            "Reading identities (device_id, seq, ts) the dedupe window remembers.",
            registry=r,
        )
        self.dedupe_seed_seconds = Gauge(
            "gateway_dedupe_seed_seconds",
            "Time taken at start to seed the dedupe window from the files.",
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_readings_in_flight",
            "Items received but not yet written, rejected or dropped.",
            registry=r,
        )
        self.unacked = Gauge(
            "gateway_unacked_messages", "QoS 1 messages received and not yet acked.", registry=r
        )
        self._channel_depth = Gauge(
            "gateway_channel_depth", "Items waiting in a channel.", ["channel"], registry=r
        )
        self._channel_capacity = Gauge(
            "gateway_channel_capacity", "Capacity of a channel.", ["channel"], registry=r
        )
        self._channel_bytes = Gauge(
            "gateway_channel_bytes",
            "Message bytes (topics and payloads) the items waiting in a channel keep alive.",
            ["channel"],
            registry=r,
        )
        self._channel_max_bytes = Gauge(
            "gateway_channel_max_bytes",
            "Bytes a channel holds before it pushes back (pipeline.channel_max_bytes).",
            ["channel"],
            registry=r,
        )
        self.processing_seconds = LoopHistogram(
            "gateway_processing_seconds",
            "Time one reading spends in the processing steps.",
            FAST_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = LoopHistogram(
            "gateway_end_to_end_latency_seconds",
            "Device timestamp to durable on disk (includes device clock offset).",
            LATENCY_BUCKETS,
            registry=r,
        )
        write_seconds = Histogram(
            "gateway_file_write_seconds",
            "One group commit: write, flush and (per policy) fsync.",
            ["sink"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.write_seconds = {s: write_seconds.labels(s) for s in SINKS}
        bytes_written = Counter(
            "gateway_bytes_written", "Bytes written to segments.", ["sink"], registry=r
        )
        self.bytes_written = {s: bytes_written.labels(s) for s in SINKS}
        sealed = Counter(
            "gateway_segments_sealed", "Segments closed and renamed.", ["sink"], registry=r
        )
        self.segments_sealed = {s: sealed.labels(s) for s in SINKS}
        write_errors = Counter(
            "gateway_write_errors",
            "Failed writes or fsyncs (each is retried), by sink and cause.",
            ["sink", "reason"],
            registry=r,
        )
        self.write_errors = {
            (s, reason): write_errors.labels(s, reason)
            for s in SINKS
            for reason in WRITE_ERROR_REASONS
        }
        torn = Counter(
            "gateway_torn_lines_recovered",
            "Partial last lines cut from segments left open by a crash.",
            ["sink"],
            registry=r,
        )
        self.torn_lines = {s: torn.labels(s) for s in SINKS}
        self._sink_writable = Gauge(
            "gateway_sink_writable", "1 when the sink's last write succeeded.", ["sink"], registry=r
        )
        self.sink_writable = {s: self._sink_writable.labels(s) for s in SINKS}
        for child in self.sink_writable.values():
            child.set(1)

        self.mqtt_connected = Gauge(
            "gateway_mqtt_connected", "1 while connected and subscribed.", registry=r
        )
        self.mqtt_reconnects = Counter(
            "gateway_mqtt_reconnects", "Connection attempts after the first.", registry=r
        )
        failures = Counter(
            "gateway_mqtt_connection_failures",
            "Failed connection attempts and sessions ended by the broker or the network, by cause.",
            ["reason"],
            registry=r,
        )
        self.mqtt_connection_failures = {
            reason: failures.labels(reason) for reason in CONNECTION_FAILURE_REASONS
        }
        protocol = Gauge(
            "gateway_mqtt_protocol",
            "1 for the MQTT protocol version of the current (or last) connection.",
            ["version"],
            registry=r,
        )
        self.mqtt_protocol = {version: protocol.labels(version) for version in MQTT_PROTOCOLS}
        self.mqtt_sessions_lost = Counter(
            "gateway_mqtt_sessions_lost",
            "Reconnects where the broker no longer had our session (messages may be lost).",
            registry=r,
        )
        self.mqtt_redeliveries = Counter(
            "gateway_mqtt_redeliveries",
            "Messages the broker marked as redelivered (DUP).",
            registry=r,
        )
        self.mqtt_stalls = Counter(
            "gateway_mqtt_stalls",
            "Times a subscription went silent for longer than mqtt.stall_timeout_s.",
            registry=r,
        )
        self.mqtt_stalled = Gauge(
            "gateway_mqtt_stalled",
            "1 while a subscription has been silent for longer than mqtt.stall_timeout_s.",
            registry=r,
        )
        self._subscription_silence = Gauge(
            "gateway_subscription_silence_seconds",
            "Seconds since a message last arrived on this subscription (since the gateway first "
            "subscribed when none has), by configured name or index.",
            ["subscription"],
            registry=r,
        )
        reloads = Counter(
            "gateway_config_reloads",
            "Config reloads (SIGHUP, gateway reload), by result: applied, unchanged, refused "
            "(the running config stays), failed (applied; the broker refused part of it).",
            ["result"],
            registry=r,
        )
        self.config_reloads = {
            result: reloads.labels(result)
            for result in ("applied", "unchanged", "refused", "failed")
        }
        self._config_info = Info("gateway_config", "The loaded config's fingerprint.", registry=r)
        self.devices_seen = Gauge(
            "gateway_devices_seen", "Distinct device ids seen since start.", registry=r
        )

    def track_channel(self, name: str, channels: Sequence[Channel[Any]]) -> None:
        """Read the depth of a channel (or of a channel per worker, summed) at scrape time."""

        def depth() -> float:
            return sum(len(c) for c in channels)

        self._depths[name] = depth
        self._channel_depth.labels(name).set_function(depth)
        self._channel_capacity.labels(name).set(sum(c.capacity for c in channels))
        self._channel_bytes.labels(name).set_function(lambda: sum(c.nbytes for c in channels))
        self._channel_max_bytes.labels(name).set(sum(c.max_bytes or 0 for c in channels))

    def track_subscription(self, label: str, age: Callable[[], float]) -> None:
        """Read a subscription's silence (seconds since its last message) at scrape time."""
        self._subscription_silence.labels(label).set_function(age)

    def untrack_subscription(self, label: str) -> None:
        """A subscription a reload removed: its series goes."""
        with contextlib.suppress(KeyError):
            self._subscription_silence.remove(label)

    def count_left_out(self, left_out: Callable[[], int]) -> None:
        """gateway_mapping_values_left_out_total, read from the decoders at scrape time (they
        count per value; no metric call on the hot path)."""
        self.registry.register(LeftOutCollector(left_out))

    def export_sensor_values(self, values: SensorValues) -> None:
        """Expose gateway_sensor_value and its bookkeeping, read from `values` at scrape time."""
        self.registry.register(SensorValuesCollector(values))

    def config_loaded(self, fingerprint: str) -> None:
        """gateway_config_info{hash}: which config runs (replaced at each reload)."""
        self._config_info.info({"hash": fingerprint})

    def sample(self, name: str, **labels: str) -> float:
        """The current value of one sample (0 when it does not exist yet), read through the
        registry's public API: for the demo's status line and for tests."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def channel_depths(self) -> dict[str, float]:
        return {name: depth() for name, depth in self._depths.items()}

    def latency_quantile(self, q: float) -> float:
        """An upper bound of the q-quantile of end-to-end latency, from the histogram buckets."""
        buckets = [
            (float(s.labels["le"]), s.value)
            for metric in self.end_to_end_latency.collect()
            for s in metric.samples
            if s.name.endswith("_bucket")
        ]
        total = buckets[-1][1] if buckets else 0.0
        if not total:
            return 0.0
        for bound, count in buckets:
            if count >= q * total:
                return bound
        return buckets[-1][0]
