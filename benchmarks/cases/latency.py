"""Latency: a live QoS 1 stream at fixed rates; device timestamp -> durable (gateway) or
-> received (mosquitto_sub).

Per rate and round, the gateway and the reference each get their own run of the same paced
simulator (1,000 devices), one after the other (order alternating). The simulator gets a
--start-time a moment ahead and paces from it (gateway-sim does when the start is within a
minute), so a timestamp is the moment the message was due to leave. Figures count only what
arrived after a warm-up.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import reference
from benchmarks.broker import BenchBroker
from benchmarks.gateway_proc import BenchGateway, GatewaySetup
from benchmarks.lab import Lab
from benchmarks.load import DEVICES, Published, finish_sim, start_paced
from benchmarks.report import Section, Target, ms, num
from benchmarks.stats import median, percentile
from gateway.top.scrape import quantile
from harness.scrape import stored

LATENCY = "gateway_end_to_end_latency_seconds"

GOAL_RATE_HZ = 5  # per device: 5,000 msg/s
GOAL_P99_S = 0.005
# Time for the simulator to start, connect and build its payloads before its start time.
LEAD_S = 2.0
BUILD_S_PER_MESSAGE = 1 / 40_000
SETTLE_S = 30.0  # after the stream ends, for the consumer to have everything


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """As `gateway top` computes it (PromQL's interpolation); NaN when the histogram is empty."""
    found = quantile(dict(buckets), q)
    return math.nan if found is None else found[0]


def histogram_max(buckets: list[tuple[float, float]]) -> float:
    """The upper bound of the highest bucket that counted anything (inf for +Inf): the true
    maximum is at most this, and above the bound below it."""
    top, below = math.nan, 0.0
    for bound, count in buckets:
        if count > below:
            top = bound
        below = count
    return top


@dataclass
class Latency:
    consumer: str
    rate_hz: float
    sent: int
    delivered: int
    counted: int  # arrived after the warm-up: what the percentiles are of
    p50_s: float
    p99_s: float
    max_s: float
    publish_rate: float
    cpu_share: float = math.nan  # gateway: CPU seconds per second over the counted window
    buckets: list[tuple[float, float]] | None = None  # gateway: the counted histogram
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.delivered >= self.sent > 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def run(lab: Lab) -> list[Section]:
    plan = lab.plan
    results: list[Latency] = []
    workdir = lab.scratch("latency")
    with BenchBroker(lab.children, workdir / "broker") as broker:
        for i, rate in enumerate(plan.latency_rates_hz):
            for round_ in range(plan.latency_rounds):
                kinds = ["gateway", "reference"]
                for kind in kinds if (i + round_) % 2 == 0 else kinds[::-1]:
                    name = f"{kind}-{rate:g}hz-r{round_}"
                    measure = _gateway if kind == "gateway" else _reference
                    result = measure(lab, broker, rate, workdir / name, name)
                    lab.say(
                        f"latency {rate * DEVICES:,.0f} msg/s {result.consumer}: p50 "
                        f"{ms(result.p50_s)} p99 {ms(result.p99_s)} max {ms(result.max_s)} ms "
                        f"({result.delivered:,}/{result.sent:,})"
                        + ("" if result.ok else f" FAILED {result.error}")
                    )
                    results.append(result)
    return [_section(lab, results)]


def _stream(
    lab: Lab, broker: BenchBroker, rate_hz: float, workdir: Path, name: str
) -> tuple[Any, Path, Path, float]:
    plan = lab.plan
    messages = DEVICES * rate_hz * plan.latency_duration_s
    return start_paced(
        lab.children,
        broker,
        rate_hz=rate_hz,
        duration_s=plan.latency_duration_s,
        lead_s=LEAD_S + messages * BUILD_S_PER_MESSAGE,
        workdir=workdir,
        name=f"sim-{name}",
    )


def _sleep_until(unix_s: float) -> None:
    time.sleep(max(0.0, min(unix_s - time.time(), 600.0)))


def _finish(lab: Lab, proc: Any, manifest: Path, log: Path) -> Published:
    timeout = lab.plan.latency_duration_s + 120
    return finish_sim(lab.children, proc, log, manifest, timeout_s=timeout)


def _gateway(lab: Lab, broker: BenchBroker, rate_hz: float, workdir: Path, name: str) -> Latency:
    workdir.mkdir(parents=True)
    gateway = BenchGateway(lab.children, broker, GatewaySetup(f"bench-{name}"), workdir)
    gateway.start()
    try:
        gateway.wait_ready()
        proc, manifest, log, start_at = _stream(lab, broker, rate_hz, workdir, name)
        _sleep_until(start_at + lab.plan.latency_warmup_s)
        cpu_before, wall_before = gateway.cpu_seconds(), time.monotonic()
        before = gateway.try_scrape()
        published = _finish(lab, proc, manifest, log)
        cpu_share = (gateway.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        deadline = time.monotonic() + SETTLE_S
        after = gateway.try_scrape()
        while after is not None and stored(after) < published.sent and time.monotonic() < deadline:
            time.sleep(0.05)
            after = gateway.try_scrape()
    finally:
        gateway.stop()
    if before is None or after is None:
        return _failed("gateway", rate_hz, "no metrics")
    earlier = before.buckets(LATENCY)
    buckets = sorted((le, n - earlier.get(le, 0.0)) for le, n in after.buckets(LATENCY).items())
    return Latency(
        consumer="gateway 5",
        rate_hz=rate_hz,
        sent=published.sent,
        delivered=int(stored(after)),
        counted=int(buckets[-1][1]) if buckets else 0,
        p50_s=histogram_quantile(0.5, buckets),
        p99_s=histogram_quantile(0.99, buckets),
        max_s=histogram_max(buckets),
        publish_rate=published.rate,
        cpu_share=cpu_share,
        buckets=buckets,
        error=None if published.ok else f"simulator exit {published.exit_code}",
    )


def _reference(lab: Lab, broker: BenchBroker, rate_hz: float, workdir: Path, name: str) -> Latency:
    workdir.mkdir(parents=True)
    out_path = workdir / "received.txt"
    with out_path.open("wb") as out:
        sub = lab.children.spawn(reference.capture_command(broker, f"bench-{name}"), stdout=out)
    try:
        proc, manifest, log, start_at = _stream(lab, broker, rate_hz, workdir, name)
        published = _finish(lab, proc, manifest, log)
        deadline = time.monotonic() + SETTLE_S
        while reference.count_lines(out_path) < published.sent and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        lab.children.stop(sub)
    delivered = reference.count_lines(out_path)
    latencies = reference.latencies(out_path, since=start_at + lab.plan.latency_warmup_s)
    return Latency(
        consumer="mosquitto_sub",
        rate_hz=rate_hz,
        sent=published.sent,
        delivered=delivered,
        counted=len(latencies),
        p50_s=percentile(latencies, 0.5),
        p99_s=percentile(latencies, 0.99),
        max_s=latencies[-1] if latencies else math.nan,
        publish_rate=published.rate,
        error=None if published.ok else f"simulator exit {published.exit_code}",
    )


def _failed(consumer: str, rate_hz: float, error: str) -> Latency:
    nan = math.nan
    return Latency(consumer, rate_hz, 0, 0, 0, nan, nan, nan, nan, error=error)


def _section(lab: Lab, results: list[Latency]) -> Section:
    plan = lab.plan
    section = Section(
        key="latency",
        title=f"Latency: live QoS 1 stream, {DEVICES:,} devices, device ts -> stored (ms)",
        columns=[
            "msg/s", "consumer", "delivered/sent", "p50", "p99", "max", "gateway CPU %", "result",
        ],
    )  # fmt: skip
    groups: dict[tuple[float, str], list[Latency]] = {}
    for r in results:
        groups.setdefault((r.rate_hz, r.consumer), []).append(r)
    for (rate_hz, consumer), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        good = [r for r in runs if r.ok]
        worst = min(runs, key=lambda r: (r.ok, r.delivered - r.sent))
        cpu = median([r.cpu_share for r in good])
        p99 = median([r.p99_s for r in good])
        is_gateway = consumer.startswith("gateway")
        section.rows.append(
            [
                num(rate_hz * DEVICES),
                consumer,
                f"{worst.delivered:,}/{worst.sent:,}",
                ms(median([r.p50_s for r in good])),
                ms(p99),
                ("≤ " if is_gateway else "") + ms(max((r.max_s for r in good), default=math.nan)),
                num(cpu * 100) if is_gateway else "",
                "ok" if len(good) == len(runs) else f"FAILED ({worst.error})",
            ]
        )
        section.failed |= len(good) != len(runs)
        if is_gateway and rate_hz == GOAL_RATE_HZ:
            section.targets.append(
                Target(
                    f"p99 ≤ {GOAL_P99_S * 1000:g} ms at {GOAL_RATE_HZ * DEVICES:,} msg/s",
                    f"{ms(p99)} ms",
                    None if math.isnan(p99) else p99 <= GOAL_P99_S,
                )
            )
    section.notes += [
        f"Simulator: gateway-sim --devices {DEVICES:,} --rate R --duration "
        f"{plan.latency_duration_s:g} --qos 1 --prebuilt --connections pool --start-time "
        f"<{LEAD_S:g} s + build time ahead> (it paces from that start), TCP_NODELAY. Counted: what "
        f"arrived after a {plan.latency_warmup_s:g} s warm-up; medians over "
        f"{plan.latency_rounds} round(s).",
        "Gateway: device ts -> fsynced, from its gateway_end_to_end_latency_seconds histogram "
        "(scrape at the end minus a scrape after the warm-up); p50/p99 interpolated linearly "
        "within buckets like PromQL's histogram_quantile (buckets 1, 2.5, 5, 10, 25 ms...); "
        "max is the upper bound of the highest non-empty bucket, so '≤'.",
        "mosquitto_sub: device ts -> received (-F '%U %p'), exact percentiles; no disk. Both "
        "include the simulator's own lateness and the ts resolution (1 ms, truncated: each "
        "figure up to 1 ms high); mosquitto_sub's row is that floor plus the broker.",
        "gateway CPU % = its CPU seconds per second from the warm-up to the end of the stream.",
    ]
    section.data = {"runs": [r.as_dict() for r in results]}
    return section
