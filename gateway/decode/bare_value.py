"""Bare value payloads: an ASCII number, its metric and device named by the topic."""

from __future__ import annotations

import math
import re

from gateway.config import LimitsConfig
from gateway.errors import DecodeError
from gateway.model import Reading
from gateway.topics import TopicFields

# A plain decimal, optionally signed, with exponent; surrounding whitespace (a trailing newline
# from `mosquitto_pub -l`) is allowed. Stricter than float(), which also takes "nan", "inf", "1_0".
_NUMBER = re.compile(rb"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")


class BareValueDecoder:
    """`b"21.5"` on `.../{device_id}/{metric}` -> one Reading timed at `received_at`."""

    __slots__ = ()

    def __init__(self, limits: LimitsConfig) -> None:
        del limits  # nothing to bound beyond the payload size, which the caller checks

    def __call__(
        self, payload: bytes, topic: str, fields: TopicFields, received_at: float
    ) -> list[Reading]:
        device_id, metric = fields.device_id, fields.metric
        if device_id is None or metric is None:
            raise DecodeError("missing_field", "a bare value needs {device_id} and {metric}")
        if _NUMBER.fullmatch(payload) is None:
            raise DecodeError("invalid_value", f"not a number: {payload[:32]!r}")
        value = float(payload)
        if not math.isfinite(value):  # e.g. 1e999
            raise DecodeError("invalid_value", f"not a finite number: {payload[:32]!r}")
        return [
            Reading(
                device_id=device_id,
                ts=received_at,
                received_at=received_at,
                metrics={metric: value},
                tags=fields.tags,
                topic=topic,
                payload=payload,
            )
        ]
