"""Deterministic random numbers: the same (seed, device, seq) always gives the same draws."""

from __future__ import annotations

import math

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, the splitmix64 increment
_TO_UNIT = 2.0**-53

# Salts keep the streams of one device independent of each other.
SALT_PARAMS = 1
SALT_SAMPLE = 2
SALT_FAULT = 3
SALT_CLOCK = 4
SALT_MODEL = 5
SALT_WINDOW = 6


def mix64(x: int) -> int:
    """splitmix64's finaliser: a 64-bit bijection that scrambles every input bit."""
    x = (x + GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def derive(*parts: int) -> int:
    """One 64-bit key from several integers (seed, device index, salt, ...)."""
    key = 0
    for part in parts:
        key = mix64(key ^ (part & MASK64))
    return key


def unit(key: int) -> float:
    """A float in [0, 1) from a 64-bit key (its top 53 bits)."""
    return (key >> 11) * _TO_UNIT


def unit_at(key: int, n: int) -> float:
    """The n-th float of the stream named by `key`: cheap to index directly (no state)."""
    return unit(mix64((key + n * GOLDEN) & MASK64))


class Draw:
    """A short stream of draws for one (device, seq); a pure function of its key.

    Not `random.Random`: seeding one costs ~5 µs here, a draw from a mixed key ~0.3 µs, and only
    `Random.random()` is promised to stay the same across Python versions anyway.
    """

    __slots__ = ("_key", "_n")

    def __init__(self, key: int) -> None:
        self._key = key
        self._n = 0

    def uniform(self) -> float:
        self._n += 1
        return unit_at(self._key, self._n)

    def between(self, low: float, high: float) -> float:
        return low + (high - low) * self.uniform()

    def normal(self) -> float:
        """A standard normal draw (Box-Muller)."""
        u1 = 1.0 - self.uniform()  # in (0, 1], so log() is finite
        u2 = self.uniform()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
