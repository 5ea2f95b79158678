"""audit: compare a simulator manifest with what the gateway stored, and say what was lost.

Streams every data partition under `data_dir` — its Parquet file, then the segments that file
does not hold (`*.jsonl`, `*.jsonl.gz`), then the complete lines of segments still open
(`*.jsonl.open`, reported apart: stored and acked, not yet visible to readers that skip them) —
and every dead-letter file under `data_dir/dead-letter/` the same way, holding the data
directory's shared lock so that compaction and retention wait until it is done. Memory is one
byte per sent sequence number per device (a counter, not a set), plus the faults of the
manifest.

Keyed by (device_id, seq) for formats whose readings carry seq (json, json_batch); SenML and bare
values carry none, so for them only the number of metric values per device is compared.
Rejecting faults are matched to dead-letter records by the digest of the exact payload bytes.
`ok` means: no valid reading missing, and every rejecting fault dead-lettered with its reason.
Duplicates are counted and allowed: readings without seq are stored at least once, and those
with a seq once only within the limits of the dedupe window (README, Delivery guarantees).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gateway.compaction.partitions import (
    Partition,
    dead_letter_partitions,
    hour_partitions,
    tree_lock,
)
from gateway.errors import CompactionError
from gateway.layout import DEAD_LETTER_DIR
from gateway.manifest import DeviceRecord, iter_devices, payload_digest, read_header
from gateway.segment_reader import complete_lines, open_live_segment, open_segment

__all__ = ["DEAD_LETTER_DIR", "AuditReport", "DeviceAudit", "audit", "format_table", "main_audit"]
# Per device, at most this many runs of missing seqs are listed (all are counted).
MAX_MISSING_RUNS = 8
MAX_WRONG_REASONS = 100
MAX_TABLE_ROWS = 50
# Fault kinds whose rejection depends on the gateway's config: what the audit then says.
NEEDS_CONFIG = {
    "out_of_range": "a gateway rejects these only with a check_range step on the metric the "
    "simulator puts out of range (temperature; e.g. min -60, max 150): see README, "
    "Simulators and the audit",
}
_SATURATED = 255  # a bytearray cell counts copies up to here
_NONE: frozenset[int] = frozenset()


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
    data_dir: str
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


class _Tally:
    """What was sent to and found for one device; one byte per sent seq (a saturating copy
    counter). Only the few numbers the comparison needs are kept, not the manifest line."""

    __slots__ = (
        "base",
        "counts",
        "dead_lettered",
        "device_id",
        "metrics",
        "open_seqs",
        "open_values",
        "rejecting",
        "runs",
        "stored_faults",
        "strays",
        "valid",
        "values",
    )

    def __init__(self, record: DeviceRecord, by_seq: bool) -> None:
        self.device_id = record.device_id
        self.runs = record.seq
        # Most devices have no rejected seq: share one empty set instead of ~200 bytes each.
        self.rejecting: frozenset[int] = frozenset(record.rejecting_seqs()) or _NONE
        self.valid = record.valid_count()
        self.metrics = len(record.metrics)
        self.base = self.runs[0][0] if self.runs else 0
        size = self.runs[-1][1] - self.base + 1 if (by_seq and self.runs) else 0
        self.counts = bytearray(size)
        self.values = 0  # count mode: metric values found
        self.strays = 0  # seq mode: lines whose seq was not sent, or was a rejected fault
        self.stored_faults: set[int] | None = None  # rejecting seqs found among the data
        self.dead_lettered = 0
        self.open_seqs: set[int] | None = None  # seq mode: valid seqs seen in open segments
        self.open_values = 0  # count mode: metric values found in open segments

    def sent(self, seq: int) -> bool:
        runs = self.runs
        i = bisect.bisect_right(runs, seq, key=lambda run: run[0]) - 1
        return i >= 0 and seq <= runs[i][1]

    def is_valid(self, seq: object) -> bool:
        return isinstance(seq, int) and self.sent(seq) and seq not in self.rejecting


@dataclass(slots=True)
class _Fault:
    device: int  # index into the tallies
    seq: int
    kind: str
    reason: str
    size: int
    got: str | None = None  # the reason it was dead-lettered with, once seen
    right: bool = False


class _Auditor:
    def __init__(self, manifest: Path, data_dir: Path) -> None:
        self.manifest = manifest
        self.data_dir = data_dir
        self.header = read_header(manifest)
        self.by_seq = self.header.keyed_by == "seq"
        self.tallies: list[_Tally] = []
        self.index: dict[str, int] = {}
        self.faults_by_digest: dict[str, list[_Fault]] = {}
        self.faults: list[_Fault] = []
        self.unknown_device_lines = 0
        self.unmatched: Counter[str] = Counter()
        self.repeats = 0
        self.bad_lines = 0
        self.data_files = self.data_lines = self.dl_files = self.dl_records = 0
        self.parquet_files = self.open_files = 0
        self.notes: list[str] = []

    def load_manifest(self) -> None:
        for record in iter_devices(self.manifest):
            slot = len(self.tallies)
            self.index[record.device_id] = slot
            self.tallies.append(_Tally(record, self.by_seq))
            for f in record.faults:
                if f.reason is None:
                    continue
                fault = _Fault(slot, f.seq, f.kind, f.reason, f.bytes)
                self.faults.append(fault)
                self.faults_by_digest.setdefault(f.digest, []).append(fault)

    def read_data(self) -> None:
        for partition in hour_partitions(self.data_dir):
            covered = self._read_parquet(partition) if partition.parquet else frozenset()
            for stem in sorted(partition.sealed.keys() - covered):
                self.data_files += 1
                with open_segment(partition.directory, stem) as source:
                    for line in complete_lines(source):
                        self._data_line(line, in_open=False)
            for stem in sorted(partition.open):
                self.data_files += 1
                self.open_files += 1
                with open_live_segment(partition.directory, stem) as source:
                    for line in complete_lines(source):
                        self._data_line(line, in_open=True)

    def _read_parquet(self, partition: Partition) -> frozenset[str]:
        """Count the rows of a partition's Parquet file; return the segments it holds."""
        # Here, not at the top: `gateway run` imports this module, and pyarrow stays out of it.
        from gateway.columnar.reader import audit_rows, covered_segments  # noqa: PLC0415

        path = partition.parquet_path
        try:
            covered = covered_segments(path)
        except CompactionError as exc:
            self.notes.append(f"{partition.name}: {exc.detail}; its JSON Lines were read instead")
            return frozenset()
        self.data_files += 1
        self.parquet_files += 1
        for device_id, seq, values in audit_rows(path):
            self.data_lines += 1
            self._count(device_id, seq, values, in_open=False)
        return covered

    def _data_line(self, line: bytes, in_open: bool) -> None:
        self.data_lines += 1
        try:
            obj = json.loads(line)
            device_id = obj["device_id"]
            metrics = obj.get("metrics")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.bad_lines += 1
            return
        values = len(metrics) if isinstance(metrics, dict) else 0
        self._count(device_id, obj.get("seq"), values, in_open)

    def _count(self, device_id: object, seq: object, values: int, in_open: bool) -> None:
        slot = self.index.get(device_id) if isinstance(device_id, str) else None
        if slot is None:
            self.unknown_device_lines += 1
            return
        tally = self.tallies[slot]
        if not self.by_seq:
            tally.values += values
            if in_open:
                tally.open_values += values
            return
        if not tally.is_valid(seq):
            tally.strays += 1
            if seq in tally.rejecting:
                if tally.stored_faults is None:
                    tally.stored_faults = set()
                tally.stored_faults.add(seq)  # type: ignore[arg-type]
            return
        assert isinstance(seq, int)
        cell = seq - tally.base
        if tally.counts[cell] < _SATURATED:
            tally.counts[cell] += 1
        if in_open:
            if tally.open_seqs is None:
                tally.open_seqs = set()
            tally.open_seqs.add(seq)

    def read_dead_letter(self) -> None:
        for partition in dead_letter_partitions(self.data_dir):
            for stem in sorted(partition.sealed):
                self.dl_files += 1
                with open_segment(partition.directory, stem) as source:
                    for line in complete_lines(source):
                        self._dead_letter_line(line)
            for stem in sorted(partition.open):
                self.dl_files += 1
                with open_live_segment(partition.directory, stem) as source:
                    for line in complete_lines(source):
                        self._dead_letter_line(line)

    def _dead_letter_line(self, line: bytes) -> None:
        self.dl_records += 1
        try:
            record = json.loads(line)
            reason = str(record["reason"])
            payload = _payload_bytes(record)
        except (ValueError, KeyError, TypeError, binascii.Error):
            self.bad_lines += 1
            return
        if record.get("payload_truncated"):
            self._match_truncated(reason, int(record.get("payload_bytes", -1)))
        else:
            self._match(reason, payload)

    def _match(self, reason: str, payload: bytes) -> None:
        candidates = self.faults_by_digest.get(payload_digest(payload))
        if candidates:
            self._settle(candidates, reason)
        elif not self._valid_reading_rejected(payload):
            self.unmatched[reason] += 1

    def _match_truncated(self, reason: str, size: int) -> None:
        """A cut payload has no usable digest: match a fault of the same full size instead."""
        candidates = [f for f in self.faults if f.size == size]
        if candidates:
            self._settle(candidates, reason)
        else:
            self.unmatched[reason] += 1

    def _settle(self, candidates: list[_Fault], reason: str) -> None:
        # Identical bytes may be several faults: each record accounts for one, right ones first.
        for fault in candidates:
            if not fault.right and fault.reason == reason:
                fault.right, fault.got = True, reason
                return
        for fault in candidates:
            if fault.got is None:
                fault.got = reason
                return
        self.repeats += 1  # a redelivered message rejected again

    def _valid_reading_rejected(self, payload: bytes) -> bool:
        """A valid reading of the manifest that the gateway dead-lettered (it will also be
        missing): count it against its device, so the report says where it went."""
        try:
            obj = json.loads(payload)
        except ValueError:
            return False
        items = obj if isinstance(obj, list) else [obj]
        hit = False
        for item in items:
            if not isinstance(item, dict):
                continue
            slot = self.index.get(item.get("device_id"))  # type: ignore[arg-type]
            if slot is not None and self.tallies[slot].is_valid(item.get("seq")):
                self.tallies[slot].dead_lettered += 1
                hit = True
        return hit

    def report(self) -> AuditReport:
        total = DeviceAudit("TOTAL")
        devices: list[DeviceAudit] = []
        faults_of: dict[int, list[_Fault]] = {}
        for fault in self.faults:
            faults_of.setdefault(fault.device, []).append(fault)
        wrong: list[WrongReason] = []
        missing_by_kind: Counter[str] = Counter()
        stored_by_kind: Counter[str] = Counter()
        for slot, tally in enumerate(self.tallies):
            result = self._device_result(tally)
            for fault in faults_of.get(slot, ()):
                result.faults_expected += 1
                if fault.right:
                    result.faults_found += 1
                elif fault.got is not None:
                    result.faults_wrong_reason += 1
                    if len(wrong) < MAX_WRONG_REASONS:
                        wrong.append(
                            WrongReason(
                                tally.device_id,
                                fault.seq,
                                fault.kind,
                                fault.reason,
                                fault.got,
                            )
                        )
                else:
                    result.faults_missing += 1
                    missing_by_kind[fault.kind] += 1
                    if tally.stored_faults is not None and fault.seq in tally.stored_faults:
                        stored_by_kind[fault.kind] += 1
            devices.append(result)
            total.add(result)
        notes = list(self.notes)
        if total.in_open:
            notes.append(
                f"{total.in_open:,} of the readings found are in open segments (stored and "
                "acked; readers that skip *.open files see them once sealed, within "
                "files.rotate_age_s, or now with `gateway seal`)"
            )
        if not self.by_seq:
            notes.append(
                f"format {self.header.format} carries no seq: compared the number of metric "
                "values per device, so a loss hidden by a duplicate cannot be seen"
            )
        if self.header.messages_sent == 0:
            notes.append("the manifest records no message sent: nothing to compare")
        if self.header.messages_unacked:
            notes.append(
                f"the simulator saw {self.header.messages_unacked} QoS 1 messages never "
                "acknowledged by the broker"
            )
        if self.header.qos == 0:
            notes.append("QoS 0: the broker may drop messages; missing ones are not a gateway bug")
        return AuditReport(
            manifest=str(self.manifest),
            data_dir=str(self.data_dir),
            format=self.header.format,
            keyed_by=self.header.keyed_by,
            qos=self.header.qos,
            devices=devices,
            total=total,
            wrong_reasons=wrong,
            unknown_device_lines=self.unknown_device_lines,
            dead_letter_unmatched=dict(sorted(self.unmatched.items())),
            dead_letter_repeats=self.repeats,
            faults_missing_by_kind=dict(sorted(missing_by_kind.items())),
            faults_stored_by_kind=dict(sorted(stored_by_kind.items())),
            data_files=self.data_files,
            data_lines=self.data_lines,
            parquet_files=self.parquet_files,
            open_files=self.open_files,
            dead_letter_files=self.dl_files,
            dead_letter_records=self.dl_records,
            bad_lines=self.bad_lines,
            notes=notes,
        )

    def _device_result(self, tally: _Tally) -> DeviceAudit:
        result = DeviceAudit(tally.device_id, dead_lettered_valid=tally.dead_lettered)
        result.in_open = len(tally.open_seqs or ()) if self.by_seq else tally.open_values
        if not self.by_seq:
            result.expected = tally.valid * tally.metrics
            result.found = min(tally.values, result.expected)
            result.missing = max(0, result.expected - tally.values)
            result.duplicated = max(0, tally.values - result.expected)
            return result
        result.expected = tally.valid
        result.unexpected = tally.strays
        counts = tally.counts
        for first, last in tally.runs:
            for seq in range(first, last + 1):
                n = counts[seq - tally.base]
                if n:
                    result.found += 1
                    result.duplicated += n - 1
                elif seq not in tally.rejecting:
                    result.missing += 1
                    _add_run(result.missing_seqs, seq)
        return result


