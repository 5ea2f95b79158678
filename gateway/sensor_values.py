"""SensorValues: latest value per (device, metric, tags) for the opt-in exporter; capped, expiring.

Device ids and tag values come from the network, so every structure here is bounded by
`max_series`: a device is remembered only while it holds at least one series, and a new series past
the cap is refused and counted. The Prometheus side (a collector reading this at scrape time) lives
in metrics.py, the owner of prometheus_client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from gateway.config import SensorValuesConfig
from gateway.model import Reading

# Tag values come from topic levels (safe ids, at most 64 characters), but a transform may set a
# tag too: a label value never exceeds this.
MAX_LABEL_VALUE_LENGTH = 128
# At the cap, silent devices are swept at most this often before a new series is refused, so a
# flood of new ids cannot turn every reading into a full scan.
SWEEP_INTERVAL_S = 1.0

TagValues = tuple[str | None, ...]
# A group's key: the one tag's value when one tag is labelled (the default; a tuple per reading
# would double the cost of the common path), else the tuple of the tags' values.
GroupKey = str | None | TagValues


class _Device:
    __slots__ = ("groups", "seen")

    def __init__(self, seen: float) -> None:
        self.seen = seen
        # tag values -> metric -> latest value; a device whose tags change gets a second group.
        self.groups: dict[GroupKey, dict[str, float]] = {}


class SensorValues:
    """Latest values of durably written readings, one series per (device, metric, tag values)."""

    def __init__(
        self, config: SensorValuesConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tag_names: tuple[str, ...] = config.tags
        self.max_series = config.max_series
        self.expiry_s = config.expiry_s
        self.series = 0
        self.refused = 0
        self._single = config.tags[0] if len(config.tags) == 1 else None
        self._clock = clock
        self._devices: dict[str, _Device] = {}
        self._swept_at = clock()

    def observe(self, readings: list[Reading]) -> None:
        """Record a batch the file sink has made durable; known series take a few dict steps."""
        now = self._clock()
        devices = self._devices
        names = self.tag_names
        single = self._single
        for reading in readings:
            key: GroupKey = (
                reading.tags.get(single) if single else tuple(map(reading.tags.get, names))
            )
            device = devices.get(reading.device_id)
            if device is not None:
                values = device.groups.get(key)
                if values is not None and values.keys() >= reading.metrics.keys():
                    values.update(reading.metrics)
                    device.seen = now
                    continue
            self._admit(reading, key, now)

    def _admit(self, reading: Reading, key: GroupKey, now: float) -> None:
        """The slow path: at least one new series (or an over-long tag value)."""
        tags = _capped(self._tag_values(key))
        key = tags[0] if self._single else tags
        device_id = reading.device_id
        device = self._devices.get(device_id)
        known = device.groups.get(key, {}) if device is not None else {}
        new = len(reading.metrics.keys() - known.keys())
        if new > self.max_series - self.series and now - self._swept_at >= SWEEP_INTERVAL_S:
            self.expire(now)
            device = self._devices.get(device_id)
        if device is None:
            device = _Device(now)
        values = device.groups.get(key, {})
        room = self.max_series - self.series
        for name, value in reading.metrics.items():
            if name in values:
                values[name] = value
            elif room > 0:
                values[name] = value
                room -= 1
                self.series += 1
            else:
                self.refused += 1
        if values:
            device.groups[key] = values
        if device.groups:  # never remember a device that holds no series: that is the bound
            device.seen = now
            self._devices[device_id] = device

    def expire(self, now: float | None = None) -> None:
        """Forget every series of each device silent for expiry_s."""
        now = self._clock() if now is None else now
        cutoff = now - self.expiry_s
        stale = [key for key, device in self._devices.items() if device.seen <= cutoff]
        for key in stale:
            device = self._devices.pop(key)
            self.series -= sum(len(values) for values in device.groups.values())
        self._swept_at = now

    def items(self) -> Iterator[tuple[str, str, TagValues, float]]:
        """(device_id, metric, tag values, latest value) for each series."""
        for device_id, device in self._devices.items():
            for key, values in device.groups.items():
                tags = self._tag_values(key)
                for metric, value in values.items():
                    yield device_id, metric, tags, value

    @staticmethod
    def _tag_values(key: GroupKey) -> TagValues:
        return key if isinstance(key, tuple) else (key,)


def _capped(tags: TagValues) -> TagValues:
    if all(v is None or len(v) <= MAX_LABEL_VALUE_LENGTH for v in tags):
        return tags
    return tuple(v if v is None else v[:MAX_LABEL_VALUE_LENGTH] for v in tags)
