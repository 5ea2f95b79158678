"""What every decoded Reading must be, checked independently of the decoder's own code."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from gateway.config import LimitsConfig
from gateway.errors import REJECT_REASONS, DecodeError
from gateway.model import Reading, Rejection, format_ts
from gateway.sinks.lines import LineEncoder

# 2026-11-25T11:00:00Z, the day of the examples in the brief.
NOW = 1_795_604_400.0

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")


def assert_valid_readings(readings: object, limits: LimitsConfig, received_at: float) -> None:
    """Fail unless `readings` is a non-empty list of Readings we would store."""
    assert isinstance(readings, list)
    assert readings, "a decoder never returns no readings (the message could never be acked)"
    assert len(readings) <= limits.max_readings_per_message
    for reading in readings:
        assert isinstance(reading, Reading)
        assert type(reading.device_id) is str
        assert _SAFE_ID.fullmatch(reading.device_id)
        assert len(reading.device_id) <= limits.max_device_id_length
        assert 1 <= len(reading.metrics) <= limits.max_metrics
        for name, value in reading.metrics.items():
            assert _METRIC.fullmatch(name), name
            assert type(value) is float
            assert math.isfinite(value)
        assert type(reading.ts) is float
        assert received_at - limits.max_past_s <= reading.ts <= received_at + limits.max_future_s
        assert reading.received_at == received_at
        assert reading.seq is None or (type(reading.seq) is int and 0 <= reading.seq < 2**63)
        assert set(reading.units) <= set(reading.metrics)
        assert all(type(unit) is str for unit in reading.units.values())
        assert "device_id" not in reading.tags
        assert "metric" not in reading.tags
        [encoded] = LineEncoder()([reading]).values()  # the file sink can write it
        assert encoded.endswith(b"\n")
        assert json.loads(encoded) == expected_record(reading)


def expected_record(reading: Reading) -> dict[str, Any]:
    """The line a reading must become in a data file (README, Files), built independently of the
    sink's encoder."""
    record: dict[str, Any] = {
        "device_id": reading.device_id,
        "ts": format_ts(reading.ts),
        "received_at": format_ts(reading.received_at),
        "seq": reading.seq,
        "metrics": reading.metrics,
        "units": reading.units,
        "tags": reading.tags,
    }
    if reading.flags:
        record["flags"] = reading.flags
    return record


def line_of(reading: Reading) -> bytes:
    """A data-file line for `reading`, for tests that write segment files themselves."""
    return json.dumps(expected_record(reading), separators=(",", ":")).encode() + b"\n"


def expected_dead_letter(rejection: Rejection, max_payload_bytes: int) -> dict[str, Any]:
    """The dead-letter record a rejection must become (README, Files), built independently."""
    body = rejection.payload[:max_payload_bytes]
    record: dict[str, Any] = {
        "received_at": format_ts(rejection.received_at),
        "topic": rejection.topic,
        "reason": rejection.reason,
        "detail": rejection.detail,
    }
    try:
        record["payload"] = body.decode()
        record["payload_encoding"] = "utf-8"
    except UnicodeDecodeError:
        record["payload"] = base64.b64encode(body).decode()
        record["payload_encoding"] = "base64"
    full = rejection.payload_bytes or len(rejection.payload)
    if len(body) < full:
        record["payload_truncated"] = True
        record["payload_bytes"] = full
        record["payload_sha256"] = (
            rejection.payload_sha256 or hashlib.sha256(rejection.payload).hexdigest()
        )
    return record


def dead_letter_line_of(rejection: Rejection, max_payload_bytes: int = 1024 * 1024) -> bytes:
    """A dead-letter line, for tests that write dead-letter files themselves."""
    record = expected_dead_letter(rejection, max_payload_bytes)
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def decode_or_reason(
    decode: Callable[[str, bytes, float], list[Reading]],
    topic: str,
    payload: bytes,
    received_at: float = NOW,
) -> list[Reading] | str:
    """The readings, or the reason of the DecodeError (which must be one of ours)."""
    try:
        return decode(topic, payload, received_at)
    except DecodeError as exc:
        reason = exc.reason
    assert reason in REJECT_REASONS, reason
    return reason


def reason_of(
    decode: Callable[[str, bytes, float], list[Reading]],
    topic: str,
    payload: bytes,
    received_at: float = NOW,
) -> str:
    """The reason `decode` refuses the message; fails when it is accepted."""
    result = decode_or_reason(decode, topic, payload, received_at)
    assert isinstance(result, str), f"expected a rejection, got {result!r}"
    return result
