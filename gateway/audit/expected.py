"""What a simulator manifest says was sent: per device a byte per sent seq (a saturating copy
counter, filled in as stored lines are found), and the rejecting faults by payload digest.

Memory is one byte per sent sequence number per device (a counter, not a set), plus the faults
of the manifest.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from gateway.manifest import DeviceRecord, ManifestHeader, iter_devices, read_header

SATURATED = 255  # a bytearray cell counts copies up to here
_NONE: frozenset[int] = frozenset()


class Tally:
    """What was sent to and found for one device. Only the few numbers the comparison needs are
    kept, not the manifest line."""

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
class Fault:
    """A payload the simulator broke on purpose, and the reason it must be dead-lettered with."""

    device: int  # index into the tallies
    seq: int
    kind: str
    reason: str
    size: int
    got: str | None = None  # the reason it was dead-lettered with, once seen
    right: bool = False


class Expected:
    """The manifest's devices (tallies, by device id) and rejecting faults (by digest)."""

    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.header: ManifestHeader = read_header(manifest)
        self.by_seq = self.header.keyed_by == "seq"
        self.tallies: list[Tally] = []
        self.index: dict[str, int] = {}
        self.faults_by_digest: dict[str, list[Fault]] = {}
        self.faults: list[Fault] = []

    def load(self) -> None:
        for record in iter_devices(self.manifest):
            slot = len(self.tallies)
            self.index[record.device_id] = slot
            self.tallies.append(Tally(record, self.by_seq))
            for f in record.faults:
                if f.reason is None:
                    continue
                fault = Fault(slot, f.seq, f.kind, f.reason, f.bytes)
                self.faults.append(fault)
                self.faults_by_digest.setdefault(f.digest, []).append(fault)
