"""The MQTT side: sessions that survive restarts, MQTT 5, shared subscriptions, the watchdog,
QoS 0 policies and per-reading timeouts — each against a real Mosquitto."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from gateway import Gateway
from gateway.model import Reading
from gateway.transforms import Verdict
from harness.broker import Broker
from harness.poll import eventually
from harness.scrape import get, scrape, value
from tests.support.gateway import fleet, make_config, read_dead_letters, read_lines, running, topic
from tests.support.gateway import reading_payload as payload
from tests.support.publish import publish


class Gate:
    """A processing step that holds every batch until opened: the pipeline backs up."""

    def __init__(self) -> None:
        self._open = asyncio.Event()

    async def hold(self, readings: list[Reading]) -> Verdict:
        await self._open.wait()
        return Verdict(readings)

    def set(self) -> None:
        self._open.set()


def written(gateway: Gateway) -> float:
    return gateway.metrics.sample("gateway_readings_written_total")


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
    data_dir = config.files.data_dir
    async with running(Gateway(config)) as gateway:
        await eventually(
            lambda: (
                {100 + d for d in range(10)}
                <= {row["seq"] for row in read_lines(data_dir, include_open=True)}
            ),
            message=f"the queued ten arrive (written: {written(gateway)})",
        )
        assert written(gateway) == 10, "only the ten queued while it was down"
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
        await eventually(lambda: gateway.metrics.sample("gateway_messages_received_total") >= 7)
        for _ in range(20):  # sample the window while the steps hold everything
            samples = await scrape(gateway.http_url)
            peak = max(peak, int(value(samples, "gateway_unacked_messages")))
        assert gateway.metrics.sample("gateway_messages_received_total") == 7, (
            "no more than the window"
        )
        gate.set()
        await sender
        await eventually(lambda: written(gateway) == 50)
    assert peak == 7


async def test_a_shared_subscription_splits_the_load_between_gateways_without_overlap(
    broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    template = f"{unique}/{{site}}/{{device_id}}/telemetry"
    shared = {"filter": f"$share/{unique}/{unique}/+/+/telemetry", "template": template}
    mqtt = {"subscriptions": [shared], "protocol": protocol}
    one = make_config(broker, tmp_path / "a", unique + "a", mqtt=mqtt)
    two = make_config(broker, tmp_path / "b", unique + "b", mqtt=mqtt)
    async with running(Gateway(one)) as first, running(Gateway(two)) as second:
        await publish(broker.host, broker.port, fleet(unique, devices=20, per_device=20))
        await eventually(lambda: written(first) + written(second) == 400)
        assert written(first) > 0
        assert written(second) > 0
    rows = read_lines(one.files.data_dir) + read_lines(two.files.data_dir)
    assert len({(r["device_id"], r["seq"]) for r in rows}) == len(rows) == 400


async def test_the_stall_watchdog_makes_readyz_fail_until_messages_flow(
    broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    config = make_config(
        broker, tmp_path, unique, mqtt={"stall_timeout_s": 0.5, "protocol": protocol}
    )
    async with running(Gateway(config)) as gateway:
        await eventually(
            lambda: gateway.metrics.sample("gateway_mqtt_stalls_total") == 1, timeout_s=15
        )
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
    async def slow_for_one_device(readings: list[Reading]) -> Verdict:
        if any(reading.device_id == "dev-slow" for reading in readings):
            await asyncio.Event().wait()  # never returns: only the deadline ends it
        return Verdict(readings)

    config = make_config(broker, tmp_path, unique, pipeline={"processing_timeout_s": 0.2})
    gateway = Gateway(config, transforms=[slow_for_one_device])
    slow = [(topic(unique, "dev-slow"), payload("dev-slow", 1))]
    fast = [(topic(unique, "dev-fast"), payload("dev-fast", n)) for n in range(5)]
    async with running(gateway):
        # One batch shares one deadline: the slow reading goes first, on its own.
        await publish(broker.host, broker.port, slow)
        await eventually(lambda: gateway.metrics.sample("gateway_messages_received_total") == 1)
        await publish(broker.host, broker.port, fast)
        await eventually(
            lambda: (
                gateway.metrics.sample("gateway_readings_in_flight") == 0 and written(gateway) == 5
            )
        )
    dead = read_dead_letters(config.files.data_dir)
    assert [(d["reason"], d["topic"]) for d in dead] == [("timeout", topic(unique, "dev-slow"))]
    assert gateway.metrics.sample("gateway_readings_rejected_total", reason="timeout") == 1


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
        await eventually(lambda: m.sample("gateway_messages_received_total") == 200)
        assert len(gateway._shards[0]) <= 10, "the channel never holds more than its capacity"
        gate.set()
        await eventually(lambda: m.sample("gateway_readings_in_flight") == 0)
    dropped = m.sample("gateway_readings_dropped_total", reason="queue_full")
    assert dropped > 0
    assert written(gateway) + dropped == 200


async def test_a_reconnect_that_finds_no_session_is_counted_and_warned(
    own_broker: Broker,
    tmp_path: Path,
    unique: str,
    protocol: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(own_broker, tmp_path, unique, mqtt={"protocol": protocol})
    async with running(Gateway(config)) as gateway:
        own_broker.stop()
        for db in own_broker.workdir.glob("*.db"):
            db.unlink()  # the broker comes back without our session
        own_broker.start()
        await eventually(lambda: gateway.metrics.sample("gateway_mqtt_reconnects_total") > 0)
        await eventually(lambda: gateway.checks()["broker_connected"])
        assert gateway.metrics.sample("gateway_mqtt_sessions_lost_total") == 1
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
    await eventually(lambda: gateway.metrics.sample("gateway_mqtt_reconnects_total") >= 1)
    gateway.stop()
    async with asyncio.timeout(10):  # well under the 60 s grace
        await task
    assert not gateway.checks()["broker_connected"]


async def test_every_message_is_acked_once_stored_and_nothing_is_left_unacked(
    broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    """Acks leave once stored (in bursts on MQTT 5): when all is written, none is outstanding,
    and the broker has nothing left to redeliver to a new session."""
    config = make_config(broker, tmp_path, unique, mqtt={"protocol": protocol})
    async with running(Gateway(config)) as gateway:
        await publish(broker.host, broker.port, fleet(unique, devices=3, per_device=100), qos=1)
        await eventually(lambda: written(gateway) == 300)
        await eventually(lambda: gateway.metrics.sample("gateway_unacked_messages") == 0)
        assert gateway.metrics.sample("gateway_mqtt_protocol", version=protocol) == 1
    data_dir = config.files.data_dir
    async with running(Gateway(config)) as gateway:
        # Anything unacked would come back first, before a marker published now.
        marker = [(topic(unique, "dev-last"), payload("dev-last", 1))]
        await publish(broker.host, broker.port, marker)
        await eventually(
            lambda: any(r["device_id"] == "dev-last" for r in read_lines(data_dir, True))
        )
        # The line is on disk a moment before the counter moves.
        await eventually(lambda: written(gateway) >= 1)
        assert written(gateway) == 1
        assert gateway.metrics.sample("gateway_mqtt_redeliveries_total") == 0


@pytest.mark.parametrize("qos", [0, 1])
async def test_a_backlog_larger_than_the_intake_buffer_drains_after_a_restart(
    tmp_path: Path, unique: str, qos: int, protocol: str
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
                "protocol": protocol,
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


async def test_a_message_counted_as_received_is_always_in_flight_or_settled(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    """While the pipeline is backed up (bursts wait in the intake), every message counted as
    received is already counted in flight: received = written + rejected + dropped + in flight
    at every scrape, so "all received and none in flight" really means all settled."""
    gate = Gate()
    config = make_config(
        broker,
        tmp_path,
        unique,
        pipeline={"channel_capacity": 20, "processing_timeout_s": 60},
        mqtt={"max_buffered_messages": 50},
    )
    gateway = Gateway(config, transforms=[gate.hold])
    m = gateway.metrics
    messages = list(fleet(unique, devices=10, per_device=10))
    async with running(gateway):
        # One at a time, so that they arrive as many small bursts: held by the gate, the
        # channels fill, and later bursts wait in the intake (unacked, not yet handed on).
        for message in messages:
            await publish(broker.host, broker.port, [message])
        await eventually(
            lambda: (
                m.sample("gateway_unacked_messages") > m.sample("gateway_messages_received_total")
            ),
            message="messages waiting in the intake",
        )
        # One reading per message here: the two counters must agree.
        assert m.sample("gateway_messages_received_total") == m.sample(
            "gateway_readings_received_total"
        )
        gate.set()
        await eventually(lambda: written(gateway) == 100)
