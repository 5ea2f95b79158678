"""`gateway run --processes N`: N worker gateways on a shared subscription, supervised.

Each worker is a whole gateway in its own process (its own client id, persistent session,
segment names and metrics port) subscribed through `$share/<client-id>/<filter>`, so the broker
splits the messages between them — the same mechanism that spreads load over machines on a
clustered broker. The supervisor restarts a worker that dies, forwards SIGTERM (each worker
drains), and serves one /metrics that sums the workers', plus /healthz and /readyz.

Workers never outlive it: each asks for SIGUSR2 when the supervisor dies, however it dies (the
parent-death signal), and then drains as on SIGTERM. Not SIGTERM itself: the kernel sends the
signal again each time a thread of the dying supervisor ends, and a second SIGTERM means "stop
now, without draining"; not SIGHUP, which reloads. SIGHUP to the supervisor (or POST /reload)
reads the config again, checks it once and has every worker apply it. The supervisor holds the data
directory's lock for the base client id, as a gateway with that id would, and before it starts
a worker it checks that no process (a worker of an earlier run, still draining) holds that
worker's client id: it says so and waits, rather than start a twin that would fight it for the
broker session and the segment files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

from gateway.commands import post_reload, post_seal
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.hangups import PARENT_DEATH_SIGNAL
from gateway.http import HttpServer
from gateway.metrics import MergedWorkers, Registry, SupervisorMetrics
from gateway.parent_death import die_with_parent
from gateway.ports import free_port
from gateway.reload import config_hash, plan_reload
from gateway.sinks.claim import claim_data_dir, lock_holder

log = logging.getLogger(__name__)

POLL_S = 1.0
# A worker that keeps dying is restarted at most this often (doubling from RESTART_MIN_S).
RESTART_MIN_S, RESTART_MAX_S = 0.5, 30.0
# A worker that lived this long before dying is restarted at once again.
HEALTHY_AFTER_S = 60.0
# A stopping worker has shutdown_grace_s to drain, and this much more to seal and disconnect.
STOP_MARGIN_S = 15.0

# (the worker's config, its name, its index) -> never returns (the worker process's life).
WorkerMain = Callable[[GatewayConfig, str, int], None]


def worker_config(config: GatewayConfig, index: int, http_port: int | None = None) -> GatewayConfig:
    """Worker `index`'s config: its own client id and metrics port (`http_port`, or a free
    one), the filters shared."""
    base = config.mqtt.client_id
    subs = tuple(
        s.model_copy(
            update={
                "filter": s.effective_filter
                if s.effective_filter.startswith("$share/")
                else f"$share/{base}/{s.effective_filter}",
                # Kept as it was: an unset template may follow from the filter.
                "template": s.effective_template,
            }
        )
        for s in config.mqtt.subscriptions
    )
    mqtt = config.mqtt.model_copy(update={"client_id": f"{base}-w{index}", "subscriptions": subs})
    port = http_port if http_port is not None else free_port()
    # Reloads reach a worker from its supervisor, over this loopback port.
    http = config.http.model_copy(update={"host": "127.0.0.1", "port": port, "reload": True})
    # One worker compacts and measures the shared data directory: the merged /metrics sums the
    # workers' gauges, so the others export zeros instead of the same sizes again.
    compaction = config.compaction.model_copy(
        update={"enabled": config.compaction.enabled and index == 0}
    )
    return config.model_copy(update={"mqtt": mqtt, "http": http, "compaction": compaction})


@dataclass
class _Worker:
    index: int
    config: GatewayConfig
    process: BaseProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    ready: bool = False
    url: str = field(default="")
    refused: str | None = None  # why the last reload was refused or failed in this worker


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


class Supervisor:
    """Starts, watches and stops the workers; serves their merged metrics."""

    def __init__(
        self,
        config: GatewayConfig,
        processes: int,
        worker_main: WorkerMain,
        load: Callable[[], GatewayConfig] | None = None,
    ) -> None:
        """`load` reads the config again for a reload (SIGHUP, POST /reload)."""
        self._config = config
        self._config_hash = config_hash(config)
        self._main = worker_main
        self._load = load
        self._reloads: set[asyncio.Task[object]] = set()
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(k, worker_config(config, k)) for k in range(processes)]
        self._merged = MergedWorkers()
        self.registry = Registry()
        self.registry.register(self._merged)
        self._metrics = SupervisorMetrics(self.registry, processes)
        self._http = HttpServer(
            config.http,
            self.registry,
            self.checks,
            before_metrics=self._refresh_metrics,
            seal=self._seal,
            reload=self.reload,
            details=self._about,
        )
        self._stop = asyncio.Event()

    def checks(self) -> dict[str, bool]:
        checks = {f"worker_{w.index}_ready": w.ready for w in self._workers}
        # A worker that refused the last reload runs another config than its siblings.
        checks.update({f"worker_{w.index}_config": w.refused is None for w in self._workers})
        return checks

    def _running(self) -> list[_Worker]:
        """The workers up now (not waiting to be restarted)."""
        return [w for w in self._workers if w.restart_at is None and w.process is not None]

    def _about(self) -> dict[str, object]:
        refused = {f"worker_{w.index}": w.refused for w in self._workers if w.refused}
        return {"config_hash": self._config_hash, "reload_refused": refused}

    # -- reloads -------------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: reload in the background (the signal handler must not wait)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> dict[str, object]:
        """Read the config again, check it once, and have every running worker apply it (each
        reads the same file and flags itself, as its own worker). A worker that refuses is
        named in /readyz until a later reload succeeds there."""
        if self._load is None:
            return {"result": "refused", "message": "nothing to reload from"}
        try:
            new = self._load()
        except ConfigError as exc:
            return self._reloaded("refused", "; ".join(exc.problems))
        plan = plan_reload(self._config, new)
        if plan.restart:
            why = "; ".join(f"{path}: {reason}" for path, reason in plan.restart.items())
            return self._reloaded("refused", f"needs a restart ({why})")
        running = self._running()
        answers = await asyncio.gather(
            *(asyncio.to_thread(post_reload, w.url) for w in running), return_exceptions=True
        )
        results: dict[str, object] = {}
        for worker, answer in zip(running, answers, strict=True):
            if isinstance(answer, BaseException):
                worker.refused = f"no answer: {answer}"
            else:
                _, outcome = answer
                ok = outcome.get("result") in ("applied", "unchanged")
                worker.refused = None if ok else str(outcome.get("message"))
            results[f"worker_{worker.index}"] = worker.refused or "ok"
        self._config = new  # restarted workers start with it
        self._config_hash = config_hash(new)
        failed = [w for w in running if w.refused]
        if failed:
            message = "; ".join(f"worker {w.index}: {w.refused}" for w in failed)
            return self._reloaded("failed", message, results)
        return self._reloaded("applied", "every worker applied it", results)

    def _reloaded(
        self, result: str, message: str, workers: dict[str, object] | None = None
    ) -> dict[str, object]:
        level = logging.INFO if result == "applied" else logging.WARNING
        log.log(level, "reload %s: %s", result, message)
        return {
            "result": result,
            "message": message,
            "workers": workers or {},
            "config_hash": self._config_hash,
        }

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Until stopped: keep every worker running; then stop them all. 0 if all drained.

        StartupError when the data directory is in use or not writable, or the metrics
        address cannot be bound."""
        lock = await claim_data_dir(self._config.files, self._config.mqtt.client_id)
        try:
            await self._http.start()
            try:
                return await self._supervise()
            finally:
                await self._http.stop()
        finally:
            lock.release()

    async def _supervise(self) -> int:
        if not await self._earlier_workers_gone():
            return 1
        for worker in self._workers:
            self._start(worker)
        try:
            while not self._stop.is_set():
                await self._wait_for_stop(POLL_S)
                await self._watch()
        finally:
            code = await self._stop_all()
        return code

    async def _wait_for_stop(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._stop.wait()

    async def _earlier_workers_gone(self) -> bool:
        """True once no process holds any of our workers' client ids in the data directory.

        A holder is a worker of an earlier run: after its supervisor was killed it drains
        (within shutdown_grace_s) and exits, so wait that long, saying so; False if it is still
        there then (or we are told to stop meanwhile)."""
        data_dir = self._config.files.data_dir
        deadline = time.monotonic() + self._config.shutdown_grace_s + STOP_MARGIN_S
        told: set[int] = set()
        while True:
            holders = {
                w.config.mqtt.client_id: pid
                for w in self._workers
                if (pid := lock_holder(data_dir, w.config.mqtt.client_id)) is not None
            }
            if not holders:
                return True
            for client_id, pid in holders.items():
                if pid not in told:
                    told.add(pid)
                    log.warning(
                        "client id %s is still in use in %s by pid %s, a worker of an earlier "
                        "run: waiting for it to stop before starting ours",
                        client_id, data_dir, pid or "unknown",
                    )  # fmt: skip
            if time.monotonic() >= deadline or self._stop.is_set():
                log.error(
                    "not starting: workers of an earlier run still hold %s in %s (pids %s); "
                    "stop them, then start again",
                    ", ".join(holders), data_dir, ", ".join(map(str, holders.values())),
                )  # fmt: skip
                return False
            await self._wait_for_stop(0.2)

    def _start(self, worker: _Worker) -> None:
        if worker.process is not None:  # a restart: a new port, in case the old one is taken
            worker.config = worker_config(self._config, worker.index)
            worker.refused = None
        http = worker.config.http
        worker.url = f"http://{http.host}:{http.port}"
        # Started from the event loop's (main) thread: the parent-death signal follows the
        # thread that started the child, and this one lives as long as the supervisor.
        worker.process = self._context.Process(
            target=_worker_main,
            args=(self._main, worker.config, f"w{worker.index}", worker.index, os.getpid()),
            name=f"gateway-w{worker.index}",
        )
        worker.process.start()
        worker.started_at = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %s, %s)", worker.index, worker.process.pid, worker.url)

    async def _watch(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            proc = worker.process
            if proc is not None and proc.exitcode is not None and worker.restart_at is None:
                lived = now - worker.started_at
                worker.failures = 0 if lived > HEALTHY_AFTER_S else worker.failures + 1
                delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** max(0, worker.failures - 1))
                worker.restart_at = now + delay
                worker.ready = False
                self._merged.update(str(worker.index), None)
                log.error(
                    "worker %d exited with %s after %.0fs; restarting in %.1fs",
                    worker.index, proc.exitcode, lived, delay,
                )  # fmt: skip
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    self._metrics.restarts.inc()
                    self._start(worker)
                continue
            await self._fetch_metrics(worker)
            ready, _ = await asyncio.to_thread(_get, f"{worker.url}/readyz")
            worker.ready = ready == 200
        self._metrics.running.set(
            sum(1 for w in self._workers if w.process is not None and w.process.is_alive())
        )

    async def _fetch_metrics(self, worker: _Worker) -> None:
        status, text = await asyncio.to_thread(_get, f"{worker.url}/metrics")
        if status == 200 and worker.restart_at is None:
            self._merged.update(str(worker.index), text)

    async def _refresh_metrics(self) -> None:
        """Before a scrape of the merged metrics: every running worker's, fetched now (not up
        to POLL_S old); a worker that does not answer keeps its last text."""
        running = self._running()
        await asyncio.gather(*(self._fetch_metrics(w) for w in running))

    async def _seal(self) -> dict[str, int]:
        """POST /seal: every running worker seals its open segments; the counts summed."""
        running = self._running()
        answers = await asyncio.gather(*(asyncio.to_thread(post_seal, w.url) for w in running))
        total: dict[str, int] = {}
        for answer in answers:
            for sink, count in answer.items():
                total[sink] = total.get(sink, 0) + count
        return total

    async def _stop_all(self) -> int:
        log.info("stopping %d workers (each drains)", len(self._workers))
        for worker in self._workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()  # SIGTERM: the worker drains and seals
        grace = self._config.shutdown_grace_s + STOP_MARGIN_S
        codes = []
        for worker in self._workers:
            proc = worker.process
            if proc is None:
                continue
            await asyncio.to_thread(proc.join, grace)
            if proc.exitcode is None:
                log.error("worker %d did not stop within %.0fs: killed", worker.index, grace)
                proc.kill()
                await asyncio.to_thread(proc.join, 5)
            codes.append(proc.exitcode)
        return 0 if all(code == 0 for code in codes) else 1


def _worker_main(
    main: WorkerMain, config: GatewayConfig, name: str, index: int, supervisor_pid: int
) -> None:
    """A worker's first steps: PARENT_DEATH_SIGNAL when the supervisor dies, then the gateway
    (which drains on it, however often it comes: see cli._serve)."""
    if not die_with_parent(supervisor_pid, PARENT_DEATH_SIGNAL):
        log.warning("worker %s: no parent-death signal here; it may outlive its supervisor", name)
    main(config, name, index)


def detach_from_terminal() -> None:
    """In a worker: leave the terminal's process group, so Ctrl-C reaches only the supervisor
    (which then stops each worker once) — a second signal would make a worker skip its drain."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
