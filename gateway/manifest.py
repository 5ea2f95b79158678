"""The manifest of a simulator run: what was sent, per device (gateway-sim writes, audit reads).

A manifest is a JSON Lines file, so a reader can stream it device by device:

    line 1    ManifestHeader   {"manifest_version": 1, "seed": 7, "format": "json", ...}
    line 2..  DeviceRecord     {"device_id": "dev-00000", "topic": "...", "seq": [[0, 99]],
                                "faults": [{"seq": 17, "kind": "malformed_json",
                                            "reason": "invalid_json", "digest": "...",
                                            "bytes": 61}], ...}

`seq` lists the sequence numbers the device sent as [first, last] runs (faulty ones included: a
faulty message still uses its number). A fault with a `reason` is a message the gateway must
dead-letter with exactly that reason; one whose reason is null (duplicate, out_of_order,
disconnect) carries a valid reading. `digest` identifies the exact payload bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import RejectReason

MANIFEST_VERSION: Literal[1] = 1
# blake2b digest size: 8 bytes tell a run's faulty payloads apart and keep the lines short.
DIGEST_BYTES = 8

# The gateway's formats as the simulator sends them (json_batch: arrays of json readings), and
# the presets' shapes (gateway/presets.py).
PayloadFormat = Literal[
    "json",
    "json_batch",
    "senml",
    "bare",
    "flat_json",
    "zigbee2mqtt",
    "tasmota",
    "shelly",
    "shelly_status",
    "ha_statestream",
    "ttn_v3",
]
FORMATS: tuple[str, ...] = get_args(PayloadFormat)
# Formats whose readings carry `seq`; the others can only be audited by counting.
SEQ_FORMATS: frozenset[str] = frozenset({"json", "json_batch"})

FaultKind = Literal[
    "malformed_json",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "clock_skew",
    "oversized",
    "path_traversal",
    "duplicate",
    "out_of_order",
    "disconnect",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


def payload_digest(payload: bytes) -> str:
    """The manifest's name for exact payload bytes: blake2b, 8 bytes, hex."""
    return hashlib.blake2b(payload, digest_size=DIGEST_BYTES).hexdigest()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FaultRecord(_Frozen):
    """One deliberately faulty message."""

    seq: int = Field(ge=0, description="The sequence number the message used.")
    kind: FaultKind = Field(description="What was done to it.")
    reason: RejectReason | None = Field(
        description="The reason the gateway dead-letters it with; null when it is not rejected."
    )
    digest: str = Field(pattern=r"^[0-9a-f]{16}$", description="payload_digest(payload).")
    bytes: int = Field(ge=0, description="Payload length (to match a truncated dead-letter copy).")


class DeviceRecord(_Frozen):
    """What one device sent."""

    device_id: str
    index: int = Field(ge=0, description="Position in the fleet (the n of the id pattern).")
    site: str
    model: str = Field(description="The profile's device kind.")
    topic: str = Field(description="Its topic; `{metric}` is left in for bare values.")
    metrics: tuple[str, ...] = Field(description="Metric names in each valid reading.")
    seq: tuple[tuple[int, int], ...] = Field(description="Sent sequence numbers, [first, last].")
    messages: int = Field(ge=0, description="MQTT messages published (duplicates included).")
    faults: tuple[FaultRecord, ...] = ()

    def seq_count(self) -> int:
        return sum(last - first + 1 for first, last in self.seq)

    def rejecting_seqs(self) -> set[int]:
        """Sequence numbers whose message the gateway must reject (so never store)."""
        return {f.seq for f in self.faults if f.reason is not None}

    def valid_count(self) -> int:
        """How many readings the gateway should store (at least once)."""
        return self.seq_count() - len(self.rejecting_seqs())


class ManifestHeader(_Frozen):
    """The run as a whole."""

    manifest_version: Literal[1] = MANIFEST_VERSION
    tool: str = "gateway-sim"
    seed: int
    format: PayloadFormat
    qos: Literal[0, 1]
    topic_template: str
    device_id_pattern: str
    profile: str
    devices: int = Field(ge=0)
    started_at: str = Field(description="ISO 8601 UTC, when the run started.")
    finished_at: str = Field(description="ISO 8601 UTC, when the last message was handed over.")
    messages_sent: int = Field(ge=0, description="MQTT messages published.")
    readings_sent: int = Field(ge=0, description="Sequence numbers used, over all devices.")
    messages_unacked: int = Field(
        0, ge=0, description="QoS 1 messages never acknowledged by the broker (lost, perhaps)."
    )
    faults: dict[str, int] = Field(default_factory=dict, description="Count per fault kind.")

    @property
    def keyed_by(self) -> Literal["seq", "count"]:
        """How an audit can compare: by (device, seq), or only by counts for seq-less formats."""
        return "seq" if self.format in SEQ_FORMATS else "count"


def device_line(record: DeviceRecord) -> str:
    return record.model_dump_json() + "\n"


def write_device_lines(path: Path, records: Iterable[DeviceRecord]) -> int:
    """Write a part file of device lines only (one simulator process's share); returns lines."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(device_line(record))
            count += 1
    return count


def write_manifest(
    path: Path,
    header: ManifestHeader,
    records: Iterable[DeviceRecord] = (),
    parts: Iterable[Path] = (),
) -> None:
    """Write header + device lines (from `records`, then from each part file, in order).

    Written to a temp file and renamed, so a reader never sees half a manifest.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(header.model_dump_json() + "\n")
        for record in records:
            out.write(device_line(record))
        for part in parts:
            with open(part, encoding="utf-8") as src:
                for line in src:
                    out.write(line)
    os.replace(tmp, path)


def read_header(path: Path) -> ManifestHeader:
    """The header line alone; ValueError when the file is not a manifest."""
    with open(path, encoding="utf-8") as src:
        first = src.readline()
    if not first.strip():
        raise ValueError(f"{path}: empty, not a manifest")
    return ManifestHeader.model_validate_json(first)


def iter_devices(path: Path) -> Iterator[DeviceRecord]:
    """Each device line in turn; only one is in memory at a time."""
    with open(path, encoding="utf-8") as src:
        src.readline()  # the header
        for line in src:
            if line.strip():
                yield DeviceRecord.model_validate_json(line)
