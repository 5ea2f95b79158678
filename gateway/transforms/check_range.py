"""check_range: reject or flag a reading whose metric is outside [min, max]."""

from __future__ import annotations

import math

from gateway.config import CheckRangeStep
from gateway.errors import RejectedError
from gateway.model import Reading


class CheckRange:
    """Checks one metric against [min, max] (either bound may be open).

    action "reject" raises RejectedError("out_of_range"); action "flag" keeps the reading and adds
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

    def __call__(self, reading: Reading) -> Reading:
        value = reading.metrics.get(self._metric)
        if value is None or self._low <= value <= self._high:
            return reading
        if self._reject:
            raise RejectedError(
                "out_of_range",
                f"{self._metric} = {value!r} outside [{self._low}, {self._high}]",
            )
        if self._flag not in reading.flags:
            reading.flags.append(self._flag)
        return reading
