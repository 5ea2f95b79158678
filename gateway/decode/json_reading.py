"""JSON reading payloads: one reading object, or an array of them (a batch)."""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from gateway.config import LimitsConfig
from gateway.decode.checks import error_from_msgspec, resolve_device_id
from gateway.decode.timestamps import TimestampParser
from gateway.errors import DecodeError
from gateway.model import Reading


class _ReadingIn(msgspec.Struct, gc=False):
    """The payload's shape. Strict, as msgspec is: "21.4" is not a number and 1.0 is not a seq.
    A metric may be true/false (stored 1/0, by the common checks). Unknown fields are ignored."""

    ts: str | float
    metrics: dict[str, float | bool]
    # UNSET, not None: a field may be left out, but `null` is not a device id, seq or units.
    device_id: str | UnsetType = UNSET
    seq: int | UnsetType = UNSET
    units: dict[str, str] | UnsetType = UNSET


class JsonReadingDecoder:
    """`{"device_id", "ts", "seq"?, "metrics", "units"?}` or an array of those -> Readings.

    The device id may come from the payload, the topic, or both (then they must agree).
    Tags and the common checks are applied by the caller (`make_decoder`).
    """

    __slots__ = ("_decode", "_max_readings", "_ts")

    def __init__(self, limits: LimitsConfig) -> None:
        self._max_readings = limits.max_readings_per_message
        self._decode = msgspec.json.Decoder(_ReadingIn | list[_ReadingIn]).decode
        self._ts = TimestampParser()

    def __call__(
        self, payload: bytes, device_id: str | None, metric: str | None, received_at: float
    ) -> list[Reading]:
        try:
            decoded = self._decode(payload)
        except msgspec.DecodeError as exc:
            raise error_from_msgspec(exc, payload) from None
        if decoded.__class__ is _ReadingIn:
            return [self._reading(decoded, device_id, received_at)]  # type: ignore[arg-type]
        if not decoded:
            raise DecodeError("missing_field", "empty batch")
        if len(decoded) > self._max_readings:  # type: ignore[arg-type]
            raise DecodeError(
                "payload_too_large",
                f"batch of {len(decoded)} readings, max {self._max_readings}",  # type: ignore[arg-type]
            )
        return [self._reading(item, device_id, received_at) for item in decoded]  # type: ignore[union-attr]

    def _reading(
        self, item: _ReadingIn, topic_device_id: str | None, received_at: float
    ) -> Reading:
        metrics = item.metrics
        units = item.units
        if units is UNSET:
            units = {}
        elif not units.keys() <= metrics.keys():
            # Devices often send one fixed units block; a unit of a metric not sent says nothing.
            units = {name: unit for name, unit in units.items() if name in metrics}
        ts = item.ts
        canonical = self._ts.canonical(ts) if ts.__class__ is str else None  # type: ignore[arg-type]
        device_id = None if item.device_id is UNSET else item.device_id
        if device_id is None or device_id != topic_device_id:
            device_id = resolve_device_id(device_id, topic_device_id)
        return Reading(
            device_id,
            self._ts(ts) if canonical is None else canonical,
            received_at,
            metrics,  # type: ignore[arg-type]  # bools become floats in the common checks
            None if item.seq is UNSET else item.seq,
            units,
            ts_text=ts if canonical is not None else None,  # type: ignore[arg-type]
        )
