"""One verb per module: `Reading -> Reading | None`, built from its step config."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from gateway.config import CheckRangeStep, ConvertUnitsStep, DropDuplicatesStep, StepConfig
from gateway.model import Reading
from gateway.transforms.check_range import CheckRange
from gateway.transforms.convert_units import ConvertUnits
from gateway.transforms.drop_duplicates import DropDuplicates

# Returns the reading (possibly changed in place), None to drop it (acked, counted by the
# transform's `drop_reason`), or raises RejectedError to dead-letter it.
Transform: TypeAlias = Callable[[Reading], Reading | None]

__all__ = ["CheckRange", "ConvertUnits", "DropDuplicates", "Transform", "build_transform"]


def build_transform(step: StepConfig) -> Transform:
    """The transform for one configured step; ValueError when the step cannot work."""
    if isinstance(step, CheckRangeStep):
        return CheckRange(step)
    if isinstance(step, DropDuplicatesStep):
        return DropDuplicates(step)
    if isinstance(step, ConvertUnitsStep):
        return ConvertUnits(step)
    raise TypeError(f"no transform for step {type(step).__name__}")
