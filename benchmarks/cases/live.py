"""Throughput under live load, QoS 1 and QoS 0: mosquitto_sub vs the gateway (the headline).

Per round, QoS and consumer: a fresh broker; the consumer connected and subscribed first; then
N prebuilt readings published flat out by two processes of `gateway-sim --transport raw` (its
prebuilt blast, same messages and manifest, at near zero CPU); timed from the first
publish until the consumer has all N (the gateway: durably). The consumers alternate A B, B A,
A B ... over the rounds. With the publishers running, the broker is the bottleneck for the
reference: this is the practical limit on this machine.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field

from benchmarks.broker import BenchBroker
from benchmarks.cases.drains import Summary
from benchmarks.lab import Lab
from benchmarks.live import Live, live_gateway, live_reference
from benchmarks.load import BLAST_PROCESSES, DEVICES, blast_count
from benchmarks.report import Section, Target, mb, num, ratio
from benchmarks.stats import median

REFERENCE = "mosquitto_sub"
GATEWAY = "gateway 5"
GOALS = {1: 0.9, 0: 0.8}  # gateway msg/s as a share of the reference's
# A reference this close to its publisher's rate kept pace with it, and with the broker under
# BROKER_BUSY of a CPU the publisher, not the broker, set its figure: only a lower bound of the
# practical limit. (The raw transport keeps at most a window of messages unacked, so its own rate
# tracks the broker's: keeping pace with it alone no longer says who was the limit.)
PUBLISHER_BOUND = 0.95
BROKER_BUSY = 0.85
COLUMNS = [
    "QoS",
    "consumer",
    "delivered/expected",
    "msg/s",
    "× ref",
    "publisher msg/s",
    "broker CPU %",
    "CPU µs/msg",
    "peak RSS MB",
    "result",
]


@dataclass
class LiveSummary:
    """One consumer's runs at one QoS, one per round."""

    summary: Summary
    runs: list[Live] = field(default_factory=list)

    def add(self, run: Live) -> None:
        self.runs.append(run)
        self.summary.drains.append(run.result)

    @property
    def ok(self) -> bool:
        return self.summary.ok

    @property
    def publisher_rate(self) -> float:
        return median([r.published.rate for r in self.runs if r.published])

    @property
    def broker_cpu_share(self) -> float:
        return median([r.broker_cpu_share for r in self.runs if r.result.complete])

    @property
    def publisher_bound(self) -> bool:
        kept_pace = self.summary.rate >= PUBLISHER_BOUND * self.publisher_rate
        return kept_pace and not self.broker_cpu_share >= BROKER_BUSY

    def row(self, qos: int, reference_rate: float) -> list[str]:
        s = self.summary
        worst = s.worst
        return [
            str(qos),
            s.consumer,
            f"{worst.delivered:,}/{worst.expected:,}" if worst else "-",
            num(s.rate),
            ratio(s.rate / reference_rate if reference_rate else math.nan),
            num(self.publisher_rate),
            num(self.broker_cpu_share * 100),
            num(s.cpu_us_per_message, 1),
            mb(s.peak_rss_bytes),
            s.verdict(),
        ]

    def as_dict(self) -> dict[str, object]:
        return {
            **self.summary.as_dict(),
            "median_publisher_rate": self.publisher_rate,
            "median_broker_cpu_share": self.broker_cpu_share,
            "publisher_bound": self.publisher_bound,
            "rounds": [r.as_dict() for r in self.runs],
        }


def run(lab: Lab) -> list[Section]:
    plan = lab.plan
    sizes = {1: plan.qos1_messages, 0: plan.qos0_messages}
    results = {
        qos: {label: LiveSummary(Summary(label)) for label in (REFERENCE, GATEWAY)} for qos in sizes
    }
    for round_ in range(plan.rounds):
        for qos, size in sizes.items():
            total = blast_count(size) * DEVICES
            order = [REFERENCE, GATEWAY] if round_ % 2 == 0 else [GATEWAY, REFERENCE]
            for label in order:
                workdir = lab.scratch("live", f"r{round_}-qos{qos}-{label.split()[0]}")
                lab.say(f"live round {round_ + 1}, QoS {qos}, {label}: {total:,} readings")
                measure = live_reference if label == REFERENCE else live_gateway
                with BenchBroker(lab.children, workdir / "broker") as broker:
                    live = measure(lab.children, broker, qos=qos, total=total, workdir=workdir)
                lab.say(f"  {describe(live)}")
                results[qos][label].add(live)
                shutil.rmtree(workdir, ignore_errors=True)
    return [_section(results)]


