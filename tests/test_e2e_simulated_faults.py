"""The simulator's faults through a real broker and a real gateway: every kind lands where the
manifest says, with the reason it says, and the audit proves nothing valid was lost."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from gateway import Gateway
from gateway.audit import audit, format_table
from gateway.manifest import FAULT_KINDS, read_header
from harness.broker import Broker
from tests.support.gateway import make_config, running, settled

# Kinds that cannot happen in a format (see the simulator's fault table).
NOT_APPLICABLE = {
    "json": set(),
    "json_batch": set(),
    "senml": set(),
    "bare": {"clock_skew", "missing_field", "wrong_type"},
}


@pytest.mark.parametrize("fmt", ["json", "json_batch", "senml", "bare"])
async def test_every_fault_kind_reaches_the_dead_letter_files_with_its_reason(
    broker: Broker, tmp_path: Path, unique: str, fmt: str
) -> None:
    level = "{metric}" if fmt == "bare" else "telemetry"
    template = f"{unique}/{{site}}/{{device_id}}/{level}"
    config = make_config(
        broker,
        tmp_path,
        unique,
        mqtt={
            "subscriptions": [
                {"template": template, "format": "json" if fmt.startswith("json") else fmt}
            ]
        },
        steps=[{"kind": "check_range", "metric": "temperature", "min": -60, "max": 150}],
    )
    manifest = tmp_path / "manifest.jsonl"
    gateway = Gateway(config)
    async with running(gateway):
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulators",
            "--broker", broker.url, "--devices", "20", "--count", "40", "--rate", "0",
            "--format", fmt, "--topic-template", template, "--fault-rate", "0.3",
            "--seed", "11", "--manifest", str(manifest), "--quiet",
        )  # fmt: skip
        assert await asyncio.wait_for(sim.wait(), 120) == 0
        await settled(gateway, read_header(manifest).messages_sent)
    header = read_header(manifest)
    expected_kinds = set(FAULT_KINDS) - NOT_APPLICABLE[fmt]
    assert {k for k, n in header.faults.items() if n} == expected_kinds, header.faults
    report = audit(manifest, config.files.data_dir)
    assert report.ok, format_table(report)
    assert report.total.faults_found == report.total.faults_expected > 0
