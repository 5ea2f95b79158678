"""RFC 8428 SenML JSON packs -> one Reading per device and resolved time."""

from __future__ import annotations

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

# pydantic needs typing_extensions.TypedDict on Python < 3.12; it is a dependency of pydantic.
from typing_extensions import TypedDict

from gateway.config import LimitsConfig
from gateway.decode.checks import QUOTE, error_from_validation, resolve_device_id
from gateway.errors import DecodeError
from gateway.model import Reading

# RFC 8428 §4.5.3: a resolved time below 2**28 is relative to now (here: when we received it).
RELATIVE_TIME_BELOW = 2.0**28
# RFC 8428 §4.4: the SenML version this decoder understands.
SENML_VERSION = 10


# Extra keys are kept only so that must-understand ones (ending in "_", §4.4) can be refused.
@with_config(ConfigDict(strict=True, allow_inf_nan=False, extra="allow"))
class _Record(TypedDict, total=False):
    bn: str
    bt: float
    bu: str
    bv: float
    bs: float
    bver: int
    n: str
    u: str
    v: float
    vs: str
    vb: bool
    vd: str
    s: float
    t: float
    ut: float


_PACK: TypeAdapter[list[_Record]] = TypeAdapter(list[_Record])
_KNOWN = frozenset(_Record.__annotations__)


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

    __slots__ = ("_max_readings",)

    def __init__(self, limits: LimitsConfig) -> None:
        self._max_readings = limits.max_readings_per_message

    def __call__(
        self, payload: bytes, device_id: str | None, metric: str | None, received_at: float
    ) -> list[Reading]:
        try:
            records = _PACK.validate_json(payload)
        except ValidationError as exc:
            raise error_from_validation(exc) from None
        readings: dict[tuple[str, float], Reading] = {}
        base_time = 0.0
        base_unit: str | None = None
        base_value = 0.0
        # The topic's device, until a bn names one; like every base field it carries over (§4.6).
        record_device = device_id
        for index, record in enumerate(records):
            if "bver" in record and record["bver"] > SENML_VERSION:
                raise DecodeError("unsupported_value", f"[{index}] bver {record['bver']}")
            if not _KNOWN.issuperset(record):
                _refuse_must_understand(record, index)
            if "bn" in record:
                record_device = resolve_device_id(device_id_from_base_name(record["bn"]), device_id)
            if "bt" in record:
                base_time = record["bt"]
            if "bu" in record:
                base_unit = record["bu"]
            if "bv" in record:
                base_value = record["bv"]
            if "v" in record:
                if "vb" in record:
                    raise DecodeError("invalid_schema", f"[{index}] both v and vb")
                value = base_value + record["v"]
            elif "vb" in record:
                value = 1.0 if record["vb"] else 0.0
            elif "vs" in record or "vd" in record or "s" in record:
                raise DecodeError("unsupported_value", f"[{index}] string, data or sum value")
            elif "n" not in record:
                continue  # a record of base fields only
            else:
                raise DecodeError("missing_field", f"[{index}] record without a value")
            name = record.get("n")
            if name is None:
                raise DecodeError("missing_field", f"[{index}] record without n")
            if record_device is None:
                raise DecodeError("missing_field", "no device_id in the topic and no bn")
            ts = base_time + record.get("t", 0.0)
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
                    device_id=record_device, ts=ts, received_at=received_at, metrics={}
                )
                readings[key] = reading
            elif name in reading.metrics:
                raise DecodeError("invalid_schema", f"[{index}] {name[:QUOTE]!r} twice at one time")
            reading.metrics[name] = value
            unit = record.get("u", base_unit)
            if unit is not None:
                reading.units[name] = unit
        if not readings:
            raise DecodeError("missing_field", "no records with a value")
        return list(readings.values())


def _refuse_must_understand(record: _Record, index: int) -> None:
    """RFC 8428 §4.4: a field whose label ends in "_" must be understood or the pack refused."""
    for label in record:
        if label not in _KNOWN and label.endswith("_"):
            raise DecodeError(
                "unsupported_value", f"[{index}] must-understand field {label[:QUOTE]!r}"
            )