def _add_run(runs: list[tuple[int, int]], seq: int) -> None:
    if runs and runs[-1][1] == seq - 1:
        runs[-1] = (runs[-1][0], seq)
    elif len(runs) < MAX_MISSING_RUNS:
        runs.append((seq, seq))


def _payload_bytes(record: dict[str, object]) -> bytes:
    payload = record["payload"]
    if not isinstance(payload, str):
        raise TypeError("payload is not a string")
    if record.get("payload_encoding", "utf-8") == "base64":
        return base64.b64decode(payload, validate=True)
    return payload.encode("utf-8")


def audit(manifest_path: Path, data_dir: Path) -> AuditReport:
    """Compare what the manifest says was sent with what `data_dir` holds."""
    auditor = _Auditor(Path(manifest_path), Path(data_dir))
    auditor.load_manifest()
    # Shared: compaction and retention (exclusive) wait, so no file moves while it is read.
    with tree_lock(auditor.data_dir, exclusive=False, wait=True):
        auditor.read_data()
        auditor.read_dead_letter()
    return auditor.report()


_COLUMNS = (
    ("expected", "expected"),
    ("found", "found"),
    ("missing", "missing"),
    ("duplicated", "dup"),
    ("unexpected", "unexpected"),
    ("faults_expected", "faults"),
    ("faults_found", "dead-lettered"),
    ("faults_missing", "not-dead-lettered"),
    ("faults_wrong_reason", "wrong-reason"),
)


