"""Read /metrics and compute what `gateway top` shows: rates, histogram quantiles.

Rates are the difference between two scrapes. Latency quantiles are interpolated within
histogram buckets, as Prometheus' histogram_quantile() does, over the last interval when
anything was observed in it.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from gateway.metrics import Exposition, parse_exposition

FETCH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Scrape:
    """One read of /metrics and when it was taken (monotonic seconds)."""

    at: float
    samples: Exposition

    def value(self, name: str) -> float:
        """Sum over every label set; 0 when the metric is absent."""
        return sum(v for _, v in self.samples.get(name, ()))

    def has(self, name: str) -> bool:
        return name in self.samples

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, v in self.samples.get(name, ()):
            key = labels.get(label, "")
            out[key] = out.get(key, 0.0) + v
        return out

    def buckets(self, name: str) -> dict[float, float]:
        """Histogram `le` bound -> cumulative count (summed over any other labels)."""
        out: dict[float, float] = {}
        for labels, v in self.samples.get(f"{name}_bucket", ()):
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + v
        return out


def metrics_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/metrics") else f"{url}/metrics"


def fetch(url: str, timeout_s: float = FETCH_TIMEOUT_S) -> Scrape:
    """Scrape once. OSError when unreachable or not 200, ValueError when not an exposition."""
    with urllib.request.urlopen(metrics_url(url), timeout=timeout_s) as resp:
        text = resp.read().decode("utf-8")
    return Scrape(time.monotonic(), parse_exposition(text))


def why(exc: Exception) -> str:
    """A short cause: `Connection refused`, `HTTP 404`, not urllib's wrapping."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(getattr(exc.reason, "strerror", None) or exc.reason)
    return str(exc) or type(exc).__name__


def rate(cur: Scrape, prev: Scrape | None, name: str) -> float | None:
    """Per second between two scrapes; None with only one."""
    return counter_rate(cur.value(name), prev.value(name) if prev else None, cur, prev)


def counter_rate(
    now: float, before: float | None, cur: Scrape, prev: Scrape | None
) -> float | None:
    """Per second from `before` (at prev) to `now` (at cur); None without a previous scrape."""
    if prev is None or before is None or cur.at <= prev.at:
        return None
    # A counter that went down means the gateway restarted: count from zero.
    return (now - before if now >= before else now) / (cur.at - prev.at)


def quantile(buckets: dict[float, float], q: float) -> tuple[float, bool] | None:
    """(q-quantile, is_lower_bound) from cumulative buckets; None with no observations.

    Linear within a bucket, like histogram_quantile(); in the +Inf bucket only the highest
    finite bound is known, so it is returned as a lower bound.
    """
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    low, below = 0.0, 0.0
    for le, count in ordered:
        if count >= rank and count > below:
            if math.isinf(le):
                return low, True
            return low + (le - low) * (rank - below) / (count - below), False
        low, below = (le if not math.isinf(le) else low), count
    return low, True


def window(cur: Scrape, prev: Scrape | None, name: str) -> tuple[dict[float, float], str]:
    """The histogram's buckets over the last interval when it saw anything, else since start."""
    now = cur.buckets(name)
    if prev is not None:
        before = prev.buckets(name)
        delta = {le: count - before.get(le, 0.0) for le, count in now.items()}
        if delta and max(delta.values()) > 0 and min(delta.values()) >= 0:
            return delta, f"last {cur.at - prev.at:.1f}s"
    return now, "since start"
