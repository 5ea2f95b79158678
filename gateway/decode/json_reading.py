"""JSON reading payloads: one reading object, or an array of them (a batch)."""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from gateway.config import LimitsConfig
from gateway.decode.checks import error_from_msgspec, resolve_device_id
from gateway.decode.timestamps import MILLIS, TimestampParser
from gateway.errors import DecodeError
from gateway.model import Reading
from gateway.topics import TopicFields


class _ReadingIn(msgspec.Struct, gc=False):
    """The payload's shape. Strict, as msgspec is: "21.4" is not a number and 1.0 is not a seq;
    msgspec refuses numbers beyond a float's range, and JSON has no NaN, so every metric is a
    finite float. Unknown fields are ignored."""

    ts: str | float
    metrics: dict[str, float]
    # UNSET, not None: a field may be left out, but `null` is not a device id, seq or units.
    device_id: str | UnsetType = UNSET
    seq: int | UnsetType = UNSET
    units: dict[str, str] | UnsetType = UNSET


class _ReadingInWithBooleans(_ReadingIn, gc=False):
    """The same, where a metric may also be true/false (stored as 1/0): tried only when the
    float-only shape fails, so that the common payload pays for no conversion."""

    metrics: dict[str, float | bool]  # type: ignore[assignment]


class JsonReadingDecoder:
    """`{"device_id", "ts", "seq"?, "metrics", "units"?}` or an array of those -> Readings.

    The device id may come from the payload, the topic, or both (then they must agree).
    The common checks are applied by the caller (`SubscriptionDecoder`).
    """

    __slots__ = ("_decode", "_decode_booleans", "_max_readings", "_seconds", "_ts")

    def __init__(self, limits: LimitsConfig) -> None:
        self._max_readings = limits.max_readings_per_message
        self._decode = msgspec.json.Decoder(_ReadingIn | list[_ReadingIn]).decode
        self._decode_booleans = msgspec.json.Decoder(
            _ReadingInWithBooleans | list[_ReadingInWithBooleans]
        ).decode
        self._ts = TimestampParser()
        self._seconds = self._ts.seconds

    def __call__(
        self, payload: bytes, topic: str, fields: TopicFields, received_at: float
    ) -> list[Reading]:
        try:
            decoded = self._decode(payload)
        except msgspec.ValidationError:
            decoded = self._with_booleans(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise error_from_msgspec(exc, payload) from None
        if decoded.__class__ is not list:
            return [self._reading(decoded, topic, payload, fields, received_at)]  # type: ignore[arg-type]
        if not decoded:
            raise DecodeError("missing_field", "empty batch")
        if len(decoded) > self._max_readings:  # type: ignore[arg-type]
            raise DecodeError(
                "payload_too_large",
                f"batch of {len(decoded)} readings, max {self._max_readings}",  # type: ignore[arg-type]
            )
        return [self._reading(item, topic, payload, fields, received_at) for item in decoded]  # type: ignore[union-attr]

    def _with_booleans(self, payload: bytes) -> _ReadingIn | list[_ReadingIn]:
        try:
            decoded = self._decode_booleans(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise error_from_msgspec(exc, payload) from None
        for item in decoded if isinstance(decoded, list) else [decoded]:
            metrics = item.metrics
            for name, value in metrics.items():
                if value.__class__ is bool:
                    metrics[name] = 1.0 if value else 0.0  # same key: safe while iterating
        return decoded  # type: ignore[return-value]  # every metric is a float now

    def _reading(
        self,
        item: _ReadingIn,
        topic: str,
        payload: bytes,
        fields: TopicFields,
        received_at: float,
    ) -> Reading:
        device_id = item.device_id
        topic_device_id = fields[0]
        if device_id is UNSET or device_id != topic_device_id:
            device_id = resolve_device_id(
                None if device_id is UNSET else device_id,  # type: ignore[arg-type]
                topic_device_id,
            )
        metrics = item.metrics
        units = item.units
        if units is UNSET:
            units = {}
        elif not units.keys() <= metrics.keys():  # type: ignore[union-attr]
            # Devices often send one fixed units block; a unit of a metric not sent says nothing.
            units = {name: unit for name, unit in units.items() if name in metrics}  # type: ignore[union-attr]
        ts = item.ts
        ts_text = None
        # The canonical form, from the memory of seconds: one slice and two lookups.
        if ts.__class__ is str and len(ts) == 24 and ts[19] == "." and ts[23] == "Z":  # type: ignore[arg-type]
            whole = self._seconds.get(ts[:19])  # type: ignore[index]
            millis = MILLIS.get(ts[20:23])  # type: ignore[index]
            if whole is not None and millis is not None:
                ts_text = ts
                epoch = whole + millis
            else:
                epoch = self._ts(ts)
        else:
            epoch = self._ts(ts)
        seq = item.seq
        return Reading(
            device_id,  # type: ignore[arg-type]
            epoch,
            received_at,
            metrics,
            None if seq is UNSET else seq,  # type: ignore[arg-type]
            units,  # type: ignore[arg-type]
            fields[2],
            None,
            topic,
            payload,
            ts_text,  # type: ignore[arg-type]
        )
