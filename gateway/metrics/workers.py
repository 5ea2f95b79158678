"""The supervisor's metrics: its own, and its workers' merged into one view."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


class SupervisorMetrics:
    """The supervisor's own metrics, beside the workers' merged ones."""

    def __init__(self, registry: CollectorRegistry, processes: int) -> None:
        self.running = Gauge("gateway_workers", "Worker processes running.", registry=registry)
        Gauge("gateway_workers_configured", "Worker processes configured.", registry=registry).set(
            processes
        )
        self.restarts = Counter(
            "gateway_worker_restarts", "Workers restarted after they died.", registry=registry
        )


# Merged as the least value over the workers, not the sum: a shared subscription one worker
# hears from is not silent.
LEAST_ACROSS_WORKERS = frozenset({"gateway_subscription_silence_seconds"})


class MergedWorkers(Collector):
    """The sum of several worker gateways' metrics, for `gateway run --processes N`.

    Each worker is a whole gateway with its own registry and port; the supervisor scrapes them
    and this re-exposes one view: counters, gauges and histogram buckets summed per label set
    (so `gateway_mqtt_connected` counts connected workers), `*_info` kept once, a subscription's
    silence the least over the workers. Texts are cached
    by the supervisor's poll, so a scrape never waits on a worker.
    """

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}

    def update(self, worker: str, text: str | None) -> None:
        if text is None:
            self._texts.pop(worker, None)
        else:
            self._texts[worker] = text

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for text in list(self._texts.values()):
            for family in text_string_to_metric_families(text):
                if family.name.startswith(("process_", "python_", "gateway_http_")):
                    # Per process (the supervisor's own port reports its own gateway_http_*):
                    # summing them says nothing.
                    continue
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                acc = sums.setdefault(merged.name, {})
                for s in family.samples:
                    if s.name.endswith("_created"):
                        continue
                    key = (s.name, tuple(sorted(s.labels.items())))
                    if family.type == "info" or s.name.endswith("_info"):
                        acc[key] = max(acc.get(key, 0.0), s.value)
                    elif s.name in LEAST_ACROSS_WORKERS:
                        acc[key] = min(acc.get(key, s.value), s.value)
                    else:
                        acc[key] = acc.get(key, 0.0) + s.value
        for name, metric in families.items():
            for (sample, labels), total in sums[name].items():
                metric.add_sample(sample, dict(labels), total)
            yield metric
