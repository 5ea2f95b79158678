"""The audit's result: per device, the total, the files read, notes; `ok` and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class DeviceAudit:
    """One device's result. In count mode `expected`/`found` are metric values, not readings."""

    device_id: str
    expected: int = 0
    found: int = 0
    missing: int = 0
    duplicated: int = 0
    unexpected: int = 0
    faults_expected: int = 0  # rejecting faults: must be in the dead-letter files
    faults_found: int = 0  # ... and were, with the right reason
    faults_missing: int = 0
    faults_wrong_reason: int = 0
    dead_lettered_valid: int = 0  # valid readings found in the dead-letter files instead
    in_open: int = 0  # found readings seen in open segments (stored; not yet sealed)
    missing_seqs: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.faults_missing == 0 and self.faults_wrong_reason == 0

    @property
    def clean(self) -> bool:
        """Nothing at all to report (duplicates and strays included)."""
        return self.ok and not (self.duplicated or self.unexpected or self.dead_lettered_valid)

    def add(self, other: DeviceAudit) -> None:
        for name in (
            "expected",
            "found",
            "missing",
            "duplicated",
            "unexpected",
            "faults_expected",
            "faults_found",
            "faults_missing",
            "faults_wrong_reason",
            "dead_lettered_valid",
            "in_open",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class WrongReason:
    """A fault that was dead-lettered, but not with the reason it was made to trigger."""

    device_id: str
    seq: int
    kind: str
    expected: str
    got: str


@dataclass
class AuditReport:
    manifest: str
    data_dir: str  # several, when several were audited together: comma separated
    format: str
    keyed_by: str
    qos: int
    devices: list[DeviceAudit]
    total: DeviceAudit
    wrong_reasons: list[WrongReason]
    unknown_device_lines: int  # data lines of devices the manifest does not know
    dead_letter_unmatched: dict[str, int]  # by reason: records matching no fault and no reading
    dead_letter_repeats: int  # a fault's record seen again (a redelivery): allowed
    faults_missing_by_kind: dict[str, int]  # not dead-lettered, by the simulator's fault kind
    faults_stored_by_kind: dict[str, int]  # ... of which found in the data files instead
    data_files: int
    data_lines: int
    parquet_files: int
    open_files: int
    dead_letter_files: int
    dead_letter_records: int
    bad_lines: int
    notes: list[str]

    @property
    def ok(self) -> bool:
        return self.total.ok

    def summary(self) -> dict[str, object]:
        """The verdict and the totals that matter, for a benchmark's results."""
        t = self.total
        return {
            "ok": self.ok,
            "expected": t.expected,
            "found": t.found,
            "missing": t.missing,
            "duplicated": t.duplicated,
            "unexpected": t.unexpected,
            "dead_letter_records": self.dead_letter_records,
        }

    def to_json(self) -> str:
        """The whole report as JSON, for machines."""
        body = {
            "ok": self.ok,
            "manifest": self.manifest,
            "data_dir": self.data_dir,
            "format": self.format,
            "keyed_by": self.keyed_by,
            "qos": self.qos,
            "total": {**asdict(self.total), "ok": self.total.ok},
            "files": {
                "data": self.data_files,
                "data_lines": self.data_lines,
                "parquet": self.parquet_files,
                "open": self.open_files,
                "dead_letter": self.dead_letter_files,
                "dead_letter_records": self.dead_letter_records,
                "bad_lines": self.bad_lines,
            },
            "unknown_device_lines": self.unknown_device_lines,
            "dead_letter_unmatched": self.dead_letter_unmatched,
            "dead_letter_repeats": self.dead_letter_repeats,
            "faults_missing_by_kind": self.faults_missing_by_kind,
            "faults_stored_by_kind": self.faults_stored_by_kind,
            "wrong_reasons": [asdict(w) for w in self.wrong_reasons],
            "notes": self.notes,
            "devices": [{**asdict(d), "ok": d.ok} for d in self.devices],
        }
        return json.dumps(body, indent=1)
