"""Small statistics: medians, exact percentiles, a least-squares slope."""

from __future__ import annotations

import math
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    """NaN for no values; the mean of the middle two for an even count."""
    ordered = sorted(v for v in values if not math.isnan(v))
    n = len(ordered)
    if n == 0:
        return math.nan
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, interpolating between the two nearest ranks (the
    numpy default). NaN for no values."""
    n = len(ordered)
    if n == 0:
        return math.nan
    pos = q * (n - 1)
    low = math.floor(pos)
    high = min(low + 1, n - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs; NaN with fewer than two distinct xs."""
    n = len(xs)
    if n < 2:
        return math.nan
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return math.nan
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
