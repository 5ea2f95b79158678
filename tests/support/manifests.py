"""Manifests for tests that store readings without the simulator: what it would have recorded."""

from __future__ import annotations

from pathlib import Path

from gateway.manifest import DeviceRecord, ManifestHeader, write_manifest


def write_manifest_for(path: Path, last_seq: dict[str, int], site: str = "site-0") -> None:
    """Format json; each device sent seq 0..last_seq[device], all valid."""
    records = [
        DeviceRecord(
            device_id=device_id,
            index=i,
            site=site,
            model="climate",
            topic=f"sensors/{site}/{device_id}/telemetry",
            metrics=("temperature",),
            seq=((0, last),),
            messages=last + 1,
        )
        for i, (device_id, last) in enumerate(sorted(last_seq.items()))
    ]
    sent = sum(last + 1 for last in last_seq.values())
    header = ManifestHeader(
        seed=1,
        format="json",
        qos=1,
        topic_template="sensors/{site}/{device_id}/telemetry",
        device_id_pattern="dev-{n}",
        profile="default",
        devices=len(records),
        started_at="2026-11-25T11:00:00.000Z",
        finished_at="2026-11-25T11:59:00.000Z",
        messages_sent=sent,
        readings_sent=sent,
    )
    write_manifest(path, header, records)
