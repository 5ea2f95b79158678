"""`gateway parse`: what the running gateway would store for a message, or the rejection it
would dead-letter, through the same decoder and steps. Same inputs, same result as a running
gateway's files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import Gateway
from gateway.config import load_config
from gateway.parse import parse_message
from harness.broker import Broker
from harness.poll import eventually
from tests.support.gateway import read_dead_letters, read_lines, running
from tests.support.preset_examples import EXAMPLES
from tests.support.publish import publish


def gateway_parse(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "parse", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        input=stdin.decode() if stdin is not None else None,
    )


def test_parse_prints_the_stored_line_and_what_was_left_out() -> None:
    done = gateway_parse(
        "--topic", "tele/tasmota_0A1B2C/SENSOR", "--format", "tasmota",
        "--payload", '{"Time":"2019-11-03T19:34:28","BME280":{"Temperature":21.7},'
        '"TempUnit":"C","Name":"attic"}',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "topic 'tele/tasmota_0A1B2C/SENSOR': subscription 0 (filter 'tele/+/SENSOR', "
        "template 'tele/{device_id}/SENSOR', format tasmota)"
    )
    stored = json.loads(lines[1].removeprefix("stored: "))
    assert stored["device_id"] == "tasmota_0A1B2C"
    assert stored["metrics"] == {"BME280.Temperature": 21.7}
    assert stored["units"] == {"BME280.Temperature": "Cel"}
    assert lines[2] == 'left out: Name = "attic": a string that is not a number or a listed enum'


def test_parse_names_a_rejection_and_exits_1() -> None:
    done = gateway_parse(
        "--topic", "home/kitchen/thermo", "--format", "flat_json", "--json",
        "--payload", '{"status": "ok", "battery": null}',
    )  # fmt: skip
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["readings"] == []
    assert result["rejection"] == {
        "reason": "unsupported_value",
        "detail": 'no metrics: status = "ok": a string that is not a number or a listed enum; '
        "battery = null: no value",
    }


def test_parse_reads_a_payload_file_and_a_recorded_time(tmp_path: Path) -> None:
    (example,) = [e for e in EXAMPLES if e.name == "The Things Stack uplink message example"]
    path = tmp_path / "uplink.json"
    path.write_bytes(example.raw)
    done = gateway_parse(
        "--topic", example.topic, "--format", "ttn_v3", "--payload-file", str(path),
        "--received-at", "2020-02-12T15:15:47Z", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = json.loads(done.stdout)["readings"]
    assert line["ts"] == "2020-02-12T15:15:46.014Z"
    assert (line["device_id"], line["seq"], line["metrics"]) == (
        "dev1",
        1,
        {"temperature": 1.0, "luminosity": 0.64},
    )
    # Now, that uplink is years old: the running gateway would refuse it, and parse says so.
    now = gateway_parse("--topic", example.topic, "--format", "ttn_v3", "--payload-file", str(path))
    assert now.returncode == 1
    assert "dead-lettered: ts_out_of_range" in now.stdout


def test_parse_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[[mqtt.subscriptions]]\nformat = 'mapping'\n", encoding="utf-8")
    done = gateway_parse("--topic", "a/b", "--payload", "1", "--config", str(path))
    assert done.returncode == 2
    assert "format 'mapping' needs a [mapping] table" in done.stderr


def config_text(broker: Broker, data_dir: Path, prefix: str) -> str:
    return f"""
