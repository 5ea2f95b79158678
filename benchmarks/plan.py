"""Plan: how big and how long each case runs (full, --quick, --smoke)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

CASES = ("live", "throughput", "scale_out", "latency", "memory")


@dataclass(frozen=True)
class Plan:
    name: str
    cases: tuple[str, ...]
    rounds: int  # live, throughput and scale-out: consumers alternate A B, B A, A B ...
    qos1_messages: int  # live load and backlog drain
    qos0_messages: int
    scale_messages: int
    latency_rates_hz: tuple[float, ...]  # per device, 1,000 devices
    latency_duration_s: float
    latency_warmup_s: float
    latency_rounds: int
    overload_s: float
    many_devices: int
    many_devices_s: float
    profile: bool = False  # one extra QoS 1 drain under py-spy

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Plan(
    name="full",
    cases=CASES,
    rounds=3,
    qos1_messages=200_000,
    qos0_messages=300_000,
    scale_messages=200_000,
    latency_rates_hz=(1, 5, 10),
    latency_duration_s=15,
    latency_warmup_s=3,
    latency_rounds=1,
    overload_s=60,
    many_devices=10_000,
    many_devices_s=30,
)

# About a minute: every case once, small.
QUICK = replace(
    FULL,
    name="quick",
    rounds=1,
    qos1_messages=30_000,
    qos0_messages=45_000,
    scale_messages=30_000,
    latency_rates_hz=(5,),
    latency_duration_s=6,
    latency_warmup_s=2,
    overload_s=30,
    many_devices_s=10,
)

# For the test suite: do the live and drain cases run end to end and lose nothing.
SMOKE = replace(
    QUICK,
    name="smoke",
    cases=("live", "throughput"),
    qos1_messages=2_000,
    # Over the gateway's default mqtt.max_buffered_messages (2,000): the broker sends that much
    # of a QoS 0 backlog before the SUBACK, which once stalled the gateway's subscribe.
    qos0_messages=3_000,
    scale_messages=2_000,
)
