"""Payload makers for the formats the gateway accepts, valid and deliberately broken.

Every maker is a pure function of its arguments: the same reading always gives the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

# The gateway's default limits.max_payload_bytes; an oversized payload goes 1 KiB past it.
MAX_PAYLOAD_BYTES = 65_536
OVERSIZED_BYTES = MAX_PAYLOAD_BYTES + 1024
# Further ahead than the gateway's limits.max_future_s (300 s) allows.
CLOCK_SKEW_MS = 2 * 86_400 * 1000
TRAVERSAL_DEVICE_ID = "../../etc/passwd"
# The device-id topic level of a bare value's path traversal (a topic level cannot hold "/").
TRAVERSAL_TOPIC_LEVEL = ".."
# Far outside the demo config's check_range on temperature (-60..150).
OUT_OF_RANGE_METRIC = "temperature"
OUT_OF_RANGE_VALUE = 1e6

Values = Mapping[str, float]
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


def format_ts(ts_ms: int) -> str:
    """`2026-11-25T11:00:00.123Z`: ISO 8601, UTC, milliseconds."""
    seconds, ms = divmod(ts_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def reading_object(
    device_id: str, ts_ms: int, seq: int, metrics: Values, units: Mapping[str, str]
) -> dict[str, object]:
    """One JSON reading as a dict, keys in the documented order."""
    obj: dict[str, object] = {
        "device_id": device_id,
        "ts": format_ts(ts_ms),
        "seq": seq,
        "metrics": dict(metrics),
    }
    if units:
        obj["units"] = dict(units)
    return obj


def json_payload(obj: Mapping[str, object]) -> bytes:
    return _dumps(obj).encode()


def json_batch_payload(objs: Sequence[Mapping[str, object]]) -> bytes:
    return _dumps(list(objs)).encode()


def senml_records(
    device_id: str, ts_ms: int, metrics: Values, units: Mapping[str, str]
) -> list[dict[str, object]]:
    """RFC 8428 records: base name and base time on the first, one record per metric."""
    records: list[dict[str, object]] = []
    for name, value in metrics.items():
        record: dict[str, object] = {}
        if not records:
            record["bn"] = f"{device_id}:"
            record["bt"] = ts_ms / 1000
        record["n"] = name
        if name in units:
            record["u"] = units[name]
        record["v"] = value
        records.append(record)
    return records


def senml_payload(device_id: str, ts_ms: int, metrics: Values, units: Mapping[str, str]) -> bytes:
    return _dumps(senml_records(device_id, ts_ms, metrics, units)).encode()


def bare_payload(value: float) -> bytes:
    """`b"21.4"`: the number alone; its device and metric are topic levels."""
    return _dumps(value).encode()


# --- deliberately broken -------------------------------------------------------------------------


def _padding(size_now: int) -> str:
    return "x" * max(0, OVERSIZED_BYTES - size_now)


def broken_json_object(
    kind: str, *, device_id: str, ts_ms: int, seq: int, metrics: Values, units: Mapping[str, str]
) -> dict[str, object]:
    """A JSON reading broken one way (not malformed_json/oversized, which break the bytes)."""
    obj = reading_object(device_id, ts_ms, seq, metrics, units)
    if kind == "missing_field":
        del obj["metrics"]
        obj.pop("units", None)
    elif kind == "wrong_type":
        obj["metrics"] = ",".join(f"{k}={v}" for k, v in metrics.items())
    elif kind == "out_of_range":
        obj["metrics"] = {OUT_OF_RANGE_METRIC: OUT_OF_RANGE_VALUE}
        obj["units"] = {OUT_OF_RANGE_METRIC: "Cel"}
    elif kind == "clock_skew":
        obj["ts"] = format_ts(ts_ms + CLOCK_SKEW_MS)
    elif kind == "path_traversal":
        obj["device_id"] = TRAVERSAL_DEVICE_ID
    else:
        raise ValueError(f"{kind!r} does not break a JSON object")
    return obj


def truncate(payload: bytes) -> bytes:
    """Cut a JSON text in the middle: never valid JSON, still recognisably the reading."""
    return payload[: max(1, len(payload) // 2)]


def broken_json(
    kind: str,
    *,
    device_id: str,
    ts_ms: int,
    seq: int,
    metrics: Values,
    units: Mapping[str, str],
    batch: bool,
) -> bytes:
    """A broken JSON reading (or a batch holding only it)."""
    wrap = json_batch_payload if batch else json_payload
    if kind in ("malformed_json", "oversized"):
        obj = reading_object(device_id, ts_ms, seq, metrics, units)
        valid = wrap([obj] if batch else obj)  # type: ignore[arg-type]
        if kind == "malformed_json":
            return truncate(valid)
        obj["padding"] = _padding(len(valid) + len(',"padding":""'))
        return wrap([obj] if batch else obj)  # type: ignore[arg-type]
    obj = broken_json_object(
        kind, device_id=device_id, ts_ms=ts_ms, seq=seq, metrics=metrics, units=units
    )
    return wrap([obj] if batch else obj)  # type: ignore[arg-type]


def broken_senml(
    kind: str, device_id: str, ts_ms: int, metrics: Values, units: Mapping[str, str]
) -> bytes:
    """A broken SenML pack."""
    if kind == "out_of_range":
        metrics, units = {OUT_OF_RANGE_METRIC: OUT_OF_RANGE_VALUE}, {OUT_OF_RANGE_METRIC: "Cel"}
    records = senml_records(device_id, ts_ms, metrics, units)
    if kind == "malformed_json":
        return truncate(_dumps(records).encode())
    if kind == "missing_field":
        for record in records:
            del record["v"]
    elif kind == "wrong_type":
        for record in records:
            record["v"] = str(record["v"])
    elif kind == "clock_skew":
        records[0]["bt"] = (ts_ms + CLOCK_SKEW_MS) / 1000
    elif kind == "path_traversal":
        records[0]["bn"] = f"{TRAVERSAL_DEVICE_ID}:"
    elif kind == "oversized":
        # A string value would be refused anyway; the size check comes first.
        size = len(_dumps(records)) + len(',{"n":"padding","vs":""}')
        records.append({"n": "padding", "vs": _padding(size)})
    elif kind != "out_of_range":
        raise ValueError(f"{kind!r} does not break a SenML pack")
    return _dumps(records).encode()


def broken_bare(kind: str, device_id: str, seq: int, value: float) -> bytes:
    """A broken bare value (path_traversal breaks the topic instead, see TRAVERSAL_TOPIC_LEVEL).

    The malformed value names its device and seq, so two of them never share a digest.
    """
    if kind == "malformed_json":
        return f"{value}?{device_id}#{seq}".encode()
    if kind == "out_of_range":
        return bare_payload(OUT_OF_RANGE_VALUE)
    if kind == "oversized":
        text = bare_payload(value)
        return text + b" " * (OVERSIZED_BYTES - len(text))
    if kind == "path_traversal":
        return bare_payload(value)
    raise ValueError(f"{kind!r} does not break a bare value")