def describe(live: Live) -> str:
    r = live.result
    text = (
        f"{r.delivered:,}/{r.expected:,} in {r.elapsed_s:.2f} s from the first publish = "
        f"{r.rate:,.0f} msg/s"
    )
    if live.published is not None:
        text += f" (publisher {live.published.rate:,.0f} msg/s, {live.published.publish_s:.2f} s)"
    if not live.ok:
        text += f"  FAILED {r.error or ''} {r.audit or ''}"
    return text


def _section(results: dict[int, dict[str, LiveSummary]]) -> Section:
    section = Section(
        key="live",
        title="Throughput under live load (1,000 devices, ~150-byte JSON readings, "
        f"{BLAST_PROCESSES} publisher processes flat out)",
        columns=COLUMNS,
    )
    for qos, summaries in results.items():
        reference_rate = summaries[REFERENCE].summary.rate
        for summary in summaries.values():
            section.rows.append(summary.row(qos, reference_rate))
            section.failed |= not summary.ok
        section.targets.append(_target(qos, summaries[REFERENCE], summaries[GATEWAY]))
    section.notes += [
        "Per round, QoS and consumer: a fresh broker; the consumer connected and subscribed "
        "first (mosquitto_sub -c -C N writing to a file, its session made beforehand; the "
        "gateway as a subprocess, /readyz ready); then gateway-sim --transport raw --prebuilt "
        f"--connections pool --processes {BLAST_PROCESSES} --devices {DEVICES:,} --qos Q "
        "publishes N readings flat out: what its MQTT transport sends (same messages, order per "
        "device and manifest), encoded before the clock starts and written in large sends, so "
        "that the broker, not the publisher, is the limit. Consumers alternate A B, B A, ... "
        "over rounds.",
        "msg/s = N ÷ time from the first publish (when a bystander mosquitto_sub on the first "
        "device of each publisher process got its first message) until the consumer had all N "
        "(gateway: its written + rejected counters, scraped every 100 ms, 10 ms past 90%, "
        "reached N; mosquitto_sub: it exited at -C N). Medians over rounds; × ref = ratio of "
        "the medians.",
        "publisher msg/s = the publisher's own rate (sent ÷ its first-to-last write window, "
        "its summary line; at QoS 1 it keeps at most 1,000 unacked per connection, so it "
        "tracks the broker); broker CPU % = Mosquitto's CPU seconds from the load's start until "
        "the consumer had all, per second of msg/s's time. A reference at ≥ "
        f"{PUBLISHER_BOUND:.0%} of its publisher's rate with the broker under "
        f"{BROKER_BUSY:.0%} CPU kept pace with the publisher: the publisher limited it, so its "
        "msg/s is a lower bound of the practical limit; a target met against it is then shown "
        "n/a, not PASS "
        "(a MISS stays a MISS). The broker, the consumer and the publishers share the "
        "machine's CPUs.",
        "The gateway: MQTT 5 (its default; receive_maximum 1000), files.fsync = always, a "
        "check_range step; it acks QoS 1 only after the "
        "fsync; its files are audited against the publisher's manifest after each run (any "
        "reading missing marks it FAILED). mosquitto_sub acks on receipt and never fsyncs. "
        "CPU = user + system of the consumer from the start of the load until done "
        "(mosquitto_sub: its whole life, from wait4); peak RSS = VmHWM.",
        "Broker: as in the drain below (max_inflight_messages 1000, unlimited queues, "
        "queue_qos0_messages, set_tcp_nodelay, no persistence).",
    ]
    section.data = {
        "consumers": {
            f"qos{qos}": {label: s.as_dict() for label, s in summaries.items()}
            for qos, summaries in results.items()
        },
    }
    return section


def _target(qos: int, reference: LiveSummary, gateway: LiveSummary) -> Target:
    goal = GOALS[qos]
    name = f"QoS {qos}: gateway ≥ {goal}× mosquitto_sub (live load)"
    if not (gateway.ok and reference.ok):
        failed = gateway if not gateway.ok else reference
        return Target(name, f"{failed.summary.consumer}: {failed.summary.verdict()}", False)
    share = gateway.summary.rate / reference.summary.rate
    if share >= goal and reference.publisher_bound:
        measured = (
            f"{ratio(share)} (reference publisher-bound: {num(reference.summary.rate)} msg/s)"
        )
        return Target(name, measured, None)
    return Target(name, ratio(share), share >= goal)
