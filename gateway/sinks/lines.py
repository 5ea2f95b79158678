"""Readings -> JSON Lines bytes, per batch, grouped by hour partition (the line encoder), and
dead-letter records -> lines; back, data lines -> the identities of their readings (for the
dedupe window at start). The one place that encodes file lines."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import msgspec

from gateway.decode.timestamps import parse_iso
from gateway.errors import DecodeError
from gateway.layout import hour_partition
from gateway.model import Reading, make_ts_formatter

# "000".."999" -> 0..999: one look-up both checks three ASCII digits and converts them.
_MILLIS: Mapping[str, int] = MappingProxyType({f"{n:03d}": n for n in range(1000)})


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


_encode_record = msgspec.json.Encoder().encode


def record_line(record: Mapping[str, object]) -> bytes:
    """One record with optional keys (a dead letter) as a JSON line, newline included (UTF-8);
    a few µs each at most."""
    return _encode_record(record) + b"\n"


class _IdentityLine(msgspec.Struct, gc=False):
    """What identifies a data line's reading; the other fields are skipped unread."""

    device_id: str
    ts: str
    seq: int | None = None


def line_ms(epoch_s: float) -> int:
    """The time a data line holds (`format_ts`: microseconds rounded, then cut to milliseconds),
    as integer epoch milliseconds."""
    return round(epoch_s * 1_000_000) // 1000


class IdentityReader:
    """Data lines -> `(device_id, seq, ts_ms)` of each reading that has a seq, in line order.

    `ts_ms` is the line's `ts` in integer epoch milliseconds, exactly (whole seconds parsed once
    per second and remembered, plus the three digits), so identities read back equal those of
    redelivered readings (sinks/dedupe.py). Lines that are not readings are skipped: at worst
    their reading is stored again, never lost.
    """

    __slots__ = ("_decode", "_decode_lines", "_names", "_seconds", "skipped")

    def __init__(self) -> None:
        decoder = msgspec.json.Decoder(_IdentityLine)
        self._decode_lines = decoder.decode_lines
        self._decode = decoder.decode
        # `YYYY-MM-DDTHH:MM:SS` -> epoch milliseconds of that second.
        self._seconds: dict[str, int] = {}
        # One string object per device id, shared by its identities (~60 bytes each saved).
        self._names: dict[str, str] = {}
        self.skipped = 0

    def __call__(self, lines: bytes) -> list[tuple[str, int, int]]:
        """Whole lines (each ending in a newline) -> identities."""
        try:
            decoded = self._decode_lines(lines)
        except (msgspec.DecodeError, msgspec.ValidationError):
            decoded = self._one_by_one(lines)
        seconds = self._seconds
        name = self._names.setdefault
        identities = []
        for line in decoded:
            seq = line.seq
            if seq is None:
                continue
            ts = line.ts
            whole = seconds.get(ts[:19])
            millis = _MILLIS.get(ts[20:23])
            if whole is None or millis is None or len(ts) != 24 or ts[19] != "." or ts[23] != "Z":
                ts_ms = self._parse(ts)
                if ts_ms is None:
                    continue
            else:
                ts_ms = whole + millis
            device = line.device_id
            identities.append((name(device, device), seq, ts_ms))
        return identities

    def _one_by_one(self, lines: bytes) -> list[_IdentityLine]:
        decoded = []
        for line in lines.splitlines():
            try:
                decoded.append(self._decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.skipped += int(bool(line.strip()))
        return decoded

    def _parse(self, ts: str) -> int | None:
        """A ts of a second not yet remembered, or not in the canonical form."""
        try:
            if len(ts) == 24 and ts[19] == "." and ts[23] == "Z" and ts[20:23] in _MILLIS:
                whole = round(parse_iso(ts[:19])) * 1000
                if len(self._seconds) >= 4096:
                    self._seconds.clear()
                self._seconds[ts[:19]] = whole
                return whole + _MILLIS[ts[20:23]]
            return line_ms(parse_iso(ts))
        except DecodeError:
            self.skipped += 1
            return None
