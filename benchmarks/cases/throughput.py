"""Consumer-only ceiling: drain a queued backlog, QoS 1 and QoS 0; mosquitto_sub vs the gateway.

No publisher runs while a consumer drains, so the broker is not the bottleneck and the
reference runs several times faster than under live load (cases/live.py, the headline): the
ratio here is shown, with no target attached.

Per round and QoS: a fresh broker; every consumer's persistent session created first; one
backlog published (the broker queues a copy for each session); then each consumer drains its
copy in turn, the order reversed every other round.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmarks.broker import BenchBroker
from benchmarks.cases.drains import COLUMNS, Summary
from benchmarks.drain import Drain, drain_gateways, drain_reference
from benchmarks.gateway_proc import GatewaySetup
from benchmarks.lab import Lab
from benchmarks.load import publish_backlog
from benchmarks.profile import RATE_HZ, hottest
from benchmarks.report import Section, Target, mb, num, ratio

REFERENCE = "mosquitto_sub"
GATEWAY = "gateway 5"
TOP_FUNCTIONS = 15
# The QoS 1 drain of the gateway's fast path (the fast-path issue's targets).
GOAL_RATIO = 1.0  # × mosquitto_sub's drain of the same backlog in the same run
GOAL_CPU_US = 6.0  # CPU µs per message once started
GOAL_RSS_BYTES = 150 * 2**20


@dataclass(frozen=True)
class Consumer:
    """One side of the comparison, with a session of its own per QoS."""

    label: str
    protocol: Literal["3.1.1", "5"]
    is_reference: bool = False

    def client_id(self, qos: int) -> str:
        kind = "ref" if self.is_reference else "gw" + self.protocol.replace(".", "")
        return f"bench-{kind}-q{qos}"


# The gateway's default (MQTT 5, the fast path) first: the profile drains CONSUMERS[1][1].
CONSUMERS = {
    1: [
        Consumer(REFERENCE, "3.1.1", is_reference=True),
        Consumer("gateway 5", "5"),
        Consumer("gateway 3.1.1 (paho)", "3.1.1"),
    ],
    0: [
        Consumer(REFERENCE, "3.1.1", is_reference=True),
        Consumer("gateway 5", "5"),
        Consumer("gateway 3.1.1 (paho)", "3.1.1"),
    ],
}


def run(lab: Lab) -> list[Section]:
    plan = lab.plan
    sizes = {1: plan.qos1_messages, 0: plan.qos0_messages}
    results: dict[int, dict[str, Summary]] = {
        qos: {c.label: Summary(c.label) for c in consumers} for qos, consumers in CONSUMERS.items()
    }
    publishes: list[dict[str, object]] = []
    for round_ in range(plan.rounds):
        for qos, consumers in CONSUMERS.items():
            order = consumers if round_ % 2 == 0 else consumers[::-1]
            workdir = lab.scratch("throughput", f"r{round_}-qos{qos}")
            publishes.append(
                _round(
                    lab,
                    round_,
                    qos,
                    size=sizes[qos],
                    order=order,
                    workdir=workdir,
                    summaries=results[qos],
                )
            )
            shutil.rmtree(workdir, ignore_errors=True)
    sections = [_section(results, publishes)]
    if plan.profile:
        sections.append(_profile(lab))
    return sections


def _round(
    lab: Lab,
    round_: int,
    qos: int,
    *,
    size: int,
    order: list[Consumer],
    workdir: Path,
    summaries: dict[str, Summary],
) -> dict[str, object]:
    with BenchBroker(lab.children, workdir / "broker") as broker:
        for consumer in order:
            broker.create_session(consumer.client_id(qos), "sensors/#", qos, consumer.protocol)
        lab.say(f"throughput round {round_ + 1}: publishing {size:,} QoS {qos} readings")
        published, manifest = publish_backlog(
            lab.children, broker, qos=qos, total=size, workdir=workdir
        )
        for consumer in order:
            result = _drain(
                lab, broker, consumer, qos=qos, size=size, manifest=manifest, workdir=workdir
            )
            lab.say(f"  {consumer.label}: {describe(result)}")
            summaries[consumer.label].drains.append(result)
    return {"round": round_, "qos": qos, "sent": published.sent, "publish_rate": published.rate}


def _drain(
    lab: Lab,
    broker: BenchBroker,
    consumer: Consumer,
    *,
    qos: int,
    size: int,
    manifest: Path,
    workdir: Path,
    profile_to: Path | None = None,
) -> Drain:
    client_id = consumer.client_id(qos)
    if consumer.is_reference:
        return drain_reference(
            lab.children, broker, client_id=client_id, qos=qos, expected=size, workdir=workdir
        )
    setup = GatewaySetup(client_id=client_id, qos=qos, protocol=consumer.protocol)
    return drain_gateways(
        lab.children,
        broker,
        [setup],
        expected=size,
        manifest=manifest,
        workdir=workdir,
        label=consumer.label,
        profile_to=profile_to,
    )


def _section(results: dict[int, dict[str, Summary]], publishes: list[dict[str, object]]) -> Section:
    section = Section(
        key="throughput",
        title="Consumer-only ceiling: drain of a queued backlog (1,000 devices, ~150-byte "
        "JSON readings)",
        columns=["QoS", *COLUMNS],
    )
    for qos, summaries in results.items():
        reference_rate = summaries[REFERENCE].rate
        for summary in summaries.values():
            section.rows.append([str(qos), *summary.row(reference_rate)])
            section.failed |= not summary.ok
    section.targets += _targets(results[1][REFERENCE], results[1][GATEWAY])
    section.notes += [
        "With no publisher running the broker only hands out what it holds: this is each "
        "consumer's own ceiling. mosquitto_sub acks one message at a time, so the broker refills "
        "its window one at a time; the gateway acks a group commit in one write.",
        "msg/s = expected ÷ time from the consumer's spawn until all were in its output "
        "(gateway: its written + rejected counters, scraped, reached the count; mosquitto_sub: "
        "it exited at -C N). Medians over rounds; × ref = ratio of the medians.",
        "The gateway fsyncs every group commit before it acks; mosquitto_sub writes to a file "
        "and never fsyncs, and acks on receipt.",
        "CPU µs/msg: the gateway's from its first /metrics answer (its imports done) until done; "
        "CPU s/100k: its whole process, start-up included. mosquitto_sub: its whole life.",
        "The gateway: files.fsync = always, a check_range step, metrics scraped every 100 ms "
        "(10 ms near the end); its files are audited against the simulator's manifest after "
        "each run: any reading missing marks it FAILED. CPU = user + system of the consumer "
        "process until done (mosquitto_sub: from wait4); peak RSS = VmHWM.",
        "Broker: Mosquitto with max_inflight_messages 1000, unlimited queues, "
        "queue_qos0_messages, set_tcp_nodelay, no persistence. MQTT 5 gateway: "
        "receive_maximum 1000; the 3.1.1 gateway drives paho through its public API.",
    ]
    section.data = {
        "publishes": publishes,
        "consumers": {
            f"qos{qos}": {label: s.as_dict() for label, s in summaries.items()}
            for qos, summaries in results.items()
        },
    }
    return section


def _targets(reference: Summary, gateway: Summary) -> list[Target]:
    names = (
        f"QoS 1 drain, MQTT 5: gateway ≥ {GOAL_RATIO:g}× mosquitto_sub",
        f"QoS 1 drain, MQTT 5: ≤ {GOAL_CPU_US:g} µs CPU per message once started",
        "QoS 1 drain, MQTT 5: peak RSS ≤ 150 MB",
    )
    if not (gateway.ok and reference.ok):
        failed = gateway if not gateway.ok else reference
        return [Target(name, f"{failed.consumer}: {failed.verdict()}", False) for name in names]
    share = gateway.rate / reference.rate
    return [
        Target(names[0], ratio(share), share >= GOAL_RATIO),
        Target(
            names[1],
            f"{num(gateway.cpu_us_per_message, 1)} µs (mosquitto_sub "
            f"{num(reference.cpu_us_per_message, 1)} µs)",
            gateway.cpu_us_per_message <= GOAL_CPU_US,
        ),
        Target(
            names[2], f"{mb(gateway.peak_rss_bytes)} MB", gateway.peak_rss_bytes <= GOAL_RSS_BYTES
        ),
    ]


def _profile(lab: Lab) -> Section:
    """One more QoS 1 drain by the gateway under py-spy (not in the medians: py-spy slows it)."""
    plan = lab.plan
    workdir = lab.scratch("throughput", "profile")
    consumer = CONSUMERS[1][1]
    folded = lab.out / "gateway-qos1.folded"
    with BenchBroker(lab.children, workdir / "broker") as broker:
        broker.create_session(consumer.client_id(1), "sensors/#", 1, consumer.protocol)
        lab.say(f"profile: publishing {plan.qos1_messages:,} QoS 1 readings")
        _, manifest = publish_backlog(
            lab.children, broker, qos=1, total=plan.qos1_messages, workdir=workdir
        )
        result = _drain(
            lab,
            broker,
            consumer,
            qos=1,
            size=plan.qos1_messages,
            manifest=manifest,
            workdir=workdir,
            profile_to=folded,
        )
    lab.say(f"  {consumer.label} under py-spy: {describe(result)}")
    functions, samples, packages = (
        hottest(folded, TOP_FUNCTIONS) if folded.exists() else ([], 0, {})
    )
    shutil.rmtree(workdir, ignore_errors=True)
    section = Section(
        key="profile",
        title=f"Profile: the gateway during a QoS 1 drain, top {TOP_FUNCTIONS} by self time",
        columns=["#", "function", "file", "self", "on stack"],
        rows=[
            [str(i), f.function, f.file, f"{f.self_share:.1%}", f"{f.total_share:.1%}"]
            for i, f in enumerate(functions, 1)
        ],
    )
    section.notes.append(
        f"py-spy record at {RATE_HZ} Hz, {samples:,} samples, one extra drain of "
        f"{plan.qos1_messages:,} at {result.rate:,.0f} msg/s (py-spy slows it; not in the "
        "throughput medians). self = samples in the function itself (and the C code it "
        "calls); on stack = anywhere. Idle threads are not sampled."
    )
    if samples:
        shown = folded.relative_to(Path.cwd()) if folded.is_relative_to(Path.cwd()) else folded
        section.notes.append(f"Collapsed stacks (for flamegraph.pl and the like): {shown}")
        section.notes.append(
            "Self time by package: "
            + ", ".join(
                f"{name} {n / samples:.0%}" for name, n in packages.items() if n / samples >= 0.01
            )
        )
    section.data = {
        "drain": result.as_dict(),
        "samples": samples,
        "top_self": [f.as_dict() for f in functions],
        "self_by_package": {name: n / samples for name, n in packages.items()},
    }
    return section


def describe(result: Drain) -> str:
    text = (
        f"{result.delivered:,}/{result.expected:,} in {result.elapsed_s:.2f} s = "
        f"{result.rate:,.0f} msg/s"
    )
    if not result.ok:
        text += f"  FAILED {result.error or ''} {result.audit or ''}"
    return text
