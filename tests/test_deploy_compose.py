"""deploy/compose and deploy/Dockerfile, checked without a Docker engine.

The stack cannot run here (no engine), so each part is checked where it can be: the compose
file against the Compose spec schema; every file it mounts exists; the gateway, simulator and
Prometheus settings agree with each other and load in the real programs; the real Mosquitto
runs the broker config and keeps more than its default 1000 messages for an offline session;
the image's and the compose file's health checks, run against a real gateway, pass and fail
when they should.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from gateway import Gateway
from gateway.config import GatewayConfig, load_config
from gateway.ports import free_port, wait_for_port
from harness.broker import MOSQUITTO, Broker
from harness.poll import eventually_sync
from simulators.cli import build_parser as sim_parser
from simulators.cli import spec_from_args
from tests.support.gateway import make_config, running
from tests.support.publish import publish

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]


def gateway_config() -> GatewayConfig:
    return load_config(COMPOSE_DIR / "gateway.toml")


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"{duration!r}: write durations in whole seconds"
    return float(match[1])


def bind_mounts(service: str) -> dict[str, Path]:
    """Container path -> host path, for the service's bind mounts (not named volumes)."""
    mounts = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


def named_volumes(service: str) -> dict[str, str]:
    """Container path -> volume name."""
    out = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        if not source.startswith((".", "/")):
            out[target] = source
    return out


# --- the compose file ---------------------------------------------------------------------


def test_the_compose_file_matches_the_compose_spec_schema() -> None:
    pytest.importorskip("check_jsonschema", reason="pip install -e '.[dev]' (check-jsonschema)")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_config_accepts_it_where_compose_is_installed() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed here")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_mounted_file_exists_and_every_named_volume_is_declared() -> None:
    for service in SERVICES:
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{service}: {source} (for {target}) is missing"
        for volume in named_volumes(service).values():
            assert volume in COMPOSE["volumes"], f"{service}: volume {volume} not declared"


def test_published_ports_are_on_loopback_only() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_the_gateway_config_loads_and_points_at_the_compose_services() -> None:
    config = gateway_config()
    assert config.mqtt.host == "mosquitto"
    assert "mosquitto" in SERVICES
    assert config.mqtt.port == 1883
    assert config.http.host == "0.0.0.0", "reachable from Prometheus's container"
    assert f"127.0.0.1:{config.http.port}:{config.http.port}" in SERVICES["gateway"]["ports"]
    assert bind_mounts("gateway")["/etc/telemetry-gateway/gateway.toml"] == (
        COMPOSE_DIR / "gateway.toml"
    )
    assert str(config.files.data_dir) in named_volumes("gateway"), "data on a volume"
    assert config.sensor_values.enabled, "the fleet dashboard reads gateway_sensor_value"
    assert "site" in config.sensor_values.tags, "the fleet dashboard filters by site"


def test_compose_waits_for_the_drain_before_killing_the_gateway() -> None:
    grace = seconds(SERVICES["gateway"]["stop_grace_period"])
    assert grace >= gateway_config().shutdown_grace_s + 10


def test_the_simulator_command_is_valid_and_feeds_the_gateway_subscription() -> None:
    service = SERVICES["simulator"]
    assert service["entrypoint"] == ["gateway-sim"]
    assert service["image"] == SERVICES["gateway"]["image"]
    spec = spec_from_args(sim_parser().parse_args(service["command"]))
    assert (spec.broker.host, spec.broker.port) == ("mosquitto", 1883)
    assert spec.count is None, "runs until the container is stopped"
    assert spec.duration_s == 0, "runs until the container is stopped"
    (subscription,) = gateway_config().mqtt.subscriptions
    assert spec.topic_template == subscription.template
    assert spec.format == subscription.format
    assert spec.qos == subscription.qos == 1
    assert service["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_prometheus_and_grafana_mount_the_deploy_files_and_scrape_the_gateway() -> None:
    mounts = bind_mounts("prometheus")
    assert mounts["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / "prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == DEPLOY / "prometheus" / "alerts.yml"
    prometheus = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text("utf-8"))
    assert prometheus["rule_files"] == ["alerts.yml"], "resolved next to prometheus.yml"
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "telemetry-gateway"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"gateway:{gateway_config().http.port}"]
    grafana = bind_mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    assert grafana["/etc/grafana/dashboards"] == DEPLOY / "grafana" / "dashboards"
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/telemetry-gateway.yml").read_text("utf-8")
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text("utf-8")
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()


# --- the broker config, in the real Mosquitto ----------------------------------------------


