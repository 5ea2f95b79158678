"""JSON reading payloads: one reading object, or an array of them (a batch)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, NotRequired

from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError, with_config

# pydantic needs typing_extensions.TypedDict on Python < 3.12; it is a dependency of pydantic.
from typing_extensions import TypedDict

from gateway.config import LimitsConfig
from gateway.decode.checks import QUOTE, error_from_validation, resolve_device_id
from gateway.errors import DecodeError
from gateway.model import Reading

# Epoch numbers above this are milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
EPOCH_MS_ABOVE = 1e11
# JSON whitespace (RFC 8259 §2), skipped to see whether a payload is an array.
_JSON_SPACE = b" \t\r\n"


# Strict: "21.4" is not a number and 1.0 is not a seq. A metric may be true/false (stored 1/0).
@with_config(ConfigDict(strict=True, allow_inf_nan=False))
class _ReadingIn(TypedDict):
    device_id: NotRequired[str]
    ts: str | float
    seq: NotRequired[int]
    metrics: dict[str, float | Annotated[bool, AfterValidator(float)]]
    units: NotRequired[dict[str, str]]


# A TypedDict is validated about a third faster than an equivalent BaseModel (no instance).
_ONE: TypeAdapter[_ReadingIn] = TypeAdapter(_ReadingIn)
_MANY: TypeAdapter[list[_ReadingIn]] = TypeAdapter(list[_ReadingIn])


def parse_ts(value: str | float) -> float:
    """Epoch seconds from ISO 8601 (naive means UTC), epoch seconds or epoch milliseconds."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
        except (ValueError, OverflowError):
            raise DecodeError("invalid_schema", f"ts {value[:QUOTE]!r} is not ISO 8601") from None
    seconds = float(value)
    return seconds / 1000.0 if seconds > EPOCH_MS_ABOVE else seconds


class JsonReadingDecoder:
    """`{"device_id", "ts", "seq"?, "metrics", "units"?}` or an array of those -> Readings.

    The device id may come from the payload, the topic, or both (then they must agree).
    Tags and the common checks are applied by the caller (`make_decoder`).
    """

    __slots__ = ("_max_readings",)

    def __init__(self, limits: LimitsConfig) -> None:
        self._max_readings = limits.max_readings_per_message

    def __call__(
        self, payload: bytes, device_id: str | None, metric: str | None, received_at: float
    ) -> list[Reading]:
        start = payload[:1]
        if start in _JSON_SPACE:
            start = payload.lstrip(_JSON_SPACE)[:1]
        try:
            if start != b"[":
                return [_to_reading(_ONE.validate_json(payload), device_id, received_at)]
            items = _MANY.validate_json(payload)
        except ValidationError as exc:
            raise error_from_validation(exc) from None
        if not items:
            raise DecodeError("missing_field", "empty batch")
        if len(items) > self._max_readings:
            raise DecodeError(
                "payload_too_large", f"batch of {len(items)} readings, max {self._max_readings}"
            )
        return [_to_reading(item, device_id, received_at) for item in items]


def _to_reading(item: _ReadingIn, topic_device_id: str | None, received_at: float) -> Reading:
    metrics = item["metrics"]
    units = item.get("units") or {}
    if units and not units.keys() <= metrics.keys():
        # Devices often send one fixed units block; a unit of a metric not sent says nothing.
        units = {name: unit for name, unit in units.items() if name in metrics}
    return Reading(
        device_id=resolve_device_id(item.get("device_id"), topic_device_id),
        ts=parse_ts(item["ts"]),
        received_at=received_at,
        metrics=metrics,
        seq=item.get("seq"),
        units=units,
    )
