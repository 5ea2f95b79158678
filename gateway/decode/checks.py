"""Checks every decoded Reading passes, whatever its format (ids, metrics, time window)."""

from __future__ import annotations

import math
import re

import msgspec

from gateway.config import LimitsConfig
from gateway.decode.timestamps import QUOTE
from gateway.errors import DecodeError, RejectReason
from gateway.model import METRIC_NAME, UNIT_NAME, Reading
from gateway.topics import safe_name_pattern

# Sequence numbers end up in 64-bit columns downstream.
MAX_SEQ = 2**63 - 1
# Device ids, metric names and units found well-formed are remembered (they repeat with every
# reading); past this many the memory is cleared and refilled.
NAME_MEMORY = 16_384


_ANY_SAFE_ID = safe_name_pattern(128)
# NaN / Infinity / -Infinity as a JSON value (after a colon, a comma or an opening bracket).
_NON_FINITE = re.compile(rb"[:,\[]\s*-?(?:NaN|Infinity)\s*[,}\]]")


def resolve_device_id(payload_id: str | None, topic_id: str | None) -> str:
    """The one device id of a reading: the payload's and the topic's must agree when both exist."""
    if payload_id is None:
        if topic_id is None:
            raise DecodeError("missing_field", "no device_id in the payload or the topic")
        return topic_id
    if topic_id is not None and payload_id != topic_id:
        if not _ANY_SAFE_ID.fullmatch(payload_id):
            # An unsafe id (e.g. path traversal) is the graver fault: report that, not a mismatch.
            raise DecodeError("invalid_device_id", f"device_id {payload_id[:QUOTE]!r} is not safe")
        raise DecodeError(
            "device_id_mismatch",
            f"payload says {payload_id[:QUOTE]!r}, topic says {topic_id!r}",
        )
    return payload_id


def error_from_msgspec(
    exc: msgspec.DecodeError | UnicodeDecodeError, payload: bytes
) -> DecodeError:
    """Our reason for a msgspec error, and a detail in the payload's terms: where (the path in
    the payload), what was there and what was wanted (`metrics.temperature = "21.5": expected a
    number, got a string`), worked out from msgspec's message and the payload itself. Only
    rejected payloads pay for this.

    msgspec before 0.23 raises UnicodeDecodeError (not its DecodeError) for a string that is not
    UTF-8: both are invalid JSON here."""
    if isinstance(exc, UnicodeDecodeError):
        return DecodeError("invalid_json", "not valid JSON: not UTF-8 text")
    message = str(exc)
    reason: RejectReason
    if not isinstance(exc, msgspec.ValidationError):
        if _NON_FINITE.search(payload):
            # Not JSON (RFC 8259 §6), but what Python's json.dumps and some firmware send for a
            # broken sensor: a value problem, named as one.
            return DecodeError("invalid_value", "not a finite number (NaN or Infinity)")
        return DecodeError("invalid_json", _malformed(message))  # malformed, or not UTF-8
    if message.startswith("Object missing required field"):
        reason = "missing_field"
    elif message.startswith("Number out of range"):
        reason = "invalid_value"
    else:
        reason = "invalid_schema"
    return DecodeError(reason, _described(message, payload)[:200])


_EXPECTED = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`(?: - at `(?P<at>.+)`)?")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`(?: - at `(?P<at>.+)`)?")
_OUT_OF_RANGE = re.compile(r"Number out of range(?: - at `(?P<at>.+)`)?")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_WORDS = {
    "float": "a number",
    "int": "a whole number",
    "str": "a string",
    "bool": "a boolean",
    "null": "null",
    "object": "an object",
    "array": "an array",
}


def _malformed(message: str) -> str:
    if "truncated" in message:
        return "not valid JSON: it ends in the middle"
    if "UTF-8" in message:
        return "not valid JSON: not UTF-8 text"
    where = re.search(r"\(byte (\d+)\)", message)
    return "not valid JSON" + (f" at byte {where.group(1)}" if where else "")


def _described(message: str, payload: bytes) -> str:
    """msgspec's message about our schema, restated about the payload."""
    found = _EXPECTED.match(message)
    if found is not None:
        want = " or ".join(_WORDS.get(w, w) for w in found["want"].split(" | "))
        got = _WORDS.get(found["got"], found["got"])
        at = found["at"]
        if at is None:
            return f"the payload is {got}, expected {want}"
        path, value = _locate(at, payload, found["got"])
        shown = "" if value is _NOTHING else f" = {_json_text(value)}"
        return f"{path}{shown}: expected {want}, got {got}"
    found = _MISSING.match(message)
    if found is not None:
        where = f" in {_locate(found['at'], payload, 'object')[0]}" if found["at"] else ""
        return f"no {found['field']!r} field{where}"
    found = _OUT_OF_RANGE.match(message)
    if found is not None and found["at"]:
        return f"{_locate(found['at'], payload, 'float')[0]}: a number out of range"
    return message


_NOTHING = object()
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "float": (float,),
    "int": (int,),
    "str": (str,),
    "bool": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def _locate(at: str, payload: bytes, got: str) -> tuple[str, object]:
    """`$.metrics[...]` -> ("metrics.temperature", its value): msgspec does not name dict keys,
    so `[...]` is the first key whose value has the type it found."""
    try:
        value: object = msgspec.json.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError):
        value = _NOTHING
    parts: list[str] = []
    steps = list(_STEP.finditer(at))
    for index, step in enumerate(steps):
        key, item = step.group(1), step.group(2)
        if key is not None:
            parts.append(key)
            value = value.get(key, _NOTHING) if isinstance(value, dict) else _NOTHING
        elif item != "...":
            parts.append(f"[{item}]")
            position = int(item)
            ok = isinstance(value, list) and position < len(value)
            value = value[position] if ok else _NOTHING  # type: ignore[index]
        elif isinstance(value, dict):
            last = index == len(steps) - 1
            wanted = _JSON_TYPES.get(got, ()) if last else (dict, list)
            name = next(
                (k for k, v in value.items() if isinstance(v, wanted) and not _bool_as(v, got)),
                None,
            )
            parts.append(str(name) if name is not None else "[...]")
            value = value[name] if name is not None else _NOTHING
        else:
            parts.append("[...]")
            value = _NOTHING
    path = ".".join(parts).replace(".[", "[") or "the payload"
    return path, value


