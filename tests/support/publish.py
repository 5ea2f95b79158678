"""Publishing for tests: `publish` through gateway-sim's own publisher, until the broker has
every message; `Stream`, a paced QoS 1 stream that survives a broker restart (paho's own
thread resends what was not acknowledged)."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from harness.broker import Broker
from harness.poll import eventually
from simulators.hub import Hub
from simulators.spec import BrokerSpec

_ids = itertools.count()
MAX_OUTSTANDING = 10_000
# Hand the queued packets to the socket this often (the simulators' blast does the same).
FLUSH_EVERY = 500


async def publish(
    host: str,
    port: int,
    messages: Iterable[tuple[str, bytes]],
    qos: int = 1,
    timeout_s: float = 60,
    window: int = MAX_OUTSTANDING,
) -> int:
    """Publish all messages with gateway-sim's own publisher (simulators/hub.py) and wait until
    the broker has each (QoS 1: PUBACKed; QoS 0: written to the socket); returns the count.

    At most `window` QoS 1 messages are outstanding: keep it small for large payloads, which
    paho holds in memory until they are acknowledged."""
    hub = Hub(BrokerSpec(host=host, port=port, inflight=500), qos)
    try:
        (conn,) = await hub.open([f"test-pub-{os.getpid()}-{next(_ids)}"])
        count = 0
        async with asyncio.timeout(timeout_s):
            for topic, payload in messages:
                if qos:
                    await conn.wait_acks_below(window)
                if not conn.publish(topic, payload, qos):
                    raise ConnectionError(f"the broker at {host}:{port} went away")
                count += 1
                if count % FLUSH_EVERY == 0:
                    hub.flush()
                    await asyncio.sleep(0)  # let PUBACKs in
            await hub.written()
            if qos and not await hub.drain(timeout_s):
                raise TimeoutError(f"{hub.unacked} messages not acknowledged by the broker")
        return count
    finally:
        await hub.close()


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
        # A count, not a set of message ids: they wrap at 65,535. paho calls on_publish once per
        # message, when its PUBACK removes it from the messages it would send again.
        self._acked = 0
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
            return self._acked

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

    def _on_publish(self, _c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            self._acked += 1

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
