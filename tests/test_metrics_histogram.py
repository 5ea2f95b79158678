"""LoopHistogram: the per-reading histograms are exposed exactly as prometheus_client's own."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import LATENCY_BUCKETS, LoopHistogram


def exposition(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The registry's text exposition, parsed back: (sample name, labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_observations_expose_the_same_buckets_count_and_sum_as_prometheus_client() -> None:
    rng = random.Random(7)
    # Exact bucket bounds (an `le` bucket includes its bound), values between, beyond the last.
    values = [*LATENCY_BUCKETS, 0.0, 75.0, *(rng.expovariate(200) for _ in range(2000))]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x_seconds", "x", LATENCY_BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "x", buckets=LATENCY_BUCKETS, registry=theirs)
    loop.observe_many(values[:1000])
    for value in values[1000:]:
        loop.observe(value)
    for value in values:
        reference.observe(value)
    mine, expected = exposition(ours), exposition(theirs)
    total = ("x_seconds_sum", ())
    assert mine.keys() == expected.keys()
    assert len(mine) == len(LATENCY_BUCKETS) + 3  # the buckets, +Inf, count and sum
    assert {k: v for k, v in mine.items() if k != total} == {
        k: v for k, v in expected.items() if k != total
    }
    assert mine[("x_seconds_count", ())] == len(values)
    assert abs(mine[total] - expected[total]) < 1e-9