shutdown_grace_s = 20
[mqtt]
host = "{broker.host}"
port = {broker.port}
client_id = "gw-{prefix}"
reconnect_min_s = 0.1
[[mqtt.subscriptions]]
template = "{prefix}/json/{{site}}/{{device_id}}"
[[mqtt.subscriptions]]
template = "{prefix}/map/{{device_id}}"
format = "mapping"
[mqtt.subscriptions.mapping]
ts = "payload:time"
seq = "payload:n"
rename = {{ "env.t" = "temperature" }}
units = {{ temperature = "Cel" }}
tag_fields = {{ fw = "fw" }}
[[mqtt.subscriptions]]
template = "{prefix}/tele/{{device_id}}/SENSOR"
format = "tasmota"
[[mqtt.subscriptions]]
template = "{prefix}/ha/{{domain}}/{{device_id}}/state"
format = "ha_statestream"
[files]
data_dir = "{data_dir}"
[http]
port = 0
[[steps]]
kind = "check_range"
metric = "temperature"
min = -60
max = 150
"""


def cases(prefix: str, now: float) -> list[tuple[str, bytes]]:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 5)) + ".250Z"
    return [
        (
            f"{prefix}/json/a/dev-1",
            json.dumps({"ts": ts, "seq": 3, "metrics": {"temperature": 20.5}}).encode(),
        ),
        (
            f"{prefix}/json/a/dev-2",
            json.dumps({"ts": ts, "metrics": {"temperature": "x"}}).encode(),
        ),
        (
            f"{prefix}/map/m-1",
            json.dumps(
                {"time": ts, "n": 7, "env": {"t": 19.25, "rh": "40"}, "fw": "1.2", "x": "?"}
            ).encode(),
        ),
        (f"{prefix}/map/m-2", json.dumps({"time": ts, "state": "broken"}).encode()),
        (f"{prefix}/map/m-3", json.dumps({"time": ts, "env": {"t": 1e6}}).encode()),
        (f"{prefix}/map/m-4", json.dumps({"env": {"t": 1}}).encode()),
        (
            f"{prefix}/tele/t-1/SENSOR",
            b'{"Time":"2019-11-03T19:34:28","BME280":{"Temperature":21.7},"TempUnit":"C"}',
        ),
        (f"{prefix}/ha/sensor/outside/state", b"unavailable"),
        (f"{prefix}/ha/light/porch/state", b"on"),
    ]


def without_receipt(line: dict[str, Any], topic: str) -> dict[str, Any]:
    """A stored line minus what depends on the moment of receipt."""
    line = {k: v for k, v in line.items() if k != "received_at"}
    if "/tele/" in topic or "/ha/" in topic:  # these presets time a reading by its receipt
        line.pop("ts")
    return line


async def test_parse_gives_what_a_running_gateway_writes(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    path = tmp_path / "gw.toml"
    data_dir = tmp_path / "data"
    path.write_text(config_text(broker, data_dir, unique), encoding="utf-8")
    config = load_config(path)
    messages = cases(unique, time.time())
    gateway = Gateway(config)
    async with running(gateway):
        await publish(broker.host, broker.port, messages)
        m = gateway.metrics
        await eventually(
            lambda: (
                m.sample("gateway_messages_received_total") >= len(messages)
                and m.sample("gateway_readings_in_flight") == 0
            ),
            message="every message settled",
        )
    stored = read_lines(data_dir)
    dead = read_dead_letters(data_dir)
    assert m.sample("gateway_readings_dropped_total", reason="filtered") == 1
    for topic, payload in messages:
        expected = parse_message(config, topic, payload, time.time())
        written = [
            without_receipt(line, topic)
            for line in stored
            if topic.endswith(
                tuple(f"/{line['device_id']}{end}" for end in ("", "/SENSOR", "/state"))
            )
        ]
        assert [without_receipt(line, topic) for line in expected["readings"]] == written, topic
        records = [r for r in dead if r["topic"] == topic and r["payload"] == payload.decode()]
        if expected["rejection"] is None:
            assert records == [], topic
        else:
            (record,) = records
            assert (record["reason"], record["detail"]) == (
                expected["rejection"]["reason"],
                expected["rejection"]["detail"],
            )
        # The command line, given the same config file, says the same.
        done = gateway_parse(
            "--config", str(path), "--topic", topic, "--payload", payload.decode(), "--json"
        )
        assert done.returncode == (0 if expected["readings"] else 1), done.stderr
        shown = json.loads(done.stdout)
        assert shown["rejection"] == expected["rejection"]
        assert [without_receipt(r, topic) for r in shown["readings"]] == [
            without_receipt(r, topic) for r in expected["readings"]
        ]


@pytest.mark.parametrize(
    ("topic", "flags"),
    [
        ("zigbee2mqtt/kitchen", ["--format", "zigbee2mqtt"]),
        ("x/kitchen/y", ["--format", "flat_json", "--template", "x/{device_id}/y"]),
        ("home/kitchen", ["--format", "flat_json"]),  # no template: the topic is its own
    ],
)
def test_parse_flags_shape_the_subscription_as_run_does(topic: str, flags: list[str]) -> None:
    done = gateway_parse("--topic", topic, *flags, "--payload", '{"temperature": 21}', "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = json.loads(done.stdout)["readings"]
    assert line["device_id"] == "kitchen"