def _bool_as(value: object, got: str) -> bool:
    # JSON true/false decode as bool, a subclass of int: not what an `int` error means.
    return isinstance(value, bool) and got in ("int", "float")


def _json_text(value: object) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= QUOTE else text[: QUOTE - 3] + "..."


class ReadingCheck:
    """Raises DecodeError unless every Reading of a message is one we store: a safe device id,
    1..max_metrics well-named finite float metrics (JSON booleans become 1.0/0.0), units only for
    those metrics, device time within the window around `received_at`, and a non-negative int seq
    when there is one.

    The common case is checked in a few C-level set and sum operations per reading (names, units
    and device ids seen before are remembered); only a reading that fails them is looked at
    value by value, to find and name what is wrong.
    """

    __slots__ = (
        "_device_ok",
        "_good_devices",
        "_good_names",
        "_good_units",
        "_max_future_s",
        "_max_metrics",
        "_max_past_s",
    )

    def __init__(self, limits: LimitsConfig) -> None:
        self._device_ok = safe_name_pattern(limits.max_device_id_length).fullmatch
        self._good_devices: set[str] = set()
        self._good_names: set[str] = set()
        self._good_units: set[str] = set()
        self._max_metrics = limits.max_metrics
        self._max_past_s = limits.max_past_s
        self._max_future_s = limits.max_future_s

    def __call__(self, readings: list[Reading]) -> None:
        good_devices = self._good_devices
        good_names = self._good_names
        max_metrics = self._max_metrics
        isfinite = math.isfinite
        # Every reading of a message shares its received_at: one window for all.
        received_at = readings[0].received_at if readings else 0.0
        earliest = received_at - self._max_past_s
        latest = received_at + self._max_future_s
        for reading in readings:
            if reading.device_id not in good_devices:
                self._check_device(reading.device_id)
            metrics = reading.metrics
            if not 0 < len(metrics) <= max_metrics or not good_names.issuperset(metrics):
                self._check_names(metrics)
            # Finite floats sum to a finite float; anything else (a bool, an int, NaN, an
            # infinity, or a sum that overflows) takes the exact look.
            total = sum(metrics.values())
            if total.__class__ is not float or not isfinite(total):
                self._check_values(metrics)
            if not earliest <= reading.ts <= latest or reading.received_at != received_at:
                self._check_time(reading)
            seq = reading.seq
            if seq is not None and (seq.__class__ is not int or not 0 <= seq <= MAX_SEQ):
                # No str(seq): a huge int cannot be printed (sys.get_int_max_str_digits).
                raise DecodeError("invalid_value", "seq is not an int in 0..2**63-1")
            units = reading.units
            if units and not (
                units.keys() <= metrics.keys() and self._good_units.issuperset(units.values())
            ):
                self._check_units(units, metrics)

    def _check_time(self, reading: Reading) -> None:
        received_at, ts = reading.received_at, reading.ts
        if not received_at - self._max_past_s <= ts <= received_at + self._max_future_s:
            raise DecodeError(
                "ts_out_of_range",
                f"ts is {ts - received_at:+.0f} s from receipt; "
                f"allowed -{self._max_past_s:.0f}..+{self._max_future_s:.0f} s",
            )

    def _check_device(self, device_id: str) -> None:
        if self._device_ok(device_id) is None:
            raise DecodeError("invalid_device_id", f"device id {device_id[:QUOTE]!r}")
        _remember(self._good_devices, device_id)

    def _check_names(self, metrics: dict[str, float]) -> None:
        count = len(metrics)
        if count == 0:
            raise DecodeError("missing_field", "no metrics")
        if count > self._max_metrics:
            raise DecodeError("too_many_metrics", f"{count} metrics, max {self._max_metrics}")
        for name in metrics:
            if name not in self._good_names:
                if METRIC_NAME.fullmatch(name) is None:
                    raise DecodeError("invalid_metric", f"metric name {name[:QUOTE]!r}")
                _remember(self._good_names, name)

    @staticmethod
    def _check_values(metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            # Exactly float: JSON booleans are stored as 1/0; anything else is a decoder bug we
            # would rather reject than write.
            if value.__class__ is not float:
                if value.__class__ is not bool:
                    raise DecodeError("invalid_value", f"metric {name!r} is {type(value).__name__}")
                metrics[name] = 1.0 if value else 0.0  # same key: safe while iterating
            elif not math.isfinite(value):
                raise DecodeError("invalid_value", f"metric {name!r} = {value!r}")

    def _check_units(self, units: dict[str, str], metrics: dict[str, float]) -> None:
        for name, unit in units.items():
            if name not in metrics:
                raise DecodeError("invalid_schema", f"unit for unknown metric {name[:QUOTE]!r}")
            if unit.__class__ is not str or unit not in self._good_units:
                if unit.__class__ is not str or UNIT_NAME.fullmatch(unit) is None:
                    raise DecodeError("invalid_schema", f"unit of {name!r}: {str(unit)[:QUOTE]!r}")
                _remember(self._good_units, unit)


def _remember(names: set[str], name: str) -> None:
    if len(names) >= NAME_MEMORY:
        names.clear()
    names.add(name)
