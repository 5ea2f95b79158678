"""A real MQTT publisher (paho in its own thread) for tests: every QoS 1 message is PUBACKed."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

_ids = itertools.count()
MAX_OUTSTANDING = 10_000


def publish_sync(
    host: str, port: int, messages: Iterable[tuple[str, bytes]], qos: int = 1, timeout_s: float = 60
) -> int:
    """Publish all messages and wait until the broker has acknowledged each; returns the count."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"test-pub-{next(_ids)}", protocol=mqtt.MQTTv311
    )
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    pending: deque[mqtt.MQTTMessageInfo] = deque()
    count = 0
    try:
        for topic, payload in messages:
            # Packet ids wrap at 65535: keep far fewer than that outstanding.
            if len(pending) >= MAX_OUTSTANDING:
                _settle(pending.popleft(), timeout_s)
            pending.append(client.publish(topic, payload, qos=qos))
            count += 1
        while pending:
            _settle(pending.popleft(), timeout_s)
        return count
    finally:
        client.disconnect()
        client.loop_stop()


def _settle(info: mqtt.MQTTMessageInfo, timeout_s: float) -> None:
    info.wait_for_publish(timeout=timeout_s)
    if not info.is_published():
        raise TimeoutError(f"message {info.mid} not acknowledged by the broker")


async def publish(host: str, port: int, messages: Iterable[tuple[str, bytes]], qos: int = 1) -> int:
    return await asyncio.to_thread(publish_sync, host, port, list(messages), qos)
