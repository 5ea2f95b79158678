"""Drains summed up over rounds: medians per consumer, the worst delivery, one table row."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from benchmarks.drain import Drain
from benchmarks.report import mb, num, ratio
from benchmarks.stats import median

COLUMNS = [
    "consumer",
    "delivered/expected",
    "msg/s",
    "× ref",
    "CPU µs/msg",
    "CPU s/100k",
    "broker CPU %",
    "peak RSS MB",
    "startup s",
    "result",
]


@dataclass
class Summary:
    """One consumer's drains, one per round."""

    consumer: str
    drains: list[Drain] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.drains) and all(d.ok for d in self.drains)

    @property
    def rate(self) -> float:
        """Median msg/s over the rounds that delivered everything."""
        return median([d.rate for d in self.drains if d.complete])

    @property
    def running_rate(self) -> float:
        """Median msg/s once started (see Drain.running_rate)."""
        return median([d.running_rate for d in self.drains if d.complete])

    @property
    def cpu_per_100k(self) -> float:
        return median([d.cpu_per_100k for d in self.drains if d.complete])

    @property
    def cpu_us_per_message(self) -> float:
        """Median CPU per message once started (see Drain.cpu_us_per_message)."""
        return median([d.cpu_us_per_message for d in self.drains if d.complete])

    @property
    def broker_cpu_share(self) -> float:
        return median([d.broker_cpu_share for d in self.drains if d.complete])

    @property
    def peak_rss_bytes(self) -> float:
        return median([float(d.peak_rss_bytes) for d in self.drains if d.complete])

    @property
    def startup_s(self) -> float:
        return median([d.startup_s for d in self.drains if d.startup_s is not None])

    @property
    def worst(self) -> Drain | None:
        return min(self.drains, key=lambda d: (d.ok, d.delivered)) if self.drains else None

    def verdict(self) -> str:
        worst = self.worst
        if worst is None:
            return "not run"
        if self.ok:
            return "ok"
        failed = sum(not d.ok for d in self.drains)
        if worst.error:
            why = worst.error.split("; log:")[0][:60]
        elif worst.audit and not worst.audit["ok"]:
            why = f"audit: {worst.audit['missing']:,} missing"
        else:
            why = "incomplete"
        return f"FAILED ({failed}/{len(self.drains)} rounds; {why})"

    def row(self, reference_rate: float) -> list[str]:
        worst = self.worst
        delivered = f"{worst.delivered:,}/{worst.expected:,}" if worst else "-"
        return [
            self.consumer,
            delivered,
            num(self.rate),
            ratio(self.rate / reference_rate if reference_rate else math.nan),
            num(self.cpu_us_per_message, 1),
            num(self.cpu_per_100k, 2),
            num(self.broker_cpu_share * 100),
            mb(self.peak_rss_bytes),
            num(self.startup_s, 2),
            self.verdict(),
        ]

    def as_dict(self) -> dict[str, object]:
        return {
            "consumer": self.consumer,
            "ok": self.ok,
            "median_rate": self.rate,
            "median_running_rate": self.running_rate,
            "median_cpu_s_per_100k": self.cpu_per_100k,
            "median_cpu_us_per_message": self.cpu_us_per_message,
            "median_broker_cpu_share": self.broker_cpu_share,
            "median_peak_rss_bytes": self.peak_rss_bytes,
            "median_startup_s": self.startup_s,
            "rounds": [d.as_dict() for d in self.drains],
        }
