"""What was sent against what is stored: by (device_id, seq), for the fault tests and the
reliability matrix. A key stored more than once is a duplicate (at least once allows them)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.layout import OPEN_SUFFIX
from tests.support.gateway import read_lines, reading_payload, topic

Key = tuple[str, int]


def readings(
    prefix: str, devices: int, seqs: Iterable[int], ts: float | None = None
) -> list[tuple[str, bytes]]:
    """One QoS 1 message per (device, seq), interleaved across devices."""
    return [
        (topic(prefix, f"dev-{d:04d}"), reading_payload(f"dev-{d:04d}", seq, ts=ts))
        for seq in seqs
        for d in range(devices)
    ]


def keys_of(messages: Iterable[tuple[str, bytes]]) -> set[Key]:
    return {(body["device_id"], body["seq"]) for body in (json.loads(p) for _, p in messages)}


def stored(data_dir: Path, include_open: bool = False) -> Counter[Key]:
    """How often each (device, seq) is in the segments (open ones: complete lines only)."""
    return Counter((r["device_id"], r["seq"]) for r in read_lines(data_dir, include_open))


def holds_all(data_dir: Path, sent: set[Key]) -> Callable[[], bool]:
    """A predicate for `eventually`: every key sent is on disk (sealed or still open)."""

    def check() -> bool:
        try:
            return sent <= stored(data_dir, include_open=True).keys()
        except FileNotFoundError:  # a segment sealed between the glob and the read
            return False

    return check


def accounting(counts: Counter[Key], sent: set[Key]) -> tuple[set[Key], int, str]:
    """(missing keys, duplicate lines, a one-line summary for assertion messages)."""
    missing = sent - counts.keys()
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    summary = (
        f"{len(sent)} sent, {len(counts)} distinct stored, {len(missing)} missing "
        f"(e.g. {sorted(missing)[:5]}), {duplicates} duplicate lines"
    )
    return missing, duplicates, summary


def open_segments(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob(f"**/*{OPEN_SUFFIX}"))
