"""gateway-sim's two transports: the raw one (the benchmarks' load) sends exactly what the MQTT
one sends for a prebuilt blast, loses nothing and writes the same manifest; and its hand-made
MQTT packets are what the spec says."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.load import SUMMARY_RATE
from gateway.manifest import iter_devices, read_header
from harness.broker import Broker
from harness.poll import eventually_sync
from harness.subscriber import subscribed
from simulators import raw_packets as wire
from simulators.cli import command, spec_from_options
from simulators.raw_worker import build
from simulators.record import DeviceLog
from simulators.stream import device_for, manifest_metrics

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 30
COUNT = 20
START_TIME = "1795600000"  # a fixed device clock: both transports build the same bytes
# Header fields that are about when a run happened, not what it sent.
WHEN = ("started_at", "finished_at")
TRANSPORTS = ("raw", "mqtt")


def publish(transport: str, broker: Broker, prefix: str, qos: int, manifest: Path) -> str:
    """Run gateway-sim's prebuilt blast to the end over `transport`; its output (exit 0)."""
    cmd = command(
        broker=broker.url,
        qos=qos,
        devices=DEVICES,
        count=COUNT,
        start_time=START_TIME,
        topic_template=f"{prefix}/{{site}}/{{device_id}}/telemetry",
        client_id_prefix=f"{prefix}-{transport}-",
        processes=2,
        manifest=manifest,
        prebuilt=True,
        connections="pool",
        pool_size=2,  # several devices per connection
        transport=transport,
        quiet=True,
    )
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("qos", [0, 1])
def test_the_raw_transport_sends_what_the_mqtt_one_sends_and_the_same_manifest(
    broker: Broker, tmp_path: Path, unique: str, qos: int
) -> None:
    """Every message arrives, in each device's order, byte for byte what the MQTT transport
    sends for the same options; the manifests agree line for line (but for the run's times)."""
    total = DEVICES * COUNT
    prefix = f"{unique}q{qos}"  # one topic tree for both runs, one after the other
    got: dict[str, dict[str, list[bytes]]] = {}
    for transport in TRANSPORTS:
        with subscribed(broker, f"{prefix}-{transport}-sub", f"{prefix}/#") as sub:
            output = publish(transport, broker, prefix, qos, tmp_path / f"{transport}.jsonl")
            eventually_sync(lambda: len(sub.messages) >= total, timeout_s=20)
            got[transport] = sub.by_topic()
        assert len(sub.messages) == total
        assert SUMMARY_RATE.search(output), output
        assert f"sent {total:,} messages" in output
        if transport == "raw":
            assert "broker had all in" in output, output
    assert got["raw"] == got["mqtt"]

    ours, theirs = tmp_path / "raw.jsonl", tmp_path / "mqtt.jsonl"
    header = read_header(ours)
    assert header.messages_sent == total
    assert header.messages_unacked == 0
    assert header.model_dump(exclude=set(WHEN)) == read_header(theirs).model_dump(exclude=set(WHEN))
    mine = list(iter_devices(ours))
    assert mine == list(iter_devices(theirs))
    assert [d.device_id for d in mine] == [f"dev-{n:05d}" for n in range(DEVICES)]
    for record in mine:
        assert record.seq == ((0, COUNT - 1),)
        # Every seq of the manifest arrived, in order, on the device's topic.
        payloads = got["raw"][record.topic]
        assert [json.loads(p)["seq"] for p in payloads] == list(range(COUNT))


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"count": 5}, "--prebuilt"),
        ({"count": 5, "prebuilt": True, "rate": 1}, "--prebuilt"),
        ({"count": 5, "prebuilt": True}, "--connections pool"),
        ({"count": 5, "prebuilt": True, "connections": "pool", "broker": "mqtts://h"}, "plain"),
    ],
)
def test_the_raw_transport_refuses_what_it_cannot_send(
    options: dict[str, object], problem: str
) -> None:
    """A blast only: prebuilt, unpaced, pooled, plain MQTT; said before anything starts."""
    with pytest.raises(ValueError, match=problem):
        command(transport="raw", **options)


def test_encoded_packets_follow_mqtt_311() -> None:
    """The bytes amqtt's codec gives the raw transport: topic field, packet id wrapping, a
    remaining length over one byte, and the exact PUBACK expected back."""
    assert wire.publish_packet("a/b", b"xy", 0, 5) == b"\x30\x07\x00\x03a/bxy"
    assert wire.publish_packet("a/b", b"xy", 1, 0) == b"\x32\x09\x00\x03a/b\x00\x01xy"
    long = wire.publish_packet("a/b", b"x" * 200, 1, 65_534)
    assert long[:8] == b"\x32\xcf\x01\x00\x03a/b"
    assert long[8:10] == b"\xff\xff"
    assert wire.packet_id(65_534) == 65_535
    assert wire.packet_id(65_535) == 1  # never 0 (§2.3.1)
    assert wire.puback_packet(65_535) == b"\x40\x02\x00\x01"
    assert wire.PUBACK_BYTES == 4
    assert wire.CONNACK_ACCEPTED == b"\x20\x02\x00\x00"
    assert wire.DISCONNECT == b"\xe0\x00"
    connect = wire.connect_packet("c1", 60)
    assert connect == b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1"


@pytest.mark.parametrize("preset", ["tasmota", "zigbee2mqtt"])
def test_both_transports_log_a_preset_formats_metrics(preset: str) -> None:
    """The manifest's metrics are what the gateway stores of a preset's payload (not the
    simulated device's own names), whichever transport sends it."""
    options: dict[str, object] = {
        "count": 2,
        "devices": 3,
        "prebuilt": True,
        "connections": "pool",
        "format": preset,
    }
    spec = spec_from_options(transport="raw", **options)
    raw_logs, _ = build(spec, process=0, first=0, stop=3, connections=1, window=10)
    devices = [device_for(spec, i) for i in range(3)]
    assert [log.metrics for log in raw_logs] == [manifest_metrics(spec, d) for d in devices]
    assert any(log.metrics != log.device.metrics for log in raw_logs), "a preset renames them"
    mqtt_spec = spec_from_options(transport="mqtt", **options)
    assert [DeviceLog.of(mqtt_spec, d).metrics for d in devices] == [
        log.metrics for log in raw_logs
    ]
