"""Memory: the gateway's RSS under overload (does it push back or buffer?) and with 10,000
devices at 1 Hz.

Overload: two simulator processes publish QoS 1 flat out while the gateway, at a lower CPU
priority (on a small machine it would otherwise keep up with them), stores several times less;
the broker holds the rest (watched through $SYS). RSS is sampled every second; a least-squares
slope over the second half tells growth from a plateau.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.broker import BenchBroker
from benchmarks.gateway_proc import BenchGateway, GatewaySetup
from benchmarks.lab import Lab
from benchmarks.load import DEVICES, Published, finish_sim, sim_command, start_sim
from benchmarks.report import Section, Target, mb, num
from benchmarks.stats import slope
from harness.scrape import stored as durable

SAMPLE_S = 1.0
# Buffering what it cannot store would grow by ~a few hundred bytes per message behind, i.e.
# tens of MB a minute at these rates; a plateau wanders by allocator steps of ~1-3 MB.
FLAT_MB_PER_MIN = 5.0
GOAL_MANY_DEVICES_BYTES = 100 * 2**20
SETTLE_S = 30.0
# nice 10: CFS gives it ~1/10 of a CPU it shares with a publisher at nice 0.
OVERLOAD_NICENESS = 10
# The broker holding more than this (10× the in-flight window) means the gateway is behind.
BEHIND = 10_000


@dataclass
class Trace:
    """The gateway's RSS and readings stored, and the messages the broker holds, per second."""

    t_s: list[float] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)
    stored: list[float] = field(default_factory=list)
    broker_held: list[tuple[float, int]] = field(default_factory=list)  # (t_s, messages)

    def add(self, t_s: float, gateway: BenchGateway) -> None:
        scrape = gateway.try_scrape()
        self.t_s.append(round(t_s, 3))
        self.rss_bytes.append(gateway.rss_bytes())
        self.stored.append(durable(scrape) if scrape else math.nan)

    @property
    def second_half_slope_mb_per_min(self) -> float:
        half = len(self.t_s) // 2
        mbs = [b / 2**20 for b in self.rss_bytes[half:]]
        return slope(self.t_s[half:], mbs) * 60

    def broker_held_second_half(self) -> list[int]:
        if not self.t_s:
            return []
        middle = self.t_s[len(self.t_s) // 2]
        return [n for t, n in self.broker_held if middle <= t <= self.t_s[-1]]


@dataclass
class MemoryRun:
    name: str
    seconds: float
    published: Published
    trace: Trace
    peak_rss_bytes: int  # VmHWM at the end: the true peak, samples or not
    stored: int
    devices_seen: float
    error: str | None = None

    @property
    def store_rate(self) -> float:
        stored = [s for s in self.trace.stored if not math.isnan(s)]
        return (stored[-1] - stored[0]) / self.trace.t_s[-1] if len(stored) > 1 else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": self.seconds,
            "published": asdict(self.published),
            "peak_rss_bytes": self.peak_rss_bytes,
            "stored": self.stored,
            "devices_seen": self.devices_seen,
            "store_rate": self.store_rate,
            "second_half_slope_mb_per_min": self.trace.second_half_slope_mb_per_min,
            "trace": asdict(self.trace),
            "error": self.error,
        }


def run(lab: Lab) -> list[Section]:
    plan = lab.plan
    workdir = lab.scratch("memory")
    with BenchBroker(lab.children, workdir / "broker") as broker:
        lab.say(f"memory: overload for {plan.overload_s:g} s")
        flood = sim_command(
            broker,
            qos=1,
            devices=DEVICES,
            manifest=workdir / "overload.jsonl",
            processes=2,
            rate=0,
            duration=f"{plan.overload_s:g}",
        )
        overload = _observe(
            lab, broker, "overload", sim=flood, seconds=plan.overload_s, workdir=workdir,
            niceness=OVERLOAD_NICENESS,
        )  # fmt: skip
        lab.say(f"memory: {plan.many_devices:,} devices at 1 Hz for {plan.many_devices_s:g} s")
        steady = sim_command(
            broker,
            qos=1,
            devices=plan.many_devices,
            manifest=workdir / "many.jsonl",
            processes=2,
            rate=1,
            duration=f"{plan.many_devices_s:g}",
        )
        many = _observe(
            lab, broker, "many", sim=steady, seconds=plan.many_devices_s, workdir=workdir
        )
    return [_section(lab, overload, many)]


