"""RFC 8428 SenML JSON packs -> one Reading per device and resolved time."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from gateway.config import LimitsConfig
from gateway.decode.checks import error_from_msgspec, resolve_device_id
from gateway.decode.timestamps import QUOTE
from gateway.errors import DecodeError
from gateway.model import Reading
from gateway.topics import TopicFields

# RFC 8428 §4.5.3: a resolved time below 2**28 is relative to now (here: when we received it).
RELATIVE_TIME_BELOW = 2.0**28
# RFC 8428 §4.4: the SenML version this decoder understands.
SENML_VERSION = 10


class _Record(msgspec.Struct, gc=False):
    """One SenML record (§4); a field not sent is UNSET. Unknown fields are ignored here and
    looked at separately, because must-understand ones (ending in "_", §4.4) refuse the pack."""

    bn: str | UnsetType = UNSET
    bt: float | UnsetType = UNSET
    bu: str | UnsetType = UNSET
    bv: float | UnsetType = UNSET
    bs: float | UnsetType = UNSET
    bver: int | UnsetType = UNSET
    n: str | UnsetType = UNSET
    u: str | UnsetType = UNSET
    v: float | UnsetType = UNSET
    vs: str | UnsetType = UNSET
    vb: bool | UnsetType = UNSET
    vd: str | UnsetType = UNSET
    s: float | UnsetType = UNSET
    t: float | UnsetType = UNSET
    ut: float | UnsetType = UNSET


_KNOWN = frozenset(_Record.__struct_fields__)


def device_id_from_base_name(base_name: str) -> str:
    """`urn:dev:ow:10e2073a01080063:` -> `10e2073a01080063`; `site/dev-1/` -> `dev-1`."""
    name = base_name.rstrip(":/")
    return name[max(name.rfind(":"), name.rfind("/")) + 1 :]


class SenmlDecoder:
    """A SenML pack (a JSON array of records) -> Readings.

    Base fields carry over to later records (§4.6). The metric name is the record's relative `n`;
    the device comes from the topic's {device_id} and/or the base name, which must agree.
    String and data values (vs, vd) and sums (s) have no place in a Reading and are refused.
    """

    __slots__ = ("_decode", "_decode_any", "_max_readings")

    def __init__(self, limits: LimitsConfig) -> None:
        self._max_readings = limits.max_readings_per_message
        self._decode = msgspec.json.Decoder(list[_Record]).decode
        self._decode_any = msgspec.json.Decoder(list[dict[str, Any]]).decode

    def __call__(
        self, payload: bytes, topic: str, fields: TopicFields, received_at: float
    ) -> list[Reading]:
        device_id = fields.device_id
        try:
            records = self._decode(payload)
            # A label ending in "_" can only be in a payload holding `_"`: pay for a second look
            # only then.
            if b'_"' in payload:
                _refuse_must_understand(self._decode_any(payload))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise error_from_msgspec(exc, payload) from None
        readings: dict[tuple[str, float], Reading] = {}
        base_time = 0.0
        base_unit: str | None = None
        base_value = 0.0
        # The topic's device, until a bn names one; like every base field it carries over (§4.6).
        record_device = device_id
        for index, record in enumerate(records):
            if record.bver is not UNSET and record.bver > SENML_VERSION:
                raise DecodeError("unsupported_value", f"[{index}] bver {record.bver}")
            if record.bn is not UNSET:
                record_device = resolve_device_id(device_id_from_base_name(record.bn), device_id)
            if record.bt is not UNSET:
                base_time = record.bt
            if record.bu is not UNSET:
                base_unit = record.bu
            if record.bv is not UNSET:
                base_value = record.bv
            if record.v is not UNSET:
                if record.vb is not UNSET:
                    raise DecodeError("invalid_schema", f"[{index}] both v and vb")
                value = base_value + record.v
            elif record.vb is not UNSET:
                value = 1.0 if record.vb else 0.0
            elif record.vs is not UNSET or record.vd is not UNSET or record.s is not UNSET:
                raise DecodeError("unsupported_value", f"[{index}] string, data or sum value")
            elif record.n is UNSET:
                continue  # a record of base fields only
            else:
                raise DecodeError("missing_field", f"[{index}] record without a value")
            name = record.n
            if name is UNSET:
                raise DecodeError("missing_field", f"[{index}] record without n")
            if record_device is None:
                raise DecodeError("missing_field", "no device_id in the topic and no bn")
            ts = base_time + (0.0 if record.t is UNSET else record.t)
            if ts < RELATIVE_TIME_BELOW:
                ts += received_at
            key = (record_device, ts)
            reading = readings.get(key)
            if reading is None:
                if len(readings) == self._max_readings:
                    raise DecodeError(
                        "payload_too_large", f"more than {self._max_readings} readings in a pack"
                    )
                reading = Reading(
                    record_device,
                    ts,
                    received_at,
                    {},
                    tags=fields.tags,
                    topic=topic,
                    payload=payload,
                )
                readings[key] = reading
            elif name in reading.metrics:
                raise DecodeError("invalid_schema", f"[{index}] {name[:QUOTE]!r} twice at one time")
            reading.metrics[name] = value
            unit = base_unit if record.u is UNSET else record.u
            if unit is not None:
                reading.units[name] = unit
        if not readings:
            raise DecodeError("missing_field", "no records with a value")
        return list(readings.values())


def _refuse_must_understand(records: list[dict[str, Any]]) -> None:
    """RFC 8428 §4.4: a field whose label ends in "_" must be understood or the pack refused."""
    for index, record in enumerate(records):
        for label in record:
            if label.endswith("_") and label not in _KNOWN:
                raise DecodeError(
                    "unsupported_value", f"[{index}] must-understand field {label[:QUOTE]!r}"
                )
