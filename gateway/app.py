"""Gateway: the ONLY module that knows the topology; one TaskGroup, named tasks.

One reading's way, top to bottom:
  MqttSource (socket -> batches of Inbound)  ->  _admit: decode, shard by device
  -> Channel per worker -> Stage (steps, timeout) -> Channel "store" -> FileSink (group commit,
  fsync) -> ack.  Rejections from decode or steps -> Channel "rejects" -> DeadLetterSink -> ack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from gateway._version import __version__
from gateway.channel import Channel
from gateway.config import GatewayConfig
from gateway.decode import make_decoder
from gateway.errors import ConfigError, DecodeError, DrainError
from gateway.http import HttpServer
from gateway.metrics import GatewayMetrics, Registry
from gateway.model import AckCountdown, Envelope, Inbound, Reading, Rejection
from gateway.sensor_values import SensorValues
from gateway.sinks.claim import claim_data_dir
from gateway.sinks.dead_letter import DeadLetterSink
from gateway.sinks.files import FileSink
from gateway.sources.mqtt import MqttSource
from gateway.stage import Stage
from gateway.transforms import Transform, build_transform

log = logging.getLogger(__name__)

# devices_seen is a count, not labels; the set behind it is capped so spoofed ids cannot grow it
# without bound. Past the cap the gauge stops rising (documented in the metrics reference).
MAX_TRACKED_DEVICES = 1_000_000


class Gateway:
    """MQTT in, validated readings durably on disk, acked only after fsync, metrics out."""

    def __init__(
        self,
        config: GatewayConfig,
        registry: Registry | None = None,
        transforms: Sequence[Transform] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry if registry is not None else Registry()
        self.metrics = GatewayMetrics(self.registry, __version__)
        self._transforms = list(transforms) if transforms is not None else _build_steps(config)
        self._decoders = [make_decoder(sub, config.limits) for sub in config.mqtt.subscriptions]
        self._drop_qos0 = config.pipeline.qos0_policy == "drop_oldest"
        self._devices: set[str] = set()
        capacity = config.pipeline.channel_capacity
        self._shards: list[Channel[Envelope[Reading]]] = [
            Channel(capacity) for _ in range(config.pipeline.workers)
        ]
        self._store: Channel[Envelope[Reading]] = Channel(capacity)
        self._rejects: Channel[Envelope[Rejection]] = Channel(capacity)
        m = self.metrics
        m.track_channel(
            "decoded", lambda: sum(len(c) for c in self._shards), capacity * len(self._shards)
        )
        m.track_channel("store", lambda: len(self._store), capacity)
        m.track_channel("rejects", lambda: len(self._rejects), capacity)
        m.devices_seen.set_function(lambda: len(self._devices))
        client_id = config.mqtt.client_id
        # Opt-in: when off, nothing is built and the file sink pays nothing per batch.
        self.sensor_values: SensorValues | None = None
        if config.sensor_values.enabled:
            self.sensor_values = SensorValues(config.sensor_values)
            m.export_sensor_values(self.sensor_values)
        on_durable = self.sensor_values.observe if self.sensor_values is not None else None
        self._files = FileSink(config.files, client_id, m, on_durable)
        self._dead_letter = DeadLetterSink(config.dead_letter, config.files, client_id, m)
        self._source: MqttSource | None = None
        self._http = HttpServer(config.http, self.registry, self.checks)
        self._stop = asyncio.Event()
        self._left_unacked: int | None = None  # set when a drain gives up
        self.started = asyncio.Event()

    # -- what operators see ------------------------------------------------------------------

    def checks(self) -> dict[str, bool]:
        source = self._source
        return {
            "broker_connected": source is not None and source.connected,
            "not_stalled": source is None or not source.stalled,
            "sink_writable": self._files.writable and self._dead_letter.writable,
        }

    @property
    def ready(self) -> bool:
        return all(self.checks().values())

    @property
    def http_url(self) -> str:
        return self._http.url

    def stop(self) -> None:
        """Ask run() to drain and return (safe to call from a signal handler)."""
        self._stop.set()

    # -- the topology ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run source -> stages -> sinks until stopped; a crash in any task stops them all.

        First the data directory is claimed: StartupError when another gateway with our client
        id holds it or it cannot take a file. DrainError when a stop could not drain in time.
        """
        lock = await claim_data_dir(self.config.files, self.config.mqtt.client_id)
        try:
            await self._run_claimed()
        finally:
            lock.release()
        if self._left_unacked is not None:
            raise DrainError(
                f"the drain did not finish within {self.config.shutdown_grace_s:g}s: "
                f"{self._left_unacked} messages left unacked; the broker redelivers them on "
                "the next start"
            )

    async def _run_claimed(self) -> None:
        await self._files.recover()
        await self._dead_letter.recover()
        self._source = MqttSource(self.config.mqtt, self.metrics, self._admit)
        await self._http.start()
        try:
            async with asyncio.TaskGroup() as tg:
                source = tg.create_task(self._source.run(), name="source.mqtt")
                workers = [
                    tg.create_task(self._stage(shard).run(), name=f"stage.steps.{n}")
                    for n, shard in enumerate(self._shards)
                ]
                sinks = [
                    tg.create_task(self._files.run(self._store), name="sink.files"),
                    tg.create_task(self._dead_letter.run(self._rejects), name="sink.dead_letter"),
                ]
                self.started.set()
                await self._stop.wait()
                await self._drain(workers, sinks)
                await self._source.close()
                await source
        finally:
            await self._http.stop()

    def _stage(self, inbox: Channel[Envelope[Reading]]) -> Stage:
        return Stage(
            transforms=self._transforms,
            timeout_s=self.config.pipeline.processing_timeout_s,
            metrics=self.metrics,
            inbox=inbox,
            store=self._store,
            rejects=self._rejects,
        )

    async def _drain(
        self, workers: list[asyncio.Task[None]], sinks: list[asyncio.Task[None]]
    ) -> None:
        """Stop taking messages, let everything taken reach disk (and be acked), seal files."""
        assert self._source is not None
        grace = self.config.shutdown_grace_s
        log.info("stopping: draining (grace %.0fs)", grace)
        try:
            async with asyncio.timeout(grace):
                await self._source.stop_reading()
                for shard in self._shards:
                    shard.close()
                await asyncio.gather(*workers)
                self._store.close()
                self._rejects.close()
                await asyncio.gather(*sinks)
        except TimeoutError:
            # run() raises DrainError once everything is closed: the exit code must say so.
            self._left_unacked = int(
                self.registry.get_sample_value("gateway_unacked_messages") or 0
            )
            for task in (*workers, *sinks):
                task.cancel()
        else:
            log.info("drained: everything received is stored and acked")

    async def _admit(self, batch: list[Inbound]) -> None:
        """Decode a batch from the source and route each reading to its device's worker."""
        m = self.metrics
        received_at = time.time()
        shards = self._shards
        n_shards = len(shards)
        routed: list[list[Envelope[Reading]]] = [[] for _ in range(n_shards)]
        droppable: list[list[Envelope[Reading]]] = [[] for _ in range(n_shards)]
        rejects: list[Envelope[Rejection]] = []
        devices = self._devices
        items = 0
        for msg in batch:
            try:
                readings = self._decoders[msg.subscription](msg.topic, msg.payload, received_at)
            except DecodeError as exc:
                rejection = Rejection(msg.topic, msg.payload, exc.reason, exc.detail, received_at)
                rejects.append(Envelope(rejection, msg.topic, msg.payload, msg.ack))
                items += 1
                continue
            ack = msg.ack if len(readings) == 1 else AckCountdown(msg.ack, len(readings)).settle
            # Under drop_oldest, QoS 0 readings never wait: they may be dropped instead.
            lanes = droppable if (msg.qos == 0 and self._drop_qos0) else routed
            for reading in readings:
                device = reading.device_id
                if len(devices) < MAX_TRACKED_DEVICES:
                    devices.add(device)
                # One worker per device keeps each device's readings in order.
                lanes[hash(device) % n_shards].append(
                    Envelope(reading, msg.topic, msg.payload, ack, msg.qos == 0)
                )
            items += len(readings)
        m.readings_received.inc(items)
        m.in_flight.inc(items)
        if rejects:
            await self._rejects.put_many(rejects)
        for shard, lane, spare in zip(shards, routed, droppable, strict=True):
            if spare:
                for victim in shard.put_dropping(spare, _is_droppable):
                    victim.ack()
                    m.dropped["queue_full"].inc()
                    m.in_flight.dec()
            if lane:
                await shard.put_many(lane)


def _build_steps(config: GatewayConfig) -> list[Transform]:
    steps = []
    for index, step in enumerate(config.steps):
        try:
            steps.append(build_transform(step))
        except ValueError as exc:
            raise ConfigError(f"steps.{index}: {exc}") from exc
    return steps


def _is_droppable(envelope: Envelope[Reading]) -> bool:
    return envelope.droppable
