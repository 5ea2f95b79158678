"""Each stored line and dead-letter record against what the manifest says was sent; the result.

Data lines are counted against their device's tally by (device_id, seq), or by metric values
for formats without seq. Dead-letter records are matched to rejecting faults by the digest of
the exact payload bytes (by full size when the payload was cut), right reasons first.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from gateway.audit.expected import SATURATED, Expected, Fault, Tally
from gateway.audit.files import FilesRead, read_data, read_dead_letter, shared_locks
from gateway.audit.report import AuditReport, DeviceAudit, WrongReason
from gateway.manifest import payload_digest

# Per device, at most this many runs of missing seqs are listed (all are counted).
MAX_MISSING_RUNS = 8
MAX_WRONG_REASONS = 100


class Comparison:
    """What was found, line by line, against what was expected."""

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self.by_seq = expected.by_seq
        self.tallies = expected.tallies
        self.index = expected.index
        self.unknown_device_lines = 0
        self.unmatched: Counter[str] = Counter()
        self.repeats = 0
        self.bad_lines = 0
        self.data_lines = self.dl_records = 0

    def data_line(self, line: bytes, in_open: bool) -> None:
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

    def parquet_row(self, device_id: object, seq: object, values: int) -> None:
        self.data_lines += 1
        self._count(device_id, seq, values, in_open=False)

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
        if tally.counts[cell] < SATURATED:
            tally.counts[cell] += 1
        if in_open:
            if tally.open_seqs is None:
                tally.open_seqs = set()
            tally.open_seqs.add(seq)

    def dead_letter_line(self, line: bytes) -> None:
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
        candidates = self.expected.faults_by_digest.get(payload_digest(payload))
        if candidates:
            self._settle(candidates, reason)
        elif not self._valid_reading_rejected(payload):
            self.unmatched[reason] += 1

    def _match_truncated(self, reason: str, size: int) -> None:
        """A cut payload has no usable digest: match a fault of the same full size instead."""
        candidates = [f for f in self.expected.faults if f.size == size]
        if candidates:
            self._settle(candidates, reason)
        else:
            self.unmatched[reason] += 1

    def _settle(self, candidates: list[Fault], reason: str) -> None:
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

    def report(self, data_dirs: Sequence[Path], read: FilesRead) -> AuditReport:
        header = self.expected.header
        total = DeviceAudit("TOTAL")
        devices: list[DeviceAudit] = []
        faults_of: dict[int, list[Fault]] = {}
        for fault in self.expected.faults:
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
        notes = list(read.notes)
        if total.in_open:
            notes.append(
                f"{total.in_open:,} of the readings found are in open segments (stored and "
                "acked; readers that skip *.open files see them once sealed, within "
                "files.rotate_age_s, or now with `gateway seal`)"
            )
        if not self.by_seq:
            notes.append(
                f"format {header.format} carries no seq: compared the number of metric "
                "values per device, so a loss hidden by a duplicate cannot be seen"
            )
        if header.messages_sent == 0:
            notes.append("the manifest records no message sent: nothing to compare")
        if header.messages_unacked:
            notes.append(
                f"the simulator saw {header.messages_unacked} QoS 1 messages never "
                "acknowledged by the broker"
            )
        if header.qos == 0:
            notes.append("QoS 0: the broker may drop messages; missing ones are not a gateway bug")
        return AuditReport(
            manifest=str(self.expected.manifest),
            data_dir=", ".join(map(str, data_dirs)),
            format=header.format,
            keyed_by=header.keyed_by,
            qos=header.qos,
            devices=devices,
            total=total,
            wrong_reasons=wrong,
            unknown_device_lines=self.unknown_device_lines,
            dead_letter_unmatched=dict(sorted(self.unmatched.items())),
            dead_letter_repeats=self.repeats,
            faults_missing_by_kind=dict(sorted(missing_by_kind.items())),
            faults_stored_by_kind=dict(sorted(stored_by_kind.items())),
            data_files=read.data_files,
            data_lines=self.data_lines,
            parquet_files=read.parquet_files,
            open_files=read.open_files,
            dead_letter_files=read.dead_letter_files,
            dead_letter_records=self.dl_records,
            bad_lines=self.bad_lines,
            notes=notes,
        )

    def _device_result(self, tally: Tally) -> DeviceAudit:
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


def audit(manifest_path: Path, data_dir: Path | Sequence[Path]) -> AuditReport:
    """Compare what the manifest says was sent with what `data_dir` holds; given several
    directories (one per gateway of a scale-out), with what they hold together."""
    data_dirs = [Path(data_dir)] if isinstance(data_dir, str | Path) else list(map(Path, data_dir))
    expected = Expected(Path(manifest_path))
    expected.load()
    comparison = Comparison(expected)
    read = FilesRead()
    # Shared: compaction and retention (exclusive) wait, so no file moves while it is read.
    with shared_locks(data_dirs):
        for directory in data_dirs:
            read_data(directory, read, comparison.data_line, comparison.parquet_row)
        for directory in data_dirs:
            read_dead_letter(directory, read, comparison.dead_letter_line)
    return comparison.report(data_dirs, read)
