"""Readings -> JSON Lines bytes, per batch, grouped by hour partition (the line encoder)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from gateway.model import Reading, make_ts_formatter


class _Line(msgspec.Struct, gc=False, omit_defaults=True):
    """One line of a data file, in the order readers see: README, Files."""

    device_id: str
    ts: str
    received_at: str
    seq: int | None
    metrics: dict[str, float]
    units: dict[str, str]
    tags: dict[str, str]
    flags: list[str] | None = None


class LineEncoder:
    """Encodes a batch of readings into one buffer per partition (`date=YYYY-MM-DD/hour=HH`, UTC,
    by the reading's own time): one msgspec call per partition, not one per reading."""

    __slots__ = ("_encode_lines", "_format_ts", "_hours")

    def __init__(self) -> None:
        self._encode_lines = msgspec.json.Encoder().encode_lines
        self._format_ts = make_ts_formatter()
        self._hours: dict[int, str] = {}

    def hour_partition(self, ts: float) -> str:
        """`date=YYYY-MM-DD/hour=HH` (UTC) of an epoch time: the Hive partition of a reading."""
        hour = int(ts // 3600)
        key = self._hours.get(hour)
        if key is None:
            if len(self._hours) >= 4096:
                self._hours.clear()
            key = self._hours[hour] = hour_partition(ts)
        return key

    def __call__(self, readings: list[Reading]) -> dict[str, bytes]:
        format_ts = self._format_ts
        received: dict[float, str] = {}
        parts: dict[str, list[_Line]] = {}
        last_hour = None
        lines: list[_Line] = []
        for r in readings:
            hour = int(r.ts // 3600)
            if hour != last_hour:
                lines = parts.setdefault(self.hour_partition(r.ts), [])
                last_hour = hour
            received_at = received.get(r.received_at)
            if received_at is None:  # one per burst
                received_at = received[r.received_at] = format_ts(r.received_at)
            ts_text = r.ts_text
            lines.append(
                _Line(
                    r.device_id,
                    format_ts(r.ts) if ts_text is None else ts_text,
                    received_at,
                    r.seq,
                    r.metrics,
                    r.units,
                    r.tags,
                    r.flags or None,
                )
            )
        encode_lines = self._encode_lines
        return {key: encode_lines(part) for key, part in parts.items()}


def hour_partition(ts: float) -> str:
    """`date=YYYY-MM-DD/hour=HH` (UTC) of an epoch time."""
    return datetime.fromtimestamp(int(ts // 3600) * 3600, UTC).strftime("date=%Y-%m-%d/hour=%H")


def day_partition(ts: float) -> str:
    """`date=YYYY-MM-DD` (UTC) of an epoch time."""
    return datetime.fromtimestamp(int(ts // 86400) * 86400, UTC).strftime("date=%Y-%m-%d")
