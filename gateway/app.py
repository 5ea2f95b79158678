"""Gateway: the ONLY module that knows the topology; one TaskGroup, named tasks.

One reading's way, top to bottom:
  MqttSource (socket -> bursts)  ->  Admission: decode, shard by device
  -> Channel per worker -> Stage (steps over each batch, deadline) -> Channel "store" -> FileSink
  (group commit, fsync) -> ack.  Rejections from decode or steps -> Channel "rejects" ->
  DeadLetterSink -> ack.  A burst's PUBACKs leave once every part of it is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from gateway._version import __version__
from gateway.admit import Admission
from gateway.channel import Channel
from gateway.compaction.maintenance import Maintenance
from gateway.config import DropDuplicatesStep, GatewayConfig
from gateway.errors import ConfigError, DrainError
from gateway.http import HttpServer
from gateway.metrics import GatewayMetrics, Registry, StorageMetrics
from gateway.model import Reading, Rejection
from gateway.sensor_values import SensorValues
from gateway.sinks.claim import claim_data_dir
from gateway.sinks.dead_letter import DeadLetterSink
from gateway.sinks.files import FileSink
from gateway.sources.session import MqttSource
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
        self._devices: set[str] = set()
        capacity = config.pipeline.channel_capacity
        self._shards: list[Channel[Reading]] = [
            Channel(capacity) for _ in range(config.pipeline.workers)
        ]
        self._store: Channel[Reading] = Channel(capacity)
        self._rejects: Channel[Rejection] = Channel(capacity)
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
        self._files = FileSink(config.files, client_id, m, on_durable, config.dedupe)
        self._dead_letter = DeadLetterSink(config.dead_letter, config.files, client_id, m)
        self._source: MqttSource | None = None
        self._http = HttpServer(config.http, self.registry, self.checks, seal=self.seal)
        self.storage = StorageMetrics(self.registry)
        self._maintenance: Maintenance | None = None
        if config.compaction.enabled:
            self._maintenance = Maintenance(
                config.files.data_dir,
                config.compaction,
                config.retention,
                self.storage,
                config.logging,
            )
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

    async def wait_connected(self) -> None:
        """Return once run() has started and the source is connected and subscribed."""
        await self.started.wait()
        assert self._source is not None
        await self._source.subscribed.wait()

    def stop(self) -> None:
        """Ask run() to drain and return (safe to call from a signal handler)."""
        self._stop.set()

    async def seal(self) -> dict[str, int]:
        """Seal every open segment now (POST /seal, `gateway seal`); how many, per sink."""
        files, dead_letter = await asyncio.gather(
            self._files.seal_now(), self._dead_letter.seal_now()
        )
        return {"files": files, "dead_letter": dead_letter}

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
        admit = Admission(
            config=self.config,
            metrics=self.metrics,
            shards=self._shards,
            rejects=self._rejects,
            devices=self._devices,
            max_devices=MAX_TRACKED_DEVICES,
        )
        self._source = MqttSource(self.config.mqtt, self.metrics, admit)
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
                upkeep = None
                if self._maintenance is not None:
                    upkeep = tg.create_task(self._maintenance.run(), name="files.maintenance")
                self.started.set()
                await self._stop.wait()
                await self._drain(workers, sinks)
                await self._source.close()
                await source
                if upkeep is not None:
                    upkeep.cancel()
        finally:
            await self._http.stop()

    def _stage(self, inbox: Channel[Reading]) -> Stage:
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


def _build_steps(config: GatewayConfig) -> list[Transform]:
    steps = []
    for index, step in enumerate(config.steps):
        if isinstance(step, DropDuplicatesStep):
            log.warning(
                "steps.%d: drop_duplicates does nothing now: the file sink drops repeats by "
                "(device_id, seq, ts) ([dedupe], on by default); remove the step",
                index,
            )
            continue
        try:
            steps.append(build_transform(step))
        except ValueError as exc:
            raise ConfigError(f"steps.{index}: {exc}") from exc
    return steps
