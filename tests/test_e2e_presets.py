"""Each preset end to end: a simulated fleet in that firmware's shape (gateway-sim --format
<preset>, faults included) through a real Mosquitto into a running gateway subscribed with that
preset, then `gateway audit`: nothing valid missing, every fault dead-lettered with its reason.
Also `gateway run --topic 'home/#' --format flat_json` as a process, and a mismatched filter and
template refused at start."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import Gateway
from gateway.audit import audit, format_table
from gateway.layout import DEAD_LETTER_DIR
from gateway.manifest import read_header
from harness.broker import Broker
from harness.poll import eventually
from simulators.preset_payloads import PRESET_FORMATS
from tests.support.gateway import make_config, read_lines, running, settled
from tests.support.publish import publish

# Gateway template (the preset's, under the test's own prefix) and the simulator's topic.
TOPICS = {
    "flat_json": ("{p}/{{site}}/{{device_id}}/telemetry", "{p}/{{site}}/{{device_id}}/telemetry"),
    "zigbee2mqtt": ("{p}/zigbee2mqtt/{{device_id}}", "{p}/zigbee2mqtt/{{device_id}}"),
    "tasmota": ("{p}/tele/{{device_id}}/SENSOR", "{p}/tele/{{device_id}}/SENSOR"),
    "shelly": ("{p}/{{device_id}}/events/rpc", "{p}/{{device_id}}/events/rpc"),
    "shelly_status": ("{p}/{{device_id}}/status/+", "{p}/{{device_id}}/status/{{metric}}"),
    "ha_statestream": (
        "{p}/homeassistant/{{domain}}/{{device_id}}/state",
        "{p}/homeassistant/sensor/{{device_id}}/state",
    ),
    "ttn_v3": ("{p}/v3/+/devices/{{device_id}}/up", "{p}/v3/{{site}}@ttn/devices/{{device_id}}/up"),
}


@pytest.mark.parametrize("preset", PRESET_FORMATS)
async def test_a_simulated_fleet_in_each_preset_shape_is_stored_and_audited_clean(
    broker: Broker, tmp_path: Path, unique: str, preset: str
) -> None:
    template, sim_template = (t.format(p=unique) for t in TOPICS[preset])
    config = make_config(
        broker,
        tmp_path,
        unique,
        mqtt={"subscriptions": [{"template": template, "format": preset}]},
        steps=[{"kind": "check_range", "metric": "temperature", "min": -60, "max": 150}],
    )
    manifest = tmp_path / "manifest.jsonl"
    gateway = Gateway(config)
    async with running(gateway):
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulators",
            "--broker", broker.url, "--devices", "12", "--count", "25", "--rate", "0",
            "--profile", "factory_floor", "--format", preset, "--topic-template", sim_template,
            "--fault-rate", "0.3", "--seed", "4", "--manifest", str(manifest), "--quiet",
        )  # fmt: skip
        assert await asyncio.wait_for(sim.wait(), 120) == 0
        await settled(gateway, read_header(manifest).messages_sent)
        if preset == "zigbee2mqtt":  # its battery_low: null, in every message: left out, counted
            assert gateway.metrics.sample("gateway_mapping_values_left_out_total") > 0
    report = audit(manifest, config.files.data_dir)
    assert report.ok, format_table(report)
    assert report.total.found == report.total.expected > 0
    assert report.total.faults_found == report.total.faults_expected > 0
    assert not report.dead_letter_unmatched, format_table(report)
    # The audit command says the same.
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "audit", "--manifest", str(manifest),
        "--data-dir", str(config.files.data_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, output.decode()


async def test_gateway_run_home_hash_with_flat_json_stores_flat_payloads(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    data = tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run",
        "--broker", broker.url, "--topic", f"{unique}/home/#", "--format", "flat_json",
        "--client-id", f"gw-{unique}", "--data-dir", str(data), "--metrics-addr", "127.0.0.1:0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while b"subscribed" not in (line := await proc.stdout.readline()):
                assert line, "the gateway ended before it subscribed"
        await publish(
            broker.host,
            broker.port,
            [
                (f"{unique}/home/kitchen/thermo-1", b'{"temperature": 21.5, "humidity": "45"}'),
                (f"{unique}/home/hall/door-2", b'{"contact": true, "battery": 97}'),
            ],
        )

        def stored() -> list[dict[str, object]]:
            return read_lines(data, include_open=True)

        await eventually(lambda: len(stored()) == 2, message="two readings stored")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
    by_device = {row["device_id"]: row["metrics"] for row in stored()}
    assert by_device == {
        "thermo-1": {"temperature": 21.5, "humidity": 45.0},
        "door-2": {"contact": 1.0, "battery": 97.0},
    }
    assert proc.returncode == 0


def test_a_filter_its_template_cannot_read_fails_at_start_naming_both(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--broker", "mqtt://127.0.0.1:9",
         "--topic", "home/#", "--template", "sensors/{site}/{device_id}/telemetry",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2
    assert "filter 'home/#' and template 'sensors/{site}/{device_id}/telemetry'" in done.stderr
    assert "cannot match the same topic" in done.stderr
    assert not (tmp_path / DEAD_LETTER_DIR).exists()


def test_check_config_refuses_the_same_mismatch_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        "[[mqtt.subscriptions]]\nfilter = 'home/#'\nformat = 'zigbee2mqtt'\n", encoding="utf-8"
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        "mqtt.subscriptions.0: filter 'home/#' and template 'zigbee2mqtt/{device_id}' cannot "
        "match the same topic"
    ) in done.stderr


def test_a_filter_wider_than_its_template_is_warned_about_at_check_and_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        "[[mqtt.subscriptions]]\nfilter = 'zigbee2mqtt/#'\nformat = 'zigbee2mqtt'\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(
        "warning: mqtt.subscriptions.0: filter 'zigbee2mqtt/#' and template "
        "'zigbee2mqtt/{device_id}': from level 1 the filter's '#' delivers topics of any shape"
    )


async def test_a_gateway_with_a_wide_filter_says_so_at_start(
    broker: Broker, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    template = f"{unique}/{{site}}/{{device_id}}/telemetry"
    config = make_config(
        broker,
        tmp_path,
        unique,
        mqtt={"subscriptions": [{"filter": f"{unique}/#", "template": template}]},
    )
    async with running(Gateway(config)):
        pass
    assert (
        f"mqtt.subscriptions.0: filter '{unique}/#' and template '{template}': from level 1 the "
        "filter's '#' delivers topics of any shape"
    ) in caplog.text


def test_check_config_prints_what_a_preset_does(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[[mqtt.subscriptions]]\nformat = 'tasmota'\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (sub,) = json.loads(done.stdout)["mqtt"]["subscriptions"]
    assert (sub["template"], sub["filter"]) == ("tele/{device_id}/SENSOR", "tele/+/SENSOR")
    assert sub["mapping"]["unit_fields"]["*Temperature"] == "TempUnit"
