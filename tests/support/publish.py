"""A real MQTT publisher (paho in its own thread) for tests: every QoS 1 message is PUBACKed."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from harness.broker import Broker
from harness.poll import eventually

_ids = itertools.count()
MAX_OUTSTANDING = 10_000


def publish_sync(
    host: str,
    port: int,
    messages: Iterable[tuple[str, bytes]],
    qos: int = 1,
    timeout_s: float = 60,
    window: int = MAX_OUTSTANDING,
) -> int:
    """Publish all messages and wait until the broker has acknowledged each; returns the count.

    At most `window` are outstanding (sent, not acked; at QoS 0: not yet written): keep it small
    for large payloads, which paho holds in memory until then."""
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
            if len(pending) >= window:
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


class Stream:
    """Publishes QoS 1 messages from a thread at a steady pace until all are PUBACKed.

    paho keeps each message until the broker acknowledges it and sends it again after it
    reconnects (automatically, in its loop thread), so a stream survives a broker restart;
    a message the broker stored just before stopping may then reach it twice.
    """

    def __init__(
        self,
        broker: Broker,
        messages: list[tuple[str, bytes]],
        per_round: int = 100,
        pause_s: float = 0.05,
    ) -> None:
        self.messages = messages
        self._per_round = per_round
        self._pause_s = pause_s
        self._acked: set[int] = set()
        self._lock = threading.Lock()
        self.published = threading.Event()
        self.error: BaseException | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"stream-{os.getpid()}-{next(_ids)}",
            protocol=mqtt.MQTTv311,
        )
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)  # unbounded: nothing is refused while the broker is away
        # Typed int, but paho only sleeps on them: sub-second delays keep the outage short.
        client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        client.on_publish = self._on_publish
        self._client = client
        self._broker = broker
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def start(self) -> Stream:
        self._client.connect(self._broker.host, self._broker.port, keepalive=30)
        self._client.loop_start()
        self._thread.start()
        return self

    @property
    def acked(self) -> int:
        with self._lock:
            return len(self._acked)

    @property
    def done(self) -> bool:
        return self.published.is_set() and self.acked == len(self.messages)

    async def wait_all_acked(self, timeout_s: float = 60) -> None:
        await eventually(
            lambda: self.done or self.error is not None,
            timeout_s=timeout_s,
            interval_s=0.05,
            message=f"all {len(self.messages)} PUBACKed by the broker",
        )
        assert self.error is None, f"publisher failed: {self.error!r}"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._thread.join(timeout=10)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            self._acked.add(mid)

    def _run(self) -> None:
        try:
            for start in range(0, len(self.messages), self._per_round):
                for topic_, payload in self.messages[start : start + self._per_round]:
                    self._client.publish(topic_, payload, qos=1)
                # Pacing, not synchronisation: keeps the stream flowing while a fault is injected.
                time.sleep(self._pause_s)
            self.published.set()
        except BaseException as exc:  # surfaced by wait_all_acked
            self.error = exc
