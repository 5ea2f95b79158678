"""Metrics read at scrape time from what the hot path keeps anyway (no metric call per value)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.sensor_values import SensorValues


class LeftOutCollector(Collector):
    """Payload values a mapping did not store: strings it does not read, nulls, bad names."""

    def __init__(self, left_out: Callable[[], int]) -> None:
        self._left_out = left_out

    def describe(self) -> list[Metric]:
        return [self._family(0)]

    def collect(self) -> list[Metric]:
        return [self._family(self._left_out())]

    @staticmethod
    def _family(value: int) -> Metric:
        return CounterMetricFamily(
            "gateway_mapping_values_left_out",
            "Payload values a mapping left out of readings (strings it does not read, nulls); "
            "gateway parse names them.",
            value=value,
        )


class SensorValuesCollector(Collector):
    """The opt-in per-device gauge. Built at scrape time, so an expired series just disappears."""

    def __init__(self, values: SensorValues) -> None:
        self._values = values
        self._labels = ["device_id", "metric", *values.tag_names]

    def describe(self) -> list[Metric]:
        return self._families(None)

    def collect(self) -> list[Metric]:
        # Scrapes run on the event loop (prometheus_client.aiohttp), as observe() does: no locks.
        self._values.expire()
        return self._families(self._values)

    def _families(self, values: SensorValues | None) -> list[Metric]:
        latest = GaugeMetricFamily(
            "gateway_sensor_value",
            "Latest durably written value per device and metric (opt-in; capped; expires).",
            labels=self._labels,
        )
        series = GaugeMetricFamily("gateway_sensor_series", "Series in gateway_sensor_value.")
        refused = CounterMetricFamily(
            "gateway_sensor_series_refused",
            "Values not exported because a new series would pass sensor_values.max_series.",
        )
        if values is not None:
            for device_id, metric, tags, value in values.items():
                latest.add_metric([device_id, metric, *(t or "" for t in tags)], value)
            series.add_metric([], values.series)
            refused.add_metric([], values.refused)
        return [latest, series, refused]
