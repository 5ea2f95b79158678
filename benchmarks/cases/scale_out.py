"""Scale-out: two gateways sharing one subscription ($share) vs one, draining a QoS 1 backlog.

Per round: a fresh broker; the sessions of the lone gateway (group `bench1`) and of the pair
(group `bench2`, distinct client ids, separate data dirs) created first, so each group gets a
whole copy of the backlog, split evenly inside the pair. When `gateway run --processes N`
exists, a third group is drained by `--processes 2`; its sessions are made by running it once
before the publish (their client ids are the gateway's own business).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.broker import BenchBroker
from benchmarks.cases.drains import COLUMNS, Summary
from benchmarks.drain import drain_gateways
from benchmarks.gateway_proc import BenchGateway, GatewaySetup, supports_processes
from benchmarks.lab import Lab
from benchmarks.load import publish_backlog
from benchmarks.report import Section, Target, num, ratio

GOAL = 1.6
ONE, TWO, MULTI = "1 gateway", "2 gateways ($share)", "gateway run --processes 2"


@dataclass(frozen=True)
class Variant:
    label: str
    setups: tuple[GatewaySetup, ...]
    primed: bool = False  # sessions made by running the gateway once, not by mosquitto_sub


def variants() -> list[Variant]:
    found = [
        Variant(ONE, (GatewaySetup("bench-one", topic_filter="$share/bench1/sensors/#"),)),
        Variant(
            TWO,
            tuple(
                GatewaySetup(f"bench-two-{n}", topic_filter="$share/bench2/sensors/#") for n in "ab"
            ),
        ),
    ]
    if supports_processes():
        setup = GatewaySetup("bench-multi", topic_filter="$share/bench3/sensors/#", processes=2)
        found.append(Variant(MULTI, (setup,), primed=True))
    return found


def run(lab: Lab) -> list[Section]:
    plan = lab.plan
    chosen = variants()
    summaries = {v.label: Summary(v.label) for v in chosen}
    for round_ in range(plan.rounds):
        order = chosen if round_ % 2 == 0 else chosen[::-1]
        workdir = lab.scratch("scale_out", f"r{round_}")
        with BenchBroker(lab.children, workdir / "broker") as broker:
            for variant in order:
                _prepare(lab, broker, variant, workdir)
            lab.say(f"scale-out round {round_ + 1}: publishing {plan.scale_messages:,} QoS 1")
            _, manifest = publish_backlog(
                lab.children, broker, qos=1, total=plan.scale_messages, workdir=workdir
            )
            for variant in order:
                result = drain_gateways(
                    lab.children,
                    broker,
                    variant.setups,
                    expected=plan.scale_messages,
                    manifest=manifest,
                    workdir=workdir / variant.setups[0].client_id,
                    label=variant.label,
                )
                lab.say(
                    f"  {variant.label}: {result.delivered:,} in {result.elapsed_s:.2f} s = "
                    f"{result.rate:,.0f} msg/s" + ("" if result.ok else f"  FAILED {result.error}")
                )
                summaries[variant.label].drains.append(result)
        shutil.rmtree(workdir, ignore_errors=True)
    return [_section(summaries)]


def _prepare(lab: Lab, broker: BenchBroker, variant: Variant, workdir: Path) -> None:
    if not variant.primed:
        for setup in variant.setups:
            broker.create_session(setup.client_id, setup.topic_filter, 1, setup.protocol)
        return
    gateway = BenchGateway(lab.children, broker, variant.setups[0], workdir / "prime")
    gateway.start()
    try:
        gateway.wait_ready()
    finally:
        gateway.stop()


def _section(summaries: dict[str, Summary]) -> Section:
    one = summaries[ONE]
    section = Section(
        key="scale_out",
        title="Scale-out: QoS 1 backlog drain, gateways sharing `$share/<group>/sensors/#`",
        columns=COLUMNS,
    )
    for summary in summaries.values():
        row = summary.row(one.rate)
        once_started = summary.running_rate / one.running_rate if one.running_rate else math.nan
        section.rows.append([*row[:4], num(summary.running_rate), ratio(once_started), *row[4:]])
        section.failed |= not summary.ok
    columns = [c if c != "× ref" else "× 1 gateway" for c in COLUMNS]
    section.columns = [*columns[:4], "msg/s once started", "× 1 once started", *columns[4:]]
    for label in (TWO, MULTI):
        if label in summaries:
            section.targets.append(_target(label, summaries[label], one))
    if MULTI not in summaries:
        section.notes.append(
            "`gateway run --processes N` does not exist yet in this tree: not measured."
        )
    section.notes += [
        "Each group of sessions got its own copy of the same backlog; times from spawning the "
        "gateway(s) until their written + rejected counters (summed) reached the count. CPU "
        "and peak RSS are sums over the processes (peak: sum of each one's VmHWM).",
        "once started = from the first /metrics answer of any of the group's processes (a "
        "gateway serves /metrics before it connects, so nothing was consumed earlier) until "
        "done; startup s = until all of them answered. The targets compare these: throughput "
        "of a running service, not how fast it starts. `--processes 2` starts slower (its "
        "supervisor imports the gateway, then spawns the workers, which import it again), "
        "which the from-spawn ratio includes.",
        "One machine: the two gateways and the broker share its CPUs.",
    ]
    section.data = {"variants": {label: s.as_dict() for label, s in summaries.items()}}
    return section


def _target(label: str, summary: Summary, one: Summary) -> Target:
    share = summary.running_rate / one.running_rate if one.running_rate else math.nan
    from_spawn = summary.rate / one.rate if one.rate else math.nan
    both_ok = summary.ok and one.ok
    return Target(
        f"{label} ≥ {GOAL}× one gateway (once started)",
        f"{ratio(share)} ({ratio(from_spawn)} from spawn)" if both_ok else "FAILED",
        None if math.isnan(share) else (both_ok and share >= GOAL),
    )
