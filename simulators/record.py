"""DeviceLog: what one device actually sent, kept compactly until it becomes a manifest line."""

from __future__ import annotations

import bisect

from gateway.manifest import DeviceRecord, FaultRecord, payload_digest
from simulators.devices import Device
from simulators.spec import RunSpec
from simulators.stream import Message, device_topic, manifest_metrics


class SeqRuns:
    """Sequence numbers as sorted, disjoint [first, last] runs; O(1) for the in-order case."""

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: list[list[int]] = []

    def add(self, seq: int) -> None:
        runs = self.runs
        if runs:
            last = runs[-1]
            if seq == last[1] + 1:
                last[1] = seq
                return
            if seq > last[1]:
                runs.append([seq, seq])
                return
        else:
            runs.append([seq, seq])
            return
        self._insert(seq)

    def _insert(self, seq: int) -> None:
        """The rare case: a seq at or before the last run (a swap or a duplicate)."""
        runs = self.runs
        i = bisect.bisect_right(runs, seq, key=lambda run: run[0])
        before = runs[i - 1] if i > 0 else None
        after = runs[i] if i < len(runs) else None
        if before is not None and seq <= before[1]:
            return
        if before is not None and seq == before[1] + 1:
            before[1] = seq
            if after is not None and after[0] == seq + 1:
                before[1] = after[1]
                del runs[i]
        elif after is not None and after[0] == seq + 1:
            after[0] = seq
        else:
            runs.insert(i, [seq, seq])

    def count(self) -> int:
        return sum(last - first + 1 for first, last in self.runs)


class DeviceLog:
    """Counts and remembers one device's sent messages: seq runs and labelled faults."""

    __slots__ = ("device", "faults", "messages", "metrics", "seqs", "topic")

    def __init__(self, device: Device, topic: str, metrics: tuple[str, ...] | None = None) -> None:
        self.device = device
        self.topic = topic
        # The metric names the gateway stores per reading (a preset's, not the device's).
        self.metrics = device.metrics if metrics is None else metrics
        self.seqs = SeqRuns()
        self.faults: list[FaultRecord] = []
        self.messages = 0

    @classmethod
    def of(cls, spec: RunSpec, device: Device) -> DeviceLog:
        """The log of `device` in this run: its topic, and the metrics the gateway will store of
        it (a preset format's, not the device's own). Every transport builds its logs here."""
        return cls(device, device_topic(spec, device), manifest_metrics(spec, device))

    def sent(self, message: Message) -> None:
        self.messages += 1
        add = self.seqs.add
        for seq in message.seqs:
            add(seq)
        if message.fault is not None:
            self.faults.append(
                FaultRecord(
                    seq=message.seqs[0],
                    kind=message.fault,  # type: ignore[arg-type]
                    reason=message.reason,  # type: ignore[arg-type]
                    digest=payload_digest(message.payload),
                    bytes=len(message.payload),
                )
            )

    def to_record(self) -> DeviceRecord:
        d = self.device
        return DeviceRecord(
            device_id=d.device_id,
            index=d.index,
            site=d.site,
            model=d.model,
            topic=self.topic,
            metrics=self.metrics,
            seq=tuple((first, last) for first, last in self.seqs.runs),
            messages=self.messages,
            faults=tuple(self.faults),
        )
