"""A real MQTT client (paho, its own thread) that keeps every message it receives, in order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from harness.broker import Broker
from harness.poll import eventually_sync


class Subscriber:
    """Subscribed at QoS 1 once constructed (the SUBACK is in)."""

    def __init__(self, broker: Broker, client_id: str, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self._client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        # list.append is atomic under the GIL: no lock needed between paho's thread and ours.
        self._client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self._client.connect(broker.host, broker.port, keepalive=30)
        self._client.loop_start()
        try:
            eventually_sync(subscribed.is_set, timeout_s=10, message="SUBACK")
        except BaseException:
            self.close()  # no paho thread left connected when the SUBACK never came
            raise

    def by_topic(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for topic, payload in self.messages:
            out.setdefault(topic, []).append(payload)
        return out

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextmanager
def subscribed(broker: Broker, client_id: str, topic_filter: str) -> Iterator[Subscriber]:
    sub = Subscriber(broker, client_id, topic_filter)
    try:
        yield sub
    finally:
        sub.close()
