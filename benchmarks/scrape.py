"""Scrape: one reading of a gateway's /metrics, parsed with prometheus_client's parser."""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

WRITTEN = "gateway_readings_written_total"
REJECTED = "gateway_readings_rejected_total"
LATENCY = "gateway_end_to_end_latency_seconds"


@dataclass
class Scrape:
    """Samples by name; each a list of (labels, value)."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def total(self, name: str) -> float:
        """Sum over every label set of sample `name`."""
        return sum(value for _, value in self.samples.get(name, ()))

    @property
    def stored(self) -> float:
        """Readings that are durable: in a data file or a dead-letter file."""
        return self.total(WRITTEN) + self.total(REJECTED)

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        """Cumulative (upper bound, count) pairs of a histogram, by bound, +Inf last."""
        by_bound: dict[float, float] = defaultdict(float)
        for labels, value in self.samples.get(histogram + "_bucket", ()):
            by_bound[float(labels["le"])] += value
        return sorted(by_bound.items())

    def __add__(self, other: Scrape) -> Scrape:
        """Several gateways as one: their samples side by side (totals and buckets add up)."""
        merged = {name: list(rows) for name, rows in self.samples.items()}
        for name, rows in other.samples.items():
            merged.setdefault(name, []).extend(rows)
        return Scrape(merged)


def scrape(url: str, timeout_s: float = 2.0) -> Scrape:
    """GET `url` (a /metrics endpoint); OSError when nothing answers."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8")
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return Scrape(dict(samples))


def bucket_delta(
    later: list[tuple[float, float]], earlier: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """What a histogram counted between two scrapes (same bounds)."""
    before = dict(earlier)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in later]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The q-quantile by linear interpolation within the bucket that holds it, as PromQL's
    histogram_quantile does: the lowest bucket starts at 0, and a quantile in the +Inf bucket
    is the highest finite bound. NaN when the histogram is empty."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def histogram_max(buckets: list[tuple[float, float]]) -> float:
    """The upper bound of the highest bucket that counted anything (inf for +Inf): the true
    maximum is at most this, and above the bound below it."""
    top, below = math.nan, 0.0
    for bound, count in buckets:
        if count > below:
            top = bound
        below = count
    return top
