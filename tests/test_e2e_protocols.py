"""Which MQTT version is spoken, and sessions that end: "auto" falls back to 3.1.1 on a broker
that does not speak 5 (amqtt); two gateways with one client id back off and say why."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import Gateway
from gateway.local_broker import amqtt_config, amqtt_path
from gateway.ports import free_port, wait_for_port
from gateway.sources.wire import TAKEOVER_WINDOW_S
from harness.broker import Broker
from harness.poll import eventually
from tests.support.gateway import fleet, make_config, read_lines, running


class Amqtt:
    """The pure-Python amqtt broker as a process: it speaks MQTT 3.1.1 only."""

    def __init__(self, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "amqtt.yaml"
        conf.write_text(amqtt_config(self.host, self.port), encoding="utf-8")
        self.proc = subprocess.Popen(
            [amqtt_path(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, timeout_s=20)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # amqtt stops cleanly on SIGINT only
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def amqtt_broker(tmp_path: Path) -> Iterator[Amqtt]:
    broker = Amqtt(tmp_path / "amqtt")
    yield broker
    broker.stop()


async def test_auto_falls_back_to_3_1_1_on_amqtt_and_stores_readings(
    amqtt_broker: Amqtt, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(amqtt_broker, tmp_path, unique)  # type: ignore[arg-type]
    assert config.mqtt.protocol == "auto", "the default"
    async with running(Gateway(config)) as gateway:
        assert gateway.metrics.sample("gateway_mqtt_protocol", version="3.1.1") == 1
        assert gateway.metrics.sample("gateway_mqtt_protocol", version="5") == 0
        # amqtt drops what it acked but had not forwarded when a publisher leaves (seen with
        # amqtt 0.11): the publisher stays connected until the gateway has everything.
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{unique}")
        publisher.connect(amqtt_broker.host, amqtt_broker.port)
        publisher.loop_start()
        try:
            infos = [publisher.publish(t, p, qos=1) for t, p in fleet(unique, 5, 10)]
            for info in infos:
                await asyncio.to_thread(info.wait_for_publish, 30)
            await eventually(
                lambda: gateway.metrics.sample("gateway_readings_written_total") == 50,
                timeout_s=30,
            )
        finally:
            publisher.disconnect()
            publisher.loop_stop()
    assert len(read_lines(config.files.data_dir)) == 50
    assert "does not speak MQTT 5" in caplog.text


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_two_gateways_with_one_client_id_back_off_and_say_why(
    broker: Broker,
    tmp_path: Path,
    unique: str,
    protocol: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each connect takes the session from the other. Without backoff they reconnect in a tight
    loop (~40,000 log lines in 25 s once); here each waits longer every time, the cause is
    named and counted, and logged once rather than at every reconnect."""
    caplog.set_level(logging.WARNING)
    mqtt_section = {"protocol": protocol, "client_id": f"gw-{unique}", "reconnect_max_s": 2.0}
    one = make_config(broker, tmp_path / "a", unique, mqtt=mqtt_section)
    two = make_config(broker, tmp_path / "b", unique, mqtt=mqtt_section)
    first, second = Gateway(one), Gateway(two)

    def takeovers() -> float:
        return sum(
            g.metrics.sample("gateway_mqtt_connection_failures_total", reason="session_taken_over")
            for g in (first, second)
        )

    async with running(first), running(second, connected=False):
        await eventually(lambda: takeovers() >= 4, timeout_s=30, message="a few takeovers")
        started = asyncio.get_running_loop().time()
        before = sum(g.metrics.sample("gateway_mqtt_reconnects_total") for g in (first, second))
        await eventually(lambda: takeovers() >= 8, timeout_s=60, message="more takeovers")
        elapsed = asyncio.get_running_loop().time() - started
        after = sum(g.metrics.sample("gateway_mqtt_reconnects_total") for g in (first, second))
    # Backed off: a handful of reconnects per second at most, not a tight loop.
    assert (after - before) / elapsed < 6, f"{after - before} reconnects in {elapsed:.1f}s"
    lines = [r.getMessage() for r in caplog.records if "client id" in r.getMessage()]
    assert lines, "the takeover is named"
    assert any(f"gw-{unique}" in line for line in lines)
    assert len(lines) <= 4, "logged once per gateway (and per minute), not at every reconnect"


# -- each connection failure names its cause, says that it retries, and is counted ------------


def failures(gateway: Gateway, reason: str) -> float:
    return gateway.metrics.sample("gateway_mqtt_connection_failures_total", reason=reason)


def broker_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("broker: ")]


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto that lets in only user `gateway` with password `right`."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    passwords = workdir / "passwords"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "gateway", "right"], check=True, timeout=30
    )
    broker = Broker(workdir, anonymous=False, extra_config=f"password_file {passwords}\n")
    yield broker.start()
    broker.stop()


async def test_a_wrong_password_is_named_and_says_it_retries_forever(
    password_broker: Broker,
    tmp_path: Path,
    unique: str,
    protocol: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Mosquitto answers a wrong password with "not authorized" (0x87; 3.1.1 code 5)."""
    caplog.set_level(logging.WARNING)
    mqtt_section = {"protocol": protocol, "username": "gateway", "password": "wrong"}
    config = make_config(password_broker, tmp_path, unique, mqtt=mqtt_section)
    async with running(Gateway(config), connected=False) as gateway:
        await eventually(lambda: failures(gateway, "refused_not_authorized") >= 3)
        assert not gateway.checks()["broker_connected"]
    (line, *more) = broker_warnings(caplog)
    assert "wrong user name or password" in line
    assert "it retries until it connects, at most 1s apart" in line
    assert not more, "logged once (per minute), not at every attempt"


async def test_no_connack_within_the_deadline_is_named(
    tmp_path: Path, unique: str, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Something accepts the TCP connection and never answers MQTT."""
    caplog.set_level(logging.WARNING)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        mqtt_section = {"protocol": protocol, "connect_timeout_s": 0.5}
        nobody = Broker(tmp_path / "none", port=port)  # not started: only its address is used
        config = make_config(nobody, tmp_path, unique, mqtt=mqtt_section)
        async with running(Gateway(config), connected=False) as gateway:
            await eventually(lambda: failures(gateway, "connack_timeout") >= 2)
    (line,) = broker_warnings(caplog)
    assert f"127.0.0.1:{port}: no CONNACK within 0.5s" in line
    assert "never answered" in line


async def test_a_broker_shutting_down_is_named_and_then_found_down(
    own_broker: Broker, tmp_path: Path, unique: str, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto closes without a DISCONNECT reason on SIGTERM (on MQTT 5 too): the log says
    what that can be, and the next attempt, refused, says the broker is down."""
    caplog.set_level(logging.WARNING)
    config = make_config(own_broker, tmp_path, unique, mqtt={"protocol": protocol})
    async with running(Gateway(config)) as gateway:
        # Past the window in which a close most likely means a takeover.
        await asyncio.sleep(TAKEOVER_WINDOW_S + 0.5)
        assert own_broker.proc is not None
        own_broker.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: failures(gateway, "network_error") >= 1)
        assert failures(gateway, "connection_lost") == 1
        own_broker.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "without a reason: it is shutting down or restarting" in text
    assert "connection refused (is the broker up?)" in text