@contextlib.contextmanager
def compose_mosquitto(workdir: Path) -> Iterator[int]:
    """Mosquitto running deploy/compose/mosquitto.conf; only paths and the listener changed."""
    text = (COMPOSE_DIR / "mosquitto.conf").read_text(encoding="utf-8")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    for old, new in (
        ("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1"),
        ("persistence_location /mosquitto/data/", f"persistence_location {workdir}/"),
        ("log_dest stdout", f"log_dest file {workdir}/mosquitto.log"),
    ):
        assert text.count(old) == 1, f"mosquitto.conf no longer says {old!r}"
        text = text.replace(old, new)
    conf = workdir / "mosquitto.conf"
    conf.write_text(text, encoding="utf-8")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        try:
            wait_for_port(port)
        except OSError:
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace")
            pytest.fail(f"mosquitto refused deploy/compose/mosquitto.conf: {err}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def session_client(port: int, client_id: str, on_message: Any = None) -> mqtt.Client:
    """A 3.1.1 client with a persistent session, connected and looping."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    if on_message is not None:
        client.on_message = on_message
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    assert connected.wait(10), "no CONNACK"
    return client


def test_the_broker_config_runs_in_mosquitto_and_queues_past_the_default_limit(
    tmp_path: Path,
) -> None:
    """3000 messages for an offline persistent session all arrive: the default keeps 1000."""
    text = (COMPOSE_DIR / "mosquitto.conf").read_text(encoding="utf-8")
    for line in (
        "persistence true",
        "max_queued_messages 100000",
        "max_inflight_messages 1000",
        "set_tcp_nodelay true",
    ):
        assert re.search(rf"^{line}$", text, re.MULTILINE), line
    sent = 3000
    with compose_mosquitto(tmp_path / "mosquitto") as port:
        subscriber = session_client(port, "compose-queue-test")
        subscribed = threading.Event()
        subscriber.on_subscribe = lambda *_: subscribed.set()
        subscriber.subscribe("queue-test/#", qos=1)
        assert subscribed.wait(10), "no SUBACK"
        subscriber.disconnect()
        subscriber.loop_stop()

        messages = ((f"queue-test/{n % 7}", str(n).encode()) for n in range(sent))
        assert asyncio.run(publish("127.0.0.1", port, messages, qos=1)) == sent

        received: set[bytes] = set()
        lock = threading.Lock()

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            with lock:
                received.add(message.payload)

        back = session_client(port, "compose-queue-test", on_message)
        try:
            eventually_sync(lambda: len(received) >= sent, timeout_s=30, message="all queued")
        finally:
            back.disconnect()
            back.loop_stop()
    assert received == {str(n).encode() for n in range(sent)}


# --- the image ------------------------------------------------------------------------------


def dockerfile_healthcheck() -> list[str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    match = re.search(r"^HEALTHCHECK .*\\\n\s*CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "HEALTHCHECK ... CMD [exec form] on the next line"
    return json.loads(match[1])


def compose_healthcheck() -> list[str]:
    test = SERVICES["gateway"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return test[1:]


def test_the_image_is_slim_non_root_and_runs_the_mounted_config() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(bases) == 2, "a build stage and a run stage"
    assert all(b.startswith("python:3.11-slim") for b in bases)
    (user,) = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user.split(":")[0] == "10001", "numeric, so runAsNonRoot can check it"
    assert re.search(r"^VOLUME \[\"/data\"\]$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["gateway"\]$', text, re.MULTILINE)
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert json.loads(cmd) == [
        "run",
        "--config",
        "/etc/telemetry-gateway/gateway.toml",
        "--log-format",
        "json",
    ]
    assert not re.search(r"^ENV .*GATEWAY_", text, re.MULTILINE), "env would beat the TOML"
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (DEPLOY.parent / path).exists(), f"COPY {path}: not in the repository"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for needed in ("pyproject.toml", "README.md", "gateway/", "simulators/"):
        assert f"!{needed}" in ignore, f"{needed} is excluded from the build context"


async def run_check(command: list[str], port: int) -> int:
    """Run a health check command (its python is ours, its port the test gateway's)."""
    assert command[:2] == ["python", "-c"]
    code = command[2]
    assert code.count("127.0.0.1:9108") == 1
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code.replace("127.0.0.1:9108", f"127.0.0.1:{port}"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(30):
        return await proc.wait()


def port_of(gateway: Gateway) -> int:
    return int(gateway.http_url.rsplit(":", 1)[1])


async def test_health_checks_pass_on_a_ready_gateway(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    async with running(Gateway(make_config(broker, tmp_path, unique))) as gateway:
        assert await run_check(dockerfile_healthcheck(), port_of(gateway)) == 0
        assert await run_check(compose_healthcheck(), port_of(gateway)) == 0


async def test_without_a_broker_the_gateway_is_alive_but_compose_holds_the_simulator(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    """/healthz (the image's check) passes, /readyz (compose's) fails: not subscribed yet."""
    mqtt = {"port": free_port(), "connect_timeout_s": 1.0}
    # A gateway that never reached its broker waits out the whole grace when stopped
    # (stop_reading waits for a reading loop that never started): keep it short here.
    config = make_config(broker, tmp_path, unique, mqtt=mqtt, shutdown_grace_s=2)
    async with running(Gateway(config), connected=False) as gateway:
        assert await run_check(dockerfile_healthcheck(), port_of(gateway)) == 0
        assert await run_check(compose_healthcheck(), port_of(gateway)) != 0


async def test_the_image_health_check_fails_when_nothing_listens() -> None:
    started = time.monotonic()
    assert await run_check(dockerfile_healthcheck(), free_port()) != 0
    assert time.monotonic() - started < 10
