"""Fault kinds, how often each is injected, and the reason the gateway rejects each with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import REJECT_REASONS
from gateway.manifest import FAULT_KINDS, FORMATS
from simulators.preset_payloads import PRESET_REASONS

# Kinds that leave the reading valid: the gateway stores it (perhaps twice, perhaps late).
NOT_REJECTED = frozenset({"duplicate", "out_of_order", "disconnect"})

# What the gateway does with each broken payload, read from gateway/decode (make_decoder, the
# format decoders, ReadingCheck) and the demo config's check_range step (temperature -60..150,
# action reject). tests/test_simulator_payloads.py runs every label through the real decoder.
_JSON: dict[str, str] = {
    "malformed_json": "invalid_json",  # pydantic json_invalid
    "missing_field": "missing_field",  # "metrics" dropped
    "wrong_type": "invalid_schema",  # "metrics" is a string
    "out_of_range": "out_of_range",  # check_range, a transform
    "clock_skew": "ts_out_of_range",  # limits.max_future_s (300 s) < 2 days
    "oversized": "payload_too_large",  # checked before anything else
}
# SenML: the same reasons; missing_field drops every "v", wrong_type makes "v" a string.
_SENML: dict[str, str] = dict(_JSON)
_BARE: dict[str, str] = {
    # A bare value is not JSON: a payload that is not a number is an invalid value.
    "malformed_json": "invalid_value",
    "out_of_range": "out_of_range",
    "oversized": "payload_too_large",
    # The device id is a topic level: ".." is not a safe id (alnum first).
    "path_traversal": "invalid_device_id",
}


def reasons_for(fmt: str, topic_has_device_id: bool) -> dict[str, str | None]:
    """Kind -> expected reason (None: not rejected) for every kind that applies to `fmt`.

    path_traversal puts "../../etc/passwd" in the payload's device id, which is not a safe id:
    invalid_device_id (the gateway reports that before any mismatch with the topic's id). A SenML
    base name is cut at its last "/" (it may be a URN or a path), so "../../etc/passwd:" names
    device "passwd": only the mismatch with the topic's {device_id} catches it, and without one
    it is not a fault at all. Bare values have no timestamp, no fields and no types, so
    clock_skew, missing_field and wrong_type do not apply.
    """
    reasons: dict[str, str | None]
    if fmt in ("json", "json_batch"):
        reasons = dict(_JSON)
        reasons["path_traversal"] = "invalid_device_id"
    elif fmt == "senml":
        reasons = dict(_SENML)
        if topic_has_device_id:
            reasons["path_traversal"] = "device_id_mismatch"
    elif fmt == "bare":
        reasons = dict(_BARE)
    elif fmt in PRESET_REASONS:
        reasons = dict(PRESET_REASONS[fmt])
        if not topic_has_device_id:
            reasons.pop("path_traversal", None)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    for kind in sorted(NOT_REJECTED):
        reasons[kind] = None
    return {kind: reasons[kind] for kind in FAULT_KINDS if kind in reasons}


def parse_fault_arg(text: str) -> tuple[str, float]:
    """`KIND=RATE` (from --fault) -> (kind, rate); ValueError naming the problem."""
    kind, sep, rate_text = text.partition("=")
    kind = kind.strip()
    if not sep:
        raise ValueError(f"--fault {text!r}: expected KIND=RATE, e.g. malformed_json=0.01")
    if kind not in FAULT_KINDS:
        raise ValueError(f"--fault {text!r}: unknown kind; kinds: {', '.join(FAULT_KINDS)}")
    try:
        rate = float(rate_text)
    except ValueError:
        raise ValueError(f"--fault {text!r}: rate {rate_text!r} is not a number") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--fault {text!r}: rate must be in 0..1")
    return kind, rate


@dataclass(frozen=True)
class FaultPlan:
    """Which kinds are injected at which rate.

    A message's kind is picked from a uniform draw against the cumulative rates, so a rate is a
    probability per reading and the kinds never overlap on one reading.
    """

    rates: tuple[tuple[str, float], ...] = ()

    @classmethod
    def build(
        cls,
        fmt: str,
        topic_has_device_id: bool,
        fault_rate: float = 0.0,
        per_kind: Iterable[tuple[str, float]] = (),
    ) -> FaultPlan:
        """`fault_rate` spread evenly over the kinds that apply; `per_kind` rates override."""
        applicable = reasons_for(fmt, topic_has_device_id)
        rates = dict.fromkeys(applicable, fault_rate / len(applicable))
        for kind, rate in per_kind:
            if kind not in applicable:
                raise ValueError(f"fault {kind!r} does not apply to format {fmt!r}")
            rates[kind] = rate
        total = sum(rates.values())
        if total > 1.0:
            raise ValueError(f"fault rates add up to {total:g}, more than 1")
        return cls(rates=tuple((k, r) for k, r in rates.items() if r > 0))

    def __bool__(self) -> bool:
        return bool(self.rates)

    def pick(self, u: float) -> str | None:
        """The kind for a reading whose draw is `u` in [0, 1), or None for a clean one."""
        for kind, rate in self.rates:
            if u < rate:
                return kind
            u -= rate
        return None

    def rates_by_kind(self) -> Mapping[str, float]:
        return dict(self.rates)


def check_reasons_known() -> None:
    """Every label must be one of the gateway's reasons (they are metric labels there)."""
    for fmt in FORMATS:
        for has_id in (True, False):
            for kind, reason in reasons_for(fmt, has_id).items():
                if reason is not None and reason not in REJECT_REASONS:
                    raise AssertionError(f"{fmt}/{kind}: {reason!r} is not a gateway reason")


check_reasons_known()
