"""The MQTT side: sessions that survive restarts, MQTT 5, shared subscriptions, the watchdog,
QoS 0 policies and per-reading timeouts — each against a real Mosquitto."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from gateway import Gateway
from gateway.model import Reading
from gateway.sources.paho_client import FAST_PUBLISH, BufferedSocket, NoTopicCallbacks
from tests.support.broker import Broker
from tests.support.gateway import fleet, make_config, read_dead_letters, read_lines, running, topic
from tests.support.gateway import reading_payload as payload
from tests.support.poll import eventually
from tests.support.publish import publish
from tests.support.scrape import get, scrape, value


class Gate:
    """A processing step that holds every reading until opened: the pipeline backs up."""

    def __init__(self) -> None:
        self._open = asyncio.Event()

    async def hold(self, reading: Reading) -> Reading:
        await self._open.wait()
        return reading

    def set(self) -> None:
        self._open.set()


def written(gateway: Gateway) -> float:
    return gateway.metrics.readings_written._value.get()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_readings_published_while_the_gateway_is_down_arrive_when_it_is_back(
    broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    prefix = f"{unique}p{protocol.replace('.', '')}"
    config = make_config(broker, tmp_path, prefix, mqtt={"protocol": protocol})
    async with running(Gateway(config)) as gateway:
        await publish(broker.host, broker.port, fleet(prefix, devices=10, per_device=5))
        await eventually(lambda: written(gateway) == 50)
    # The gateway is gone; its persistent session keeps collecting QoS 1 messages.
    later = [(topic(prefix, f"dev-{d:04d}"), payload(f"dev-{d:04d}", 100 + d)) for d in range(10)]
    await publish(broker.host, broker.port, later)
    async with running(Gateway(config)) as gateway:
        await eventually(lambda: written(gateway) == 10, message="the queued ten arrive")
    seqs = Counter(row["seq"] for row in read_lines(config.files.data_dir))
    assert all(seqs[100 + d] == 1 for d in range(10))
    assert sum(seqs.values()) == 60


async def test_mqtt5_receive_maximum_bounds_the_unacked_window(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    """With MQTT 5 the broker may send at most receive_maximum unacked messages."""
    gate = Gate()
    peak = 0

    config = make_config(
        broker,
        tmp_path,
        unique,
        mqtt={"protocol": "5", "receive_maximum": 7},
        pipeline={"processing_timeout_s": 60},
    )
    gateway = Gateway(config, transforms=[gate.hold])
    async with running(gateway):
        sender = asyncio.create_task(
            publish(broker.host, broker.port, fleet(unique, devices=5, per_device=10))
        )
        await eventually(lambda: gateway.metrics.messages_received._value.get() >= 7)
        for _ in range(20):  # sample the window while the steps hold everything
            samples = await scrape(gateway.http_url)
            peak = max(peak, int(value(samples, "gateway_unacked_messages")))
        assert gateway.metrics.messages_received._value.get() == 7, "no more than the window"
        gate.set()
        await sender
        await eventually(lambda: written(gateway) == 50)
    assert peak == 7


async def test_a_shared_subscription_splits_the_load_between_gateways_without_overlap(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    template = f"{unique}/{{site}}/{{device_id}}/telemetry"
    shared = {"filter": f"$share/{unique}/{unique}/+/+/telemetry", "template": template}
    one = make_config(broker, tmp_path / "a", unique + "a", mqtt={"subscriptions": [shared]})
    two = make_config(broker, tmp_path / "b", unique + "b", mqtt={"subscriptions": [shared]})
    async with running(Gateway(one)) as first, running(Gateway(two)) as second:
        await publish(broker.host, broker.port, fleet(unique, devices=20, per_device=20))
        await eventually(lambda: written(first) + written(second) == 400)
        assert written(first) > 0
        assert written(second) > 0
    rows = read_lines(one.files.data_dir) + read_lines(two.files.data_dir)
    assert len({(r["device_id"], r["seq"]) for r in rows}) == len(rows) == 400


async def test_the_stall_watchdog_makes_readyz_fail_until_messages_flow(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(broker, tmp_path, unique, mqtt={"stall_timeout_s": 0.5})
    async with running(Gateway(config)) as gateway:
        await eventually(lambda: gateway.metrics.mqtt_stalls._value.get() == 1, timeout_s=15)
        status, body = await get(f"{gateway.http_url}/readyz")
        assert status == 503
        assert '"not_stalled": false' in body
        await publish(broker.host, broker.port, [(topic(unique, "dev-1"), payload("dev-1", 1))])
        await eventually(lambda: gateway.ready)
        status, _ = await get(f"{gateway.http_url}/readyz")
        assert status == 200
        samples = await scrape(gateway.http_url)
    assert value(samples, "gateway_mqtt_stalls_total") == 1
    assert value(samples, "gateway_mqtt_stalled") == 0


async def test_a_reading_past_its_deadline_is_dead_lettered_as_timeout(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    async def slow_for_one_device(reading: Reading) -> Reading:
        if reading.device_id == "dev-slow":
            await asyncio.Event().wait()  # never returns: only the deadline ends it
        return reading

    config = make_config(broker, tmp_path, unique, pipeline={"processing_timeout_s": 0.2})
    gateway = Gateway(config, transforms=[slow_for_one_device])
    messages = [(topic(unique, "dev-slow"), payload("dev-slow", 1))]
    messages += [(topic(unique, "dev-fast"), payload("dev-fast", n)) for n in range(5)]
    async with running(gateway):
        await publish(broker.host, broker.port, messages)
        await eventually(
            lambda: gateway.metrics.in_flight._value.get() == 0 and written(gateway) == 5
        )
    dead = read_dead_letters(config.files.data_dir)
    assert [(d["reason"], d["topic"]) for d in dead] == [("timeout", topic(unique, "dev-slow"))]
    assert gateway.metrics.rejected["timeout"]._value.get() == 1


async def test_qos0_drop_oldest_keeps_memory_bounded_and_counts_every_drop(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    gate = Gate()

    config = make_config(
        broker,
        tmp_path,
        unique,
        mqtt={
            "subscriptions": [{"template": f"{unique}/{{site}}/{{device_id}}/telemetry", "qos": 0}]
        },
        pipeline={
            "workers": 1,
            "channel_capacity": 10,
            "qos0_policy": "drop_oldest",
            "processing_timeout_s": 60,
        },
    )
    gateway = Gateway(config, transforms=[gate.hold])
    m = gateway.metrics
    async with running(gateway):
        await publish(broker.host, broker.port, fleet(unique, devices=1, per_device=200), qos=0)
        await eventually(lambda: m.messages_received._value.get() == 200)
        assert len(gateway._shards[0]) <= 10, "the channel never holds more than its capacity"
        gate.set()
        await eventually(lambda: m.in_flight._value.get() == 0)
    dropped = m.dropped["queue_full"]._value.get()
    assert dropped > 0
    assert written(gateway) + dropped == 200


async def test_a_reconnect_that_finds_no_session_is_counted_and_warned(
    own_broker: Broker, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(own_broker, tmp_path, unique)
    async with running(Gateway(config)) as gateway:
        own_broker.stop()
        for db in own_broker.workdir.glob("*.db"):
            db.unlink()  # the broker comes back without our session
        own_broker.start()
        await eventually(lambda: gateway.metrics.mqtt_reconnects._value.get() > 0)
        await eventually(lambda: gateway.checks()["broker_connected"])
        assert gateway.metrics.mqtt_sessions_lost._value.get() == 1
    assert "no session" in caplog.text


async def test_a_gateway_that_never_reached_its_broker_stops_at_once(
    tmp_path: Path, unique: str
) -> None:
    """No broker: stopping must not wait out the drain grace (there is nothing to drain)."""
    nobody = Broker(tmp_path / "none")  # never started: its port refuses connections
    config = make_config(nobody, tmp_path, unique, shutdown_grace_s=60)
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    await eventually(gateway.started.is_set)
    await eventually(lambda: gateway.metrics.mqtt_reconnects._value.get() >= 1)
    gateway.stop()
    async with asyncio.timeout(10):  # well under the 60 s grace
        await task
    assert not gateway.checks()["broker_connected"]


async def test_the_receive_shortcuts_are_in_place_on_this_paho(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    """The lean PUBLISH handler, the buffered socket and the empty topic table rely on paho
    internals: if an upgrade moves them, this fails instead of the gateway silently getting
    slower (each falls back to paho's own path)."""
    async with running(Gateway(make_config(broker, tmp_path, unique))) as gateway:
        conn = gateway._source._conn  # type: ignore[union-attr]
        assert conn is not None
        assert FAST_PUBLISH
        assert isinstance(conn.client.socket(), BufferedSocket)
        assert isinstance(conn.client._on_message_filtered, NoTopicCallbacks)
        slow_path: list[str] = []
        conn.client.on_message = lambda _c, _u, message: slow_path.append(message.topic)
        await publish(broker.host, broker.port, fleet(unique, devices=3, per_device=100), qos=1)
        await eventually(lambda: written(gateway) == 300)
        assert slow_path == []
        # Every PUBACK was sent: none is left in the window or in the write buffer.
        await eventually(lambda: conn.client.socket().unsent == 0 and not conn.window)


@pytest.mark.parametrize("qos", [0, 1])
async def test_a_backlog_larger_than_the_intake_buffer_drains_after_a_restart(
    tmp_path: Path, unique: str, qos: int
) -> None:
    """The broker sends a resumed session's backlog before the SUBACK: the gateway must take it
    in while it waits for the SUBACK, or the SUBACK is never read (a stall)."""
    broker = Broker(tmp_path / "mosquitto", extra_config="queue_qos0_messages true\n").start()
    try:
        template = f"{unique}/{{site}}/{{device_id}}/telemetry"
        config = make_config(
            broker,
            tmp_path,
            unique,
            mqtt={
                "subscriptions": [{"template": template, "qos": qos}],
                "max_buffered_messages": 50,
            },
        )
        async with running(Gateway(config)):
            pass  # the session now exists
        await publish(broker.host, broker.port, fleet(unique, devices=30, per_device=100), qos=qos)
        async with running(Gateway(config), connected=False) as gateway:
            await eventually(lambda: written(gateway) == 3000, message="the backlog drains")
            await eventually(lambda: gateway.checks()["broker_connected"])
    finally:
        broker.stop()
