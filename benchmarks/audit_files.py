"""Audit what one or more gateways wrote against a simulator manifest (gateway.audit)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.audit import DEAD_LETTER_DIR, audit

SEGMENT_SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass
class AuditSummary:
    ok: bool
    expected: int
    found: int
    missing: int
    duplicated: int
    unexpected: int
    dead_letter_records: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def audit_dirs(manifest: Path, data_dirs: Sequence[Path], view: Path) -> AuditSummary:
    """gateway.audit over the segments of every dir in `data_dirs` at once.

    The audit reads one data dir; several gateways (scale-out) each have their own. `view`
    becomes one dir of symlinks to all their sealed segments, each under its path from the
    `date=` level (and `dead-letter/` when it is a dead letter), so any layout is found."""
    for index, root in enumerate(data_dirs):
        for dirpath, _, files in os.walk(root):
            for name in files:
                if name.endswith(SEGMENT_SUFFIXES):
                    _link(Path(dirpath, name), index, view)
    report = audit(manifest, view)
    t = report.total
    return AuditSummary(
        ok=report.ok,
        expected=t.expected,
        found=t.found,
        missing=t.missing,
        duplicated=t.duplicated,
        unexpected=t.unexpected,
        dead_letter_records=report.dead_letter_records,
    )


def _link(segment: Path, index: int, view: Path) -> None:
    parts = segment.parts
    starts = [i for i, part in enumerate(parts) if part.startswith("date=")]
    if not starts:
        return
    first = starts[0]
    relative = Path(*parts[first:-1])
    if DEAD_LETTER_DIR in parts[:first]:
        relative = DEAD_LETTER_DIR / relative
    target = view / relative / f"g{index}-{segment.name}"  # names may repeat across gateways
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(segment)