def _observe(
    lab: Lab,
    broker: BenchBroker,
    name: str,
    *,
    sim: list[str],
    seconds: float,
    workdir: Path,
    niceness: int = 0,
) -> MemoryRun:
    """Run the simulator against a fresh gateway, sampling every second. A starved gateway
    (niceness) is stopped at the end whatever the broker still holds; otherwise it must store
    everything sent."""
    setup = GatewaySetup(f"bench-mem-{name}")
    held_path = workdir / f"{name}-broker-held.txt"
    with held_path.open("wb") as out:
        watcher = lab.children.spawn(broker.watch_store_command(), stdout=out)
    gateway = BenchGateway(lab.children, broker, setup, workdir / name)
    gateway.start(niceness=niceness)
    trace = Trace()
    error = None
    try:
        gateway.wait_ready()
        log = workdir / f"{name}.log"
        manifest = workdir / f"{name}.jsonl"
        start, start_unix = time.monotonic(), time.time()
        trace.add(0.0, gateway)
        proc = start_sim(lab.children, sim, log)
        for tick in range(1, math.ceil(seconds) + 1):
            time.sleep(max(0.0, start + tick * SAMPLE_S - time.monotonic()))
            trace.add(time.monotonic() - start, gateway)
        published = finish_sim(lab.children, proc, log, manifest, timeout_s=120)
        scrape = gateway.try_scrape()
        if not niceness:
            deadline = time.monotonic() + SETTLE_S
            while scrape and durable(scrape) < published.sent and time.monotonic() < deadline:
                time.sleep(0.1)
                scrape = gateway.try_scrape()
            trace.add(time.monotonic() - start, gateway)
            if not scrape or durable(scrape) < published.sent:
                error = "not everything sent was stored"
        peak = gateway.tree_peak_rss_bytes()
        stored = int(durable(scrape)) if scrape else 0
        devices = scrape.value("gateway_devices_seen") if scrape else math.nan
    finally:
        gateway.stop()
        lab.children.stop(watcher)
    trace.broker_held = _held(held_path, start_unix)
    if not published.ok:
        error = f"simulator exit {published.exit_code}, unacked {published.unacked:,}"
    return MemoryRun(name, seconds, published, trace, peak, stored, devices, error)


def _held(path: Path, start_unix: float) -> list[tuple[float, int]]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stamp, _, count = line.partition(" ")
        try:
            out.append((round(float(stamp) - start_unix, 3), int(count)))
        except ValueError:
            continue
    return out


def _section(lab: Lab, overload: MemoryRun, many: MemoryRun) -> Section:
    plan = lab.plan
    section = Section(
        key="memory",
        title="Memory: gateway RSS (MB) under overload and with many devices",
        columns=[
            "run", "sent", "stored", "sent msg/s", "stored msg/s", "RSS start", "RSS peak",
            "RSS end", "slope 2nd half MB/min", "result",
        ],
    )  # fmt: skip
    for run_ in (overload, many):
        trace = run_.trace
        section.rows.append(
            [
                _label(run_, plan.many_devices),
                num(run_.published.sent),
                num(run_.stored),
                num(run_.published.sent / run_.seconds),
                num(run_.store_rate),
                mb(trace.rss_bytes[0] if trace.rss_bytes else math.nan),
                mb(run_.peak_rss_bytes),
                mb(trace.rss_bytes[-1] if trace.rss_bytes else math.nan),
                num(trace.second_half_slope_mb_per_min, 2),
                "ok" if run_.error is None else f"FAILED ({run_.error})",
            ]
        )
        section.failed |= run_.error is not None
    slope_ = overload.trace.second_half_slope_mb_per_min
    held = overload.trace.broker_held_second_half()
    behind = bool(held) and min(held) >= BEHIND
    section.targets += [
        Target(
            f"flat RSS under overload (|slope| ≤ {FLAT_MB_PER_MIN:g} MB/min, 2nd half)",
            f"{slope_:+.2f} MB/min" + ("" if behind else " (not overloaded)"),
            None if math.isnan(slope_) or not behind else abs(slope_) <= FLAT_MB_PER_MIN,
        ),
        Target(
            f"RSS ≤ 100 MB with {plan.many_devices:,} devices",
            f"{mb(many.peak_rss_bytes)} MB peak",
            many.peak_rss_bytes <= GOAL_MANY_DEVICES_BYTES if many.peak_rss_bytes else None,
        ),
    ]
    held_text = f"{min(held):,} to {max(held):,}" if held else "an unknown number of"
    offered = overload.published.sent / overload.store_rate / overload.seconds
    section.notes += [
        f"Overload: 2 simulator processes flat out (--rate 0, {DEVICES:,} devices, QoS 1) for "
        f"{plan.overload_s:g} s; the gateway at nice {OVERLOAD_NICENESS} (on 2 CPUs it would "
        f"otherwise keep pace with them) was offered {offered:.1f}× what it stored. Over the "
        f"second half the broker held {held_text} messages ($SYS/broker/store/messages/count; "
        f"'overloaded' needs ≥ {BEHIND:,}). The gateway is stopped at the end with the rest "
        "still queued at the broker.",
        f"Many devices: {plan.many_devices:,} devices at 1 Hz (QoS 1, 2 processes, pooled "
        f"connections) for {plan.many_devices_s:g} s; devices seen by the gateway: "
        f"{many.devices_seen:,.0f}; everything sent was stored.",
        "RSS sampled once a second from /proc (VmRSS); peak = VmHWM at the end. Slope: "
        "least squares over the second half of the samples.",
    ]
    section.data = {"overload": overload.as_dict(), "many_devices": many.as_dict()}
    return section


def _label(run_: MemoryRun, many_devices: int) -> str:
    if run_.name == "overload":
        return f"overload {run_.seconds:g} s"
    return f"{many_devices:,} devices × 1 Hz, {run_.seconds:g} s"
