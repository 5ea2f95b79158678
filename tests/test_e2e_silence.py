"""Subscriptions the broker starves are noticed: a filter its ACL denies (granted, then silent),
a frozen broker, and a SUBACK that refuses a filter — each named by /readyz, on both protocols."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import Gateway
from harness.broker import Broker, acl_broker
from harness.poll import eventually
from harness.scrape import get, scrape, value
from tests.support.gateway import make_config, reading_payload, running, topic
from tests.support.publish import publish

DYNAMIC_SECURITY = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
STALL_S = 2.0
# The watchdog judges about once a second.
CHECK_S = 1.0


def subscriptions(unique: str) -> list[dict[str, str]]:
    return [
        {"template": f"{unique}/{{site}}/{{device_id}}/telemetry", "name": "sensors"},
        {
            "filter": f"secret-{unique}/#",
            "template": f"secret-{unique}/{{site}}/{{device_id}}/telemetry",
            "name": "secret",
        },
    ]


async def readyz(gateway: Gateway) -> tuple[int, dict[str, Any]]:
    status, body = await get(f"{gateway.http_url}/readyz")
    return status, json.loads(body)


async def keep_publishing(broker: Broker, unique: str, stop: asyncio.Event) -> int:
    """A device on the allowed filter, once every 0.2 s: the busy subscription stays busy."""
    seq = 0
    while not stop.is_set():
        await publish(
            broker.host, broker.port, [(topic(unique, "dev-1"), reading_payload("dev-1", seq))]
        )
        seq += 1
        try:
            async with asyncio.timeout(0.2):
                await stop.wait()
        except TimeoutError:
            pass
    return seq


@pytest.fixture
def denying_broker(tmp_path: Path, unique: str) -> Iterator[Broker]:
    broker = acl_broker(tmp_path / "mosquitto", f"{unique}/#").start()
    yield broker
    broker.stop()


async def test_a_filter_the_acl_denies_is_named_by_readyz_within_the_stall_timeout(
    denying_broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    """The broker grants both SUBSCRIBEs; one filter is then starved while the other is busy."""
    config = make_config(
        denying_broker,
        tmp_path,
        unique,
        mqtt={
            "protocol": protocol,
            "stall_timeout_s": STALL_S,
            "subscriptions": subscriptions(unique),
        },
    )
    gateway = Gateway(config)
    stop = asyncio.Event()
    async with running(gateway):
        subscribed_at = time.monotonic()
        publisher = asyncio.create_task(keep_publishing(denying_broker, unique, stop))
        try:

            async def named() -> bool:
                status, body = await readyz(gateway)
                silent = body.get("silent_subscriptions", [])
                return status == 503 and [s["subscription"] for s in silent] == ["secret"]

            await eventually(named, timeout_s=STALL_S + 10, interval_s=0.1, message="secret named")
            took = time.monotonic() - subscribed_at
            _, body = await readyz(gateway)
            samples = await scrape(gateway.http_url)
            written = gateway.metrics.sample("gateway_readings_written_total")
        finally:
            stop.set()
            await publisher
    assert took <= STALL_S + CHECK_S + 1.0, f"reported {took:.1f}s after subscribing"
    assert body["checks"] == {"broker_connected": True, "not_stalled": False, "sink_writable": True}
    [silent] = body["silent_subscriptions"]
    assert silent["filter"] == f"secret-{unique}/#", "the configured filter, for the operator"
    assert silent["silent_s"] >= STALL_S, "rounded to 0.1 s, past the stall timeout"
    assert value(samples, "gateway_subscription_silence_seconds", subscription="secret") > STALL_S
    assert value(samples, "gateway_subscription_silence_seconds", subscription="sensors") < STALL_S
    assert value(samples, "gateway_mqtt_stalled") == 1
    assert value(samples, "gateway_mqtt_stalls_total") == 1
    assert written > 0, "the allowed filter's readings are stored meanwhile"


async def test_a_frozen_broker_makes_readyz_fail_within_the_stall_timeout_and_recovers(
    own_broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    """SIGSTOP: the connection stays open and says nothing; silence tells before keepalive."""
    config = make_config(
        own_broker,
        tmp_path,
        unique,
        mqtt={"protocol": protocol, "stall_timeout_s": STALL_S, "keepalive_s": 30},
    )
    gateway = Gateway(config)
    assert own_broker.proc is not None
    async with running(gateway):
        await publish(
            own_broker.host, own_broker.port, [(topic(unique, "d"), reading_payload("d", 0))]
        )
        await eventually(lambda: gateway.metrics.sample("gateway_readings_written_total") == 1)
        os.kill(own_broker.proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:

            async def silent() -> bool:
                status, body = await readyz(gateway)
                return status == 503 and bool(body.get("silent_subscriptions"))

            await eventually(silent, timeout_s=STALL_S + 10, interval_s=0.1, message="silent")
            took = time.monotonic() - frozen_at
            assert gateway.checks()["broker_connected"], "keepalive has not dropped it yet"
        finally:
            os.kill(own_broker.proc.pid, signal.SIGCONT)
        await publish(
            own_broker.host, own_broker.port, [(topic(unique, "d"), reading_payload("d", 1))]
        )
        await eventually(lambda: gateway.ready, message="ready again once messages flow")
    assert took <= STALL_S + CHECK_S + 1.0, f"reported {took:.1f}s after the freeze"


@pytest.mark.skipif(not DYNAMIC_SECURITY.exists(), reason="Mosquitto's dynamic security plugin")
async def test_a_subscription_the_broker_refuses_is_named_with_its_reason_and_retried(
    tmp_path: Path, unique: str, protocol: str
) -> None:
    """Mosquitto's dynamic security plugin refuses a SUBSCRIBE in the SUBACK (0x87 on MQTT 5,
    0x80 on 3.1.1): not ready, the filter and the reason in /readyz, counted, retried."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    dynsec = workdir / "dynamic-security.json"
    dynsec.write_text(
        json.dumps(
            {
                "defaultACLAccess": {
                    "publishClientSend": True,
                    "publishClientReceive": True,
                    "subscribe": False,
                    "unsubscribe": True,
                },
                "clients": [],
                "groups": [{"groupname": "anonymous", "roles": [{"rolename": "sensors"}]}],
                "roles": [
                    {
                        "rolename": "sensors",
                        "acls": [
                            {"acltype": "subscribePattern", "topic": f"{unique}/#", "allow": True}
                        ],
                    }
                ],
                "anonymousGroup": "anonymous",
            }
        ),
        encoding="utf-8",
    )
    broker = Broker(
        workdir,
        extra_config=f"plugin {DYNAMIC_SECURITY}\nplugin_opt_config_file {dynsec}\n",
    ).start()
    try:
        config = make_config(
            broker,
            tmp_path,
            unique,
            mqtt={"protocol": protocol, "subscriptions": subscriptions(unique)},
        )
        gateway = Gateway(config)
        async with running(gateway, connected=False):

            def refused() -> float:
                return gateway.metrics.sample(
                    "gateway_mqtt_connection_failures_total", reason="subscribe_refused"
                )

            await eventually(lambda: refused() >= 2, message="refused, and retried")
            status, body = await readyz(gateway)
    finally:
        broker.stop()
    assert status == 503
    assert body["checks"]["broker_connected"] is False
    error = str(body["broker_error"])
    assert f"'secret-{unique}/#'" in error
    assert ("not_authorized (0x87)" if protocol == "5" else "(0x80)") in error
    assert f"'{unique}/+/+/telemetry'" not in error, "only the refused filter is named"
