"""One verb per module, over a batch: readings in, readings kept plus rejections out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

from gateway.config import CheckRangeStep, ConvertUnitsStep, DropDuplicatesStep, StepConfig
from gateway.errors import ConfigError, RejectReason
from gateway.model import Reading
from gateway.transforms.check_range import CheckRange
from gateway.transforms.convert_units import ConvertUnits
from gateway.transforms.verdict import Verdict

log = logging.getLogger(__name__)

# A step takes a batch and says what became of each reading: kept (possibly changed in place),
# rejected (dead-lettered with a reason), or dropped (acked, counted by the step's `drop_reason`,
# "filtered" when it has none). It may return an awaitable Verdict; the Stage awaits it under the
# batch's deadline.
Transform: TypeAlias = Callable[[list[Reading]], Verdict | Awaitable[Verdict]]

__all__ = [
    "CheckRange",
    "ConvertUnits",
    "RejectReason",
    "Transform",
    "Verdict",
    "build_steps",
    "build_transform",
]


def build_transform(step: StepConfig) -> Transform:
    """The transform for one configured step; ValueError when the step cannot work."""
    if isinstance(step, CheckRangeStep):
        return CheckRange(step)
    if isinstance(step, ConvertUnitsStep):
        return ConvertUnits(step)
    raise TypeError(f"no transform for step {type(step).__name__}")


def build_steps(steps: Sequence[StepConfig]) -> list[Transform]:
    """The transforms of the configured steps, in order; ConfigError naming `steps.N`.

    `drop_duplicates` has none: the file sink's dedupe window does that now (sinks/dedupe.py)."""
    built = []
    for index, step in enumerate(steps):
        if isinstance(step, DropDuplicatesStep):
            log.warning(
                "steps.%d: drop_duplicates does nothing now: the file sink drops repeats by "
                "(device_id, seq, ts) ([dedupe], on by default); remove the step",
                index,
            )
            continue
        try:
            built.append(build_transform(step))
        except ValueError as exc:
            raise ConfigError(f"steps.{index}: {exc}") from exc
    return built
