"""DistinctCount: how many distinct device ids, in bounded memory (exact, then a HyperLogLog).

Device ids come from the network: a flood of spoofed ids must not grow memory without bound.
Up to `exact_up_to` ids the count is exact (a set, ~130 bytes per id); past that the ids are
folded into a HyperLogLog sketch (Flajolet et al. 2007; linear counting while many registers
are still zero) of 2^precision one-byte registers — 16 KiB at the default precision 14 —
and the set is dropped. The sketch's relative standard error is 1.04 / sqrt(2^precision): 0.81%
at precision 14, so 99.7% of estimates are within ±2.4% of the true count. Python's own string
hash (SipHash, 64 bits, keyed per process) is the hash: the count is per process, as the gauge is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

HASH_BITS = 64
HASH_MASK = (1 << HASH_BITS) - 1


class DistinctCount:
    """Counts distinct strings: exactly up to `exact_up_to`, then estimated by a sketch."""

    def __init__(self, exact_up_to: int = 10_000, precision: int = 14) -> None:
        if not 4 <= precision <= 18:
            raise ValueError("precision must be 4..18")
        self._exact: set[str] | None = set()
        self._exact_up_to = exact_up_to
        self._precision = precision
        self._registers = bytearray(0)
        # How many registers hold each rank: the estimate is then a sum over ~60 ranks instead
        # of over every register, so a scrape costs microseconds.
        self._ranks = [0] * (HASH_BITS - precision + 2)

    @property
    def exact(self) -> bool:
        """True while the count is exact (below the threshold)."""
        return self._exact is not None

    @property
    def relative_error(self) -> float:
        """The sketch's relative standard error (0 while exact)."""
        return 0.0 if self._exact is not None else 1.04 / math.sqrt(1 << self._precision)

    @property
    def sketch_bytes(self) -> int:
        """Size of the sketch's registers (0 while exact)."""
        return len(self._registers)

    def update(self, values: Iterable[str]) -> None:
        """Count each of `values` (one call per burst: the caller dedupes within it)."""
        exact = self._exact
        if exact is not None:
            exact.update(values)
            if len(exact) > self._exact_up_to:
                self._fold(exact)
            return
        self._add_all(values)

    def __len__(self) -> int:
        """The count: exact below the threshold, else the sketch's estimate (rounded)."""
        if self._exact is not None:
            return len(self._exact)
        return round(self._estimate())

    def _fold(self, exact: set[str]) -> None:
        self._registers = bytearray(1 << self._precision)
        self._ranks[0] = len(self._registers)
        self._exact = None
        self._add_all(exact)

    def _add_all(self, values: Iterable[str]) -> None:
        registers, ranks = self._registers, self._ranks
        p = self._precision
        index_mask = (1 << p) - 1
        width = HASH_BITS - p
        for value in values:
            h = hash(value) & HASH_MASK
            index = h & index_mask
            # The rank: the position of the first 1 bit in the remaining bits, counted from 1.
            rank = width - (h >> p).bit_length() + 1
            old = registers[index]
            if rank > old:
                registers[index] = rank
                ranks[old] -= 1
                ranks[rank] += 1

    def _estimate(self) -> float:
        m = len(self._registers)
        alpha = 0.7213 / (1 + 1.079 / m)
        harmonic = math.fsum(count * 2.0**-rank for rank, count in enumerate(self._ranks))
        estimate = alpha * m * m / harmonic
        zeros = self._ranks[0]
        if estimate <= 2.5 * m and zeros:
            return m * math.log(m / zeros)  # small range: linear counting is more accurate
        return estimate