def format_table(report: AuditReport) -> str:
    """A table for people: every device with something to report, then the total and verdict."""
    unit = "readings, by (device, seq)" if report.keyed_by == "seq" else "metric values, counted"
    lines = [
        f"audit of {report.manifest} against {report.data_dir}",
        f"format {report.format}, qos {report.qos}; {unit}",
        "",
    ]
    width = max([len("device"), *(len(d.device_id) for d in report.devices[:MAX_TABLE_ROWS])])
    lines.append(
        "device".ljust(width) + "".join(f"  {title:>{len(title)}}" for _, title in _COLUMNS)
    )

    def row(d: DeviceAudit) -> str:
        cells = "".join(f"  {getattr(d, name):>{len(title)},}" for name, title in _COLUMNS)
        return d.device_id.ljust(width) + cells

    troubled = [d for d in report.devices if not d.clean]
    lines.extend(row(d) for d in troubled[:MAX_TABLE_ROWS])
    if len(troubled) > MAX_TABLE_ROWS:
        lines.append(f"... and {len(troubled) - MAX_TABLE_ROWS:,} more devices with something")
    lines.append(row(report.total))
    lines.append(
        f"({len(report.devices):,} devices, {len(report.devices) - len(troubled):,} clean; "
        f"{report.data_files:,} data files ({report.parquet_files:,} Parquet, "
        f"{report.open_files:,} open), {report.data_lines:,} lines; "
        f"{report.dead_letter_files:,} dead-letter files, {report.dead_letter_records:,} records)"
    )
    for d in troubled[:MAX_TABLE_ROWS]:
        if d.missing_seqs:
            spans = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in d.missing_seqs)
            more = " ..." if d.missing > sum(b - a + 1 for a, b in d.missing_seqs) else ""
            lines.append(f"missing {d.device_id}: seq {spans}{more}")
        if d.dead_lettered_valid:
            lines.append(f"dead-lettered valid readings {d.device_id}: {d.dead_lettered_valid}")
    lines.extend(
        f"wrong reason {w.device_id} seq {w.seq} ({w.kind}): expected {w.expected}, got {w.got}"
        for w in report.wrong_reasons
    )
    for kind, count in report.faults_missing_by_kind.items():
        stored = report.faults_stored_by_kind.get(kind, 0)
        line = f"faults not dead-lettered: {kind} {count:,}"
        if stored:
            line += f" ({stored:,} stored as readings instead)"
        if kind in NEEDS_CONFIG:
            line += f"; {NEEDS_CONFIG[kind]}"
        lines.append(line)
    if report.dead_letter_unmatched:
        found = ", ".join(f"{r} {n:,}" for r, n in report.dead_letter_unmatched.items())
        lines.append(f"dead-letter records matching nothing sent: {found}")
    if report.unknown_device_lines:
        lines.append(f"data lines of devices not in the manifest: {report.unknown_device_lines:,}")
    if report.bad_lines:
        lines.append(f"lines that are not JSON records: {report.bad_lines:,}")
    lines.extend(f"note: {note}" for note in report.notes)
    t = report.total
    if report.ok:
        verdict = "OK: nothing valid missing, every rejected fault dead-lettered with its reason"
        if t.duplicated:
            verdict += f" ({t.duplicated:,} duplicates: at least once)"
    else:
        problems = [
            f"{t.missing:,} missing" if t.missing else "",
            f"{t.faults_missing:,} faults not dead-lettered ({_by_kind(report)})"
            if t.faults_missing
            else "",
            f"{t.faults_wrong_reason:,} with the wrong reason" if t.faults_wrong_reason else "",
        ]
        verdict = "NOT OK: " + ", ".join(p for p in problems if p)
    lines.append(verdict)
    return "\n".join(lines)


def _by_kind(report: AuditReport) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in report.faults_missing_by_kind.items())


def main_audit(argv: list[str] | None = None) -> int:
    """`gateway audit --manifest FILE --data-dir DIR [--json]`: exit 0 only when ok."""
    parser = argparse.ArgumentParser(
        prog="gateway audit",
        description="Check that everything a simulator run sent was stored or dead-lettered.",
    )
    parser.add_argument("--manifest", type=Path, required=True, help="gateway-sim --manifest file")
    parser.add_argument("--data-dir", type=Path, required=True, help="the gateway's files.data_dir")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = audit(args.manifest, args.data_dir)
    except (OSError, ValueError) as exc:
        print(f"gateway audit: {exc}", file=sys.stderr)
        return 1
    print(report.to_json() if args.json else format_table(report))
    return 0 if report.ok else 1
