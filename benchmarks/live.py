"""Time a consumer under live load: it is connected and subscribed first, then N prebuilt
readings are published flat out; from the first publish until it has all N (the gateway:
durably, i.e. written or dead-lettered and fsynced)."""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import proc_stats, reference
from benchmarks.broker import HOST, MOSQUITTO_SUB, BenchBroker
from benchmarks.drain import Drain, finish_gateways, timeout_for, watch_stored
from benchmarks.gateway_proc import BenchGateway, GatewaySetup
from benchmarks.load import BLAST_PROCESSES, DEVICES, Published, finish_blast, start_blast
from benchmarks.procs import Children, wait_or_stop
from simulators.fleet import split
from simulators.spec import DEFAULT_TEMPLATE, RunSpec

CONNECT_TIMEOUT_S = 10.0


@dataclass
class Live:
    """One consumer's run under one live load."""

    result: Drain  # elapsed_s: from the first publish until the consumer had all
    published: Published | None  # the publisher's own figures (None: it failed)
    broker_cpu_share: float = math.nan  # the broker's CPU s per s of elapsed_s

    @property
    def ok(self) -> bool:
        return self.result.ok  # a failed publisher is an error of the result

    def as_dict(self) -> dict[str, Any]:
        publisher = self.published
        return {
            **self.result.as_dict(),
            "publisher_rate": publisher.rate if publisher else math.nan,
            "publisher_s": publisher.publish_s if publisher else math.nan,
            "broker_cpu_share": self.broker_cpu_share,
        }


def first_publish_topics() -> list[str]:
    """Topics of the first device of each publisher process: the raw transport splits the
    devices over its processes and sends each process's first device first (on its first
    connection, written before the others)."""
    spec = RunSpec()
    return [
        DEFAULT_TEMPLATE.format(site="+", device_id=spec.device_id_pattern.format(n=first))
        for first, _ in split(DEVICES, BLAST_PROCESSES)
    ]


class FirstPublish:
    """A mosquitto_sub on those topics that exits at its first message and prints when it got it
    (epoch s): when publishing began, plus one hop through the broker (well under 1 ms)."""

    CLIENT_ID = "bench-first-publish"

    def __init__(self, children: Children, broker: BenchBroker, workdir: Path) -> None:
        self._children = children
        topics = first_publish_topics()
        # Subscribed before anything is published, whenever the process gets to connect.
        for topic in topics:
            broker.create_session(self.CLIENT_ID, topic, 0, "3.1.1")
        self._out = workdir / "first-publish.txt"
        args = [MOSQUITTO_SUB, "-h", HOST, "-p", str(broker.port), "-q", "0"]
        for topic in topics:
            args += ["-t", topic]
        args += ["-c", "-i", self.CLIENT_ID, "-C", "1", "-F", "%U"]
        with self._out.open("wb") as out:
            self._proc = children.spawn(args, stdout=out)
        wait_connected(self._proc, broker.port)

    def at(self, timeout_s: float) -> float | None:
        """Epoch s of the first publish; None when nothing came."""
        if self._children.wait(self._proc, timeout_s) is None:
            self._children.stop(self._proc)
        text = self._out.read_text(encoding="utf-8", errors="replace").strip()
        try:
            return float(text.split()[0])
        except (IndexError, ValueError):
            return None


def wait_connected(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not proc_stats.connected_to(proc.pid, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not connect to port {port}")
        time.sleep(0.01)


def epoch_of(monotonic_s: float) -> float:
    return monotonic_s + (time.time() - time.monotonic())


def live_reference(
    children: Children, broker: BenchBroker, *, qos: int, total: int, workdir: Path
) -> Live:
    """mosquitto_sub -C N (its session made first), then the load; done when it exits."""
    client_id = f"bench-live-ref-q{qos}"
    broker.create_session(client_id, "sensors/#", qos, "3.1.1")
    out_path = workdir / f"{client_id}.out"
    with out_path.open("wb") as out:
        proc = children.spawn(reference.drain_command(broker, client_id, qos, total), stdout=out)
    wait_connected(proc, broker.port)
    first = FirstPublish(children, broker, workdir)
    broker_cpu = proc_stats.cpu_seconds(broker.pid)
    sim, manifest, log = start_blast(
        children, broker, qos=qos, total=total, workdir=workdir, name=f"live-qos{qos}"
    )
    ended, error = wait_or_stop(children, proc, timeout_for(total))
    broker_cpu = proc_stats.cpu_seconds(broker.pid) - broker_cpu
    finished, cpu_s, peak = ended
    published, first_at, problem = _publisher(
        children, sim, log=log, manifest=manifest, total=total, first=first
    )
    delivered = reference.count_lines(out_path)
    out_path.unlink()
    elapsed = epoch_of(finished) - first_at if first_at else math.nan
    result = Drain("mosquitto_sub", total, delivered, elapsed, cpu_s, peak, error=error or problem)
    return Live(result, published, broker_cpu / elapsed if elapsed > 0 else math.nan)


def live_gateway(
    children: Children, broker: BenchBroker, *, qos: int, total: int, workdir: Path
) -> Live:
    """The gateway (fsync = always, a check step) ready first, then the load; done when its
    written + rejected counters reach N; then stopped and its files audited."""
    setup = GatewaySetup(client_id=f"bench-live-gw-q{qos}", qos=qos)
    gateway = BenchGateway(children, broker, setup, workdir / setup.client_id)
    spawned = time.monotonic()
    gateway.start()
    gateway.wait_ready()
    startup_s = time.monotonic() - spawned
    first = FirstPublish(children, broker, workdir)
    cpu_from = gateway.cpu_seconds()
    broker_cpu = proc_stats.cpu_seconds(broker.pid)
    sim, manifest, log = start_blast(
        children, broker, qos=qos, total=total, workdir=workdir, name=f"live-qos{qos}"
    )
    watch = watch_stored([gateway], total, time.monotonic(), cpu_from=cpu_from)
    broker_cpu = proc_stats.cpu_seconds(broker.pid) - broker_cpu
    published, first_at, problem = _publisher(
        children, sim, log=log, manifest=manifest, total=total, first=first
    )
    watch.error = watch.error or problem
    elapsed = epoch_of(watch.finished) - first_at if first_at else math.nan
    result = finish_gateways(
        [gateway],
        watch,
        label=setup.label,
        expected=total,
        manifest=manifest,
        elapsed_s=elapsed,
    )
    result.startup_s = startup_s
    return Live(result, published, broker_cpu / elapsed if elapsed > 0 else math.nan)


def _publisher(
    children: Children,
    sim: subprocess.Popen[bytes],
    *,
    log: Path,
    manifest: Path,
    total: int,
    first: FirstPublish,
) -> tuple[Published | None, float | None, str | None]:
    """The publisher's figures and when it first published, or what went wrong."""
    try:
        published: Published | None = finish_blast(children, sim, log, manifest, total)
    except RuntimeError as exc:
        published = None
        problem: str | None = str(exc)
    else:
        problem = None
    first_at = first.at(timeout_s=5)
    if first_at is None:
        problem = problem or "no first publish seen"
    return published, first_at, problem
