"""convert_units: convert one metric from one unit to another (e.g. degF -> degC)."""

from __future__ import annotations

import math
from typing import NamedTuple

from gateway.config import ConvertUnitsStep
from gateway.errors import RejectReason
from gateway.model import Reading
from gateway.transforms.verdict import Verdict


class _Unit(NamedTuple):
    """value_in_base = value * scale + offset."""

    dimension: str
    scale: float
    offset: float


# Base units: K, Pa, m/s. Names include the SenML ones (RFC 8428 §12.1: Cel, K, Pa, m/s).
UNITS: dict[str, _Unit] = {
    "K": _Unit("temperature", 1.0, 0.0),
    "Cel": _Unit("temperature", 1.0, 273.15),
    "degC": _Unit("temperature", 1.0, 273.15),
    "degF": _Unit("temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    "Pa": _Unit("pressure", 1.0, 0.0),
    "hPa": _Unit("pressure", 100.0, 0.0),
    "kPa": _Unit("pressure", 1000.0, 0.0),
    "m/s": _Unit("speed", 1.0, 0.0),
    "km/h": _Unit("speed", 1.0 / 3.6, 0.0),
}


class ConvertUnits:
    """Converts `metric` from `from_unit` to `to_unit` and records `to_unit` in `units`.

    A reading that names no unit for the metric is taken to be in `from_unit`; one whose unit is
    another name for the same unit (Cel for degC) is converted too; any other unit is left alone.
    An unknown unit or a pair of different dimensions is a ValueError when the step is built; a
    result too large for a float is rejected ("invalid_value").
    """

    __slots__ = ("_accepted", "_from_unit", "_metric", "_offset", "_scale", "_to_unit")

    def __init__(self, step: ConvertUnitsStep) -> None:
        source, target = UNITS.get(step.from_unit), UNITS.get(step.to_unit)
        known = ", ".join(UNITS)
        if source is None:
            raise ValueError(f"convert_units: unknown from_unit {step.from_unit!r} (know {known})")
        if target is None:
            raise ValueError(f"convert_units: unknown to_unit {step.to_unit!r} (know {known})")
        if source.dimension != target.dimension:
            raise ValueError(
                f"convert_units: cannot convert {source.dimension} ({step.from_unit}) "
                f"to {target.dimension} ({step.to_unit})"
            )
        self._metric = step.metric
        self._from_unit = step.from_unit
        self._to_unit = step.to_unit
        self._accepted = frozenset(name for name, unit in UNITS.items() if unit == source)
        # to = (from * s1 + o1 - o2) / s2, folded into one multiply-add.
        self._scale = source.scale / target.scale
        self._offset = (source.offset - target.offset) / target.scale

    def __call__(self, readings: list[Reading]) -> Verdict:
        metric, accepted, scale, offset = self._metric, self._accepted, self._scale, self._offset
        kept: list[Reading] = []
        rejected: list[tuple[Reading, RejectReason, str]] = []
        for reading in readings:
            value = reading.metrics.get(metric)
            if value is None or reading.units.get(metric, self._from_unit) not in accepted:
                kept.append(reading)
                continue
            converted = value * scale + offset
            if not math.isfinite(converted):  # 1e308 kPa -> Pa; the file sink refuses inf
                detail = f"{metric} = {value!r} {self._from_unit} overflows"
                rejected.append((reading, "invalid_value", detail))
                continue
            reading.metrics[metric] = converted
            reading.units[metric] = self._to_unit
            kept.append(reading)
        return Verdict(kept, rejected)
