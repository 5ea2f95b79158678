"""Device timestamps -> epoch seconds, without a `datetime` per reading."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.errors import DecodeError

# Epoch numbers above this are milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
EPOCH_MS_ABOVE = 1e11
# How much of a network string an error detail may quote.
QUOTE = 64
# Whole seconds (`2026-11-25T11:00:00`) remembered; cleared and refilled past this many.
SECOND_MEMORY = 16_384
_CANONICAL_LENGTH = 24  # 2026-11-25T11:00:00.123Z, the form the files use
# "000".."999" -> seconds: one lookup both checks three ASCII digits and converts them.
MILLIS: dict[str, float] = {f"{n:03d}": n / 1000 for n in range(1000)}


def parse_iso(text: str) -> float:
    """Epoch seconds from any ISO 8601 form `datetime.fromisoformat` takes (naive means UTC)."""
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError):
        raise DecodeError("invalid_schema", f"ts {text[:QUOTE]!r} is not ISO 8601") from None


class TimestampParser:
    """Parses the `ts` of a payload: ISO 8601, epoch seconds or epoch milliseconds.

    The canonical form (`2026-11-25T11:00:00.123Z`, what most devices and our simulators send) is
    parsed from a memory of whole seconds plus the milliseconds; readings arrive in time order, so
    a second is parsed by `datetime` once and then only looked up. Every other form goes through
    `datetime.fromisoformat`. A second enters the memory only when it is in canonical form, so a
    hit proves the prefix is.
    """

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        # `YYYY-MM-DDTHH:MM:SS` -> epoch seconds; decoders may look up canonical times here.
        self.seconds: dict[str, float] = {}

    def canonical(self, text: str) -> float | None:
        """Epoch seconds of a canonical timestamp; None when `text` is not one."""
        if len(text) != _CANONICAL_LENGTH or text[19] != "." or text[23] != "Z":
            return None
        millis = MILLIS.get(text[20:23])
        if millis is None:
            return None
        prefix = text[:19]
        whole = self.seconds.get(prefix)
        if whole is None:
            if not _is_canonical_second(prefix):
                return None
            whole = parse_iso(prefix)
            if len(self.seconds) >= SECOND_MEMORY:
                self.seconds.clear()
            self.seconds[prefix] = whole
        return whole + millis

    def __call__(self, value: str | float) -> float:
        if value.__class__ is str:
            parsed = self.canonical(value)  # type: ignore[arg-type]
            return parsed if parsed is not None else parse_iso(value)  # type: ignore[arg-type]
        seconds = float(value)
        return seconds / 1000.0 if seconds > EPOCH_MS_ABOVE else seconds


def _is_canonical_second(prefix: str) -> bool:
    """`YYYY-MM-DDTHH:MM:SS` exactly (fromisoformat also takes `20261125T110000` and spaces)."""
    return (
        prefix.isascii()
        and prefix[4] == prefix[7] == "-"
        and prefix[10] == "T"
        and prefix[13] == prefix[16] == ":"
        and (
            prefix[:4] + prefix[5:7] + prefix[8:10] + prefix[11:13] + prefix[14:16] + prefix[17:]
        ).isdigit()
    )
