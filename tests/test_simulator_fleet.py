"""gateway-sim against a real Mosquitto: every message arrives, and the manifest says so."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

from gateway.manifest import DeviceRecord, iter_devices, payload_digest, read_header
from gateway.ports import free_port
from harness.broker import Broker
from harness.poll import eventually
from harness.subscriber import subscribed

REPO = Path(__file__).resolve().parent.parent


async def run_sim(*args: str, timeout_s: float = 60) -> tuple[int, str]:
    """Run `python -m simulators` (what the gateway-sim script runs); returns (code, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators",
        "--quiet",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(timeout_s):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def expected_readings(records: list[DeviceRecord]) -> set[tuple[str, int]]:
    """(device_id, seq) of every valid reading the manifest says was sent."""
    valid = set()
    for record in records:
        rejected = record.rejecting_seqs()
        for first, last in record.seq:
            valid.update((record.device_id, s) for s in range(first, last + 1) if s not in rejected)
    return valid


def received_readings(
    messages: list[tuple[str, bytes]], rejecting_digests: set[str]
) -> set[tuple[str, int]]:
    """(device_id, seq) of every received reading; a payload that is no reading must be one of
    the manifest's rejecting faults."""
    found = set()
    for _, payload in messages:
        if payload_digest(payload) in rejecting_digests:
            continue
        parsed = json.loads(payload)
        for reading in parsed if isinstance(parsed, list) else [parsed]:
            found.add((reading["device_id"], reading["seq"]))
    return found


def reconnects(output: str) -> int:
    match = re.search(r"reconnects ([\d,]+)", output)
    assert match, output
    return int(match.group(1).replace(",", ""))


async def test_every_message_arrives_and_the_manifest_matches_what_arrived(
    broker: Broker, unique: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "run.jsonl"
    with subscribed(broker, f"{unique}-sub", f"{unique}/#") as sub:
        code, out = await run_sim(
            f"--broker={broker.url}",
            f"--topic-template={unique}/{{site}}/{{device_id}}/telemetry",
            f"--client-id-prefix={unique}-",
            "--devices=20",
            "--count=10",
            "--rate=50",
            "--sites=3",
            "--fault-rate=0.2",
            "--seed=3",
            f"--manifest={manifest}",
        )
        assert code == 0, out
        header = read_header(manifest)
        await eventually(
            lambda: len(sub.messages) >= header.messages_sent,
            message=f"{header.messages_sent} messages",
        )
    records = list(iter_devices(manifest))
    assert [r.device_id for r in records] == [f"dev-{n:05d}" for n in range(20)]
    assert sum(r.messages for r in records) == header.messages_sent
    assert header.readings_sent == 200
    assert all(r.seq == ((0, 9),) for r in records)
    assert {r.site for r in records} == {"site-01", "site-02", "site-03"}
    faults = [f for r in records for f in r.faults]
    assert len({f.kind for f in faults}) >= 5, "a 20% fault rate over 200 readings mixes kinds"
    assert sum(header.faults.values()) == len(faults)

    received_digests = {payload_digest(p) for _, p in sub.messages}
    assert {f.digest for f in faults} <= received_digests
    rejecting = {f.digest for f in faults if f.reason is not None}
    assert received_readings(sub.messages, rejecting) == expected_readings(records)
    topics = {r.device_id: r.topic for r in records}
    for topic, payload in sub.messages:
        if payload_digest(payload) not in rejecting:
            assert topic == topics[json.loads(payload)["device_id"]]


async def test_two_processes_merge_their_manifests(
    broker: Broker, unique: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "run.jsonl"
    with subscribed(broker, f"{unique}-sub", f"{unique}/#") as sub:
        code, out = await run_sim(
            f"--broker={broker.url}",
            f"--topic-template={unique}/{{site}}/{{device_id}}/telemetry",
            f"--client-id-prefix={unique}-",
            "--devices=30",
            "--count=6",
            "--rate=0",
            "--format=json_batch",
            "--batch-size=4",
            "--processes=2",
            "--connections=pool",
            "--pool-size=2",
            f"--manifest={manifest}",
        )
        assert code == 0, out
        assert "2 process(es), 4 connection(s) (pool)" in out
        header = read_header(manifest)
        await eventually(lambda: len(sub.messages) >= header.messages_sent)
    records = list(iter_devices(manifest))
    assert [r.index for r in records] == list(range(30))
    assert header.messages_sent == 30 * 2  # batches of 4 + 2
    leftovers = await asyncio.to_thread(lambda: list(tmp_path.glob("*.part-*")))
    assert not leftovers, "the parts are merged and removed"
    assert received_readings(sub.messages, set()) == expected_readings(records)


async def test_qos1_disconnect_faults_lose_nothing(
    broker: Broker, unique: str, tmp_path: Path
) -> None:
    """Abrupt disconnects (TCP reset) mid-run: paho republishes what was not acknowledged."""
    manifest = tmp_path / "run.jsonl"
    with subscribed(broker, f"{unique}-sub", f"{unique}/#") as sub:
        code, out = await run_sim(
            f"--broker={broker.url}",
            f"--topic-template={unique}/{{site}}/{{device_id}}/telemetry",
            f"--client-id-prefix={unique}-",
            "--devices=10",
            "--count=40",
            "--rate=0",
            "--qos=1",
            "--connections=pool",
            "--pool-size=2",
            "--fault=disconnect=0.05",
            f"--manifest={manifest}",
        )
        assert code == 0, out
        records = list(iter_devices(manifest))
        assert reconnects(out) == read_header(manifest).faults["disconnect"] > 0
        expected = expected_readings(records)
        await eventually(lambda: received_readings(sub.messages, set()) >= expected)
    assert received_readings(sub.messages, set()) == expected


async def test_qos0_disconnect_faults_half_close_and_lose_nothing(
    broker: Broker, unique: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "run.jsonl"
    with subscribed(broker, f"{unique}-sub", f"{unique}/#") as sub:
        code, out = await run_sim(
            f"--broker={broker.url}",
            f"--topic-template={unique}/{{site}}/{{device_id}}/telemetry",
            f"--client-id-prefix={unique}-",
            "--devices=5",
            "--count=30",
            "--rate=0",
            "--qos=0",
            "--fault=disconnect=0.05",
            f"--manifest={manifest}",
        )
        assert code == 0, out
        assert reconnects(out) > 0
        expected = expected_readings(list(iter_devices(manifest)))
        await eventually(lambda: received_readings(sub.messages, set()) >= expected)


async def test_five_thousand_devices_each_on_its_own_connection(
    own_broker: Broker, unique: str
) -> None:
    with subscribed(own_broker, f"{unique}-sub", f"{unique}/#") as sub:
        code, out = await run_sim(
            f"--broker={own_broker.url}",
            f"--topic-template={unique}/{{site}}/{{device_id}}/telemetry",
            f"--client-id-prefix={unique}-",
            "--devices=5000",
            "--count=1",
            "--rate=0",
            "--qos=1",
            "--connections=per-device",
            "--processes=2",
        )
        assert code == 0, out
        assert "5,000 connection(s) (per-device)" in out
        await eventually(lambda: len(sub.messages) >= 5000, message="5000 messages")
    device_ids = {json.loads(payload)["device_id"] for _, payload in sub.messages}
    assert device_ids == {f"dev-{n:05d}" for n in range(5000)}


async def test_without_count_it_runs_until_sigint_and_still_writes_the_manifest(
    broker: Broker, unique: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "run.jsonl"
    with subscribed(broker, f"{unique}-sub", f"{unique}/#") as sub:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simulators",
            "--quiet",
            f"--broker={broker.url}",
            f"--topic-template={unique}/{{site}}/{{device_id}}/telemetry",
            f"--client-id-prefix={unique}-",
            "--devices=10",
            "--rate=20",
            "--processes=2",
            f"--manifest={manifest}",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await eventually(lambda: len(sub.messages) >= 50, message="the fleet is publishing")
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        records = list(iter_devices(manifest))
        expected = expected_readings(records)
        await eventually(lambda: received_readings(sub.messages, set()) >= expected)
    assert len(expected) == read_header(manifest).readings_sent >= 50


async def test_an_unreachable_broker_fails_fast_with_exit_code_1() -> None:
    code, out = await run_sim(
        f"--broker=mqtt://127.0.0.1:{free_port()}", "--connect-timeout=0.5", "--devices=2"
    )
    assert code == 1
    assert "cannot connect" in out


async def test_bad_options_exit_with_code_2() -> None:
    code, out = await run_sim("--format=bare", "--topic-template=sensors/{device_id}/telemetry")
    assert code == 2
    assert "{metric}" in out
