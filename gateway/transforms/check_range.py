"""check_range: reject or flag a reading whose metric is outside [min, max]."""

from __future__ import annotations

import math

from gateway.config import CheckRangeStep
from gateway.errors import RejectReason
from gateway.model import Reading
from gateway.transforms.verdict import Verdict


class CheckRange:
    """Checks one metric against [min, max] (either bound may be open).

    action "reject" rejects the reading as "out_of_range"; action "flag" keeps it and adds
    `<metric>:out_of_range` to its flags. A reading without the metric passes untouched.
    """

    __slots__ = ("_flag", "_high", "_low", "_metric", "_reject")

    def __init__(self, step: CheckRangeStep) -> None:
        if step.min is None and step.max is None:
            raise ValueError(f"check_range on {step.metric!r}: give min, max or both")
        if step.min is not None and step.max is not None and step.min > step.max:
            raise ValueError(f"check_range on {step.metric!r}: min {step.min} > max {step.max}")
        self._metric = step.metric
        # Open bounds become infinities so the hot path is two comparisons.
        self._low = -math.inf if step.min is None else step.min
        self._high = math.inf if step.max is None else step.max
        self._reject = step.action == "reject"
        self._flag = f"{step.metric}:out_of_range"

    def __call__(self, readings: list[Reading]) -> Verdict:
        metric, low, high = self._metric, self._low, self._high
        kept: list[Reading] = []
        rejected: list[tuple[Reading, RejectReason, str]] = []
        for reading in readings:
            value = reading.metrics.get(metric)
            if value is None or low <= value <= high:
                kept.append(reading)
            elif self._reject:
                rejected.append(
                    (reading, "out_of_range", f"{metric} = {value!r} outside [{low}, {high}]")
                )
            else:
                flags = reading.flags
                if flags is None:
                    reading.flags = [self._flag]
                elif self._flag not in flags:
                    reading.flags = [*flags, self._flag]
                kept.append(reading)
        return Verdict(kept, rejected)
