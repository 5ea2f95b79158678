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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway._version import __version__
from gateway.admit import Admission
from gateway.channel import Channel
from gateway.compaction.maintenance import Maintenance
from gateway.config import GatewayConfig, LoggingConfig
from gateway.distinct import DistinctCount
from gateway.errors import BrokerError, ConfigError, DrainError, StartupError
from gateway.http import HttpServer
from gateway.metrics import GatewayMetrics, Registry, StorageMetrics
from gateway.model import Reading, Rejection
from gateway.reload import ReloadPlan, config_hash, plan_reload
from gateway.sensor_values import SensorValues
from gateway.sinks.claim import DataDirLock, claim_data_dir
from gateway.sinks.dead_letter import DeadLetterSink
from gateway.sinks.files import FileSink
from gateway.sinks.subscriptions import remember_subscriptions, remembered_subscriptions
from gateway.sources.session import MqttSource
from gateway.stage import Stage
from gateway.transforms import Transform, build_steps

log = logging.getLogger(__name__)


ReloadResult = Literal["applied", "unchanged", "refused", "failed"]


@dataclass
class ReloadOutcome:
    """What a reload did: `applied` (or `unchanged`), `refused` (nothing changed: the running
    config stays), or `failed` (applied, but the broker refused part of it; see message)."""

    result: ReloadResult
    message: str
    changes: list[str] = field(default_factory=list)
    config_hash: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "result": self.result,
            "message": self.message,
            "changes": self.changes,
            "config_hash": self.config_hash,
        }


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
        self._transforms = list(transforms) if transforms is not None else build_steps(config.steps)
        # devices_seen: exact up to 10,000 ids, then a 16 KiB sketch (±0.81%): spoofed ids
        # cannot grow memory (gateway/distinct.py).
        self._devices = DistinctCount()
        capacity = config.pipeline.channel_capacity
        max_bytes = config.pipeline.channel_max_bytes
        self._shards: list[Channel[Reading]] = [
            Channel(capacity, max_bytes) for _ in range(config.pipeline.workers)
        ]
        self._store: Channel[Reading] = Channel(capacity, max_bytes)
        self._rejects: Channel[Rejection] = Channel(capacity, max_bytes)
        m = self.metrics
        m.track_channel("decoded", self._shards)
        m.track_channel("store", [self._store])
        m.track_channel("rejects", [self._rejects])
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
        self._http = HttpServer(
            config.http,
            self.registry,
            self.checks,
            seal=self.seal,
            reload=self._reload_over_http,
            details=self.check_details,
        )
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
        # A reload re-reads the config through these (the CLI sets them: only it reads files).
        self.load_config: Callable[[], GatewayConfig] | None = None
        self.on_logging: Callable[[LoggingConfig], None] | None = None
        self._reloading = asyncio.Lock()
        self._own_steps = transforms is None  # steps built from the config can be rebuilt
        self._admission: Admission | None = None
        self._stages: list[Stage] = []
        self._lock: DataDirLock | None = None
        self.config_hash = config_hash(config)
        m.config_loaded(self.config_hash)

    # -- what operators see ------------------------------------------------------------------

    def checks(self) -> dict[str, bool]:
        source = self._source
        return {
            "broker_connected": source is not None and source.connected,
            "not_stalled": source is None or not source.stalled,
            "sink_writable": self._files.writable and self._dead_letter.writable,
        }

    def check_details(self) -> dict[str, object]:
        """What /readyz says beside the checks: why the broker is not connected, and which
        subscriptions are silent (by name or index, with their configured filter)."""
        source = self._source
        details: dict[str, object] = {"config_hash": self.config_hash}
        if source is None:
            return details
        if not source.connected and source.last_error is not None:
            details["broker_error"] = str(source.last_error)
        silent = source.silent
        if silent:
            details["silent_subscriptions"] = [
                {"subscription": s.subscription, "filter": s.filter, "silent_s": s.silent_s}
                for s in silent
            ]
        return details

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
        self._lock = await claim_data_dir(self.config.files, self.config.mqtt.client_id)
        try:
            await self._run_claimed()
        finally:
            self._lock.release()
        if self._left_unacked is not None:
            raise DrainError(
                f"the drain did not finish within {self.config.shutdown_grace_s:g}s: "
                f"{self._left_unacked} messages left unacked; the broker redelivers them on "
                "the next start"
            )

    async def _run_claimed(self) -> None:
        await self._files.recover()
        await self._dead_letter.recover()
        self._admission = Admission(
            config=self.config,
            metrics=self.metrics,
            shards=self._shards,
            rejects=self._rejects,
            devices=self._devices,
        )
        files = self.config.files
        self._source = MqttSource(
            self.config.mqtt,
            self.metrics,
            self._admission,
            remembered=remembered_subscriptions(files.data_dir, self.config.mqtt.client_id),
            remember=self._remember_subscriptions,
        )
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
        stage = Stage(
            transforms=self._transforms,
            timeout_s=self.config.pipeline.processing_timeout_s,
            metrics=self.metrics,
            inbox=inbox,
            store=self._store,
            rejects=self._rejects,
        )
        self._stages.append(stage)
        return stage

    async def _reload_over_http(self) -> dict[str, object]:
        return (await self.reload()).as_dict()

    async def _remember_subscriptions(self, filters: list[str]) -> None:
        await remember_subscriptions(
            self.config.files.data_dir, self.config.mqtt.client_id, filters
        )

    # -- a reload: the new config applied to the running topology ------------------------------

    async def reload(self, new: GatewayConfig | None = None) -> ReloadOutcome:
        """Apply `new` (or what `load_config` reads now) without a restart: what changed only.

        Invalid, or changing a setting only a restart can change: refused, the running config
        stays. Subscriptions, steps, limits and file settings apply live; broker settings drain
        what is in flight and reconnect (README, Reloading the configuration).
        """
        async with self._reloading:
            outcome = await self._reload(new)
        self.metrics.config_reloads[outcome.result].inc()
        level = logging.WARNING if outcome.result in ("refused", "failed") else logging.INFO
        log.log(level, "reload %s: %s", outcome.result, outcome.message)
        return outcome

    async def _reload(self, new: GatewayConfig | None) -> ReloadOutcome:
        if new is None:
            if self.load_config is None:
                return ReloadOutcome("refused", "nothing to reload from", [], self.config_hash)
            try:
                new = self.load_config()
            except ConfigError as exc:
                return ReloadOutcome("refused", "; ".join(exc.problems), [], self.config_hash)
        plan = plan_reload(self.config, new)
        if plan.restart:
            why = "; ".join(f"{path}: {reason}" for path, reason in plan.restart.items())
            return ReloadOutcome(
                "refused", f"needs a restart ({why})", sorted(plan.restart), self.config_hash
            )
        if plan.empty:
            return ReloadOutcome("unchanged", "nothing changed", [], self.config_hash)
        if not self.started.is_set() or self._source is None or self._admission is None:
            return ReloadOutcome("refused", "still starting", [], self.config_hash)
        try:
            transforms = build_steps(new.steps) if self._own_steps else self._transforms
        except ConfigError as exc:
            return ReloadOutcome("refused", str(exc), [], self.config_hash)
        new_lock = None
        if plan.changed("mqtt.client_id"):
            try:  # the new id must be ours alone before anything changes
                new_lock = await claim_data_dir(new.files, new.mqtt.client_id)
            except StartupError as exc:
                return ReloadOutcome("refused", str(exc), [], self.config_hash)
        old, self.config = self.config, new
        self.config_hash = config_hash(new)
        self.metrics.config_loaded(self.config_hash)
        changes = plan.live + plan.session
        try:
            await self._apply(plan, old, new, transforms, new_lock)
        except (BrokerError, OSError) as exc:
            return ReloadOutcome("failed", f"applied, but {exc}", changes, self.config_hash)
        return ReloadOutcome("applied", ", ".join(changes), changes, self.config_hash)

    async def _apply(
        self,
        plan: ReloadPlan,
        old: GatewayConfig,
        new: GatewayConfig,
        transforms: list[Transform],
        new_lock: DataDirLock | None,
    ) -> None:
        assert self._source is not None
        assert self._admission is not None
        # The pipeline first, so that a new subscription's first message meets its decoder; a
        # removed one keeps its decoder until the broker has confirmed the UNSUBSCRIBE.
        kept = {s.effective_filter for s in new.mqtt.subscriptions}
        removed = [s for s in old.mqtt.subscriptions if s.effective_filter not in kept]
        self._admission.reconfigure(new, also=removed)
        self._transforms = transforms
        for stage in self._stages:
            stage.reconfigure(transforms, new.pipeline.processing_timeout_s)
        self._files.reconfigure(new.files, new.dedupe)
        self._dead_letter.reconfigure(new.dead_letter, new.files)
        if self._maintenance is not None:
            self._maintenance.reconfigure(new.compaction, new.retention, new.logging)
        if self.sensor_values is not None:
            self.sensor_values.max_series = new.sensor_values.max_series
            self.sensor_values.expiry_s = new.sensor_values.expiry_s
        if plan.changed("logging") and self.on_logging is not None:
            self.on_logging(new.logging)
        try:
            if plan.session:
                await self._source.reconnect(
                    new.mqtt,
                    drain_timeout_s=new.shutdown_grace_s,
                    before_connect=self._renamer(new_lock) if new_lock is not None else None,
                )
            elif plan.changed("mqtt.subscriptions"):
                await self._source.resubscribe(new.mqtt)
            else:
                self._source.reconfigure(new.mqtt)
        finally:
            self._admission.reconfigure(new)

    def _renamer(self, new_lock: DataDirLock) -> Callable[[], Awaitable[None]]:
        """Between the old session and the new one of a new client id: seal the old id's
        segments, name new ones after the new id, and hold only its lock."""

        async def rename() -> None:
            client_id = self.config.mqtt.client_id
            await self._files.rename(client_id)
            await self._dead_letter.rename(client_id)
            if self._lock is not None:
                self._lock.release()
            self._lock = new_lock

        return rename

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
