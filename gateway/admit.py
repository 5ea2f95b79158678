"""Admission: decode a burst, count it, and route it: readings to their device's worker,
rejections to the dead-letter channel."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

from gateway.channel import Channel
from gateway.config import GatewayConfig, SubscriptionConfig
from gateway.decode import SubscriptionDecoders
from gateway.errors import DecodeError
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Inbound, Reading, Rejection

log = logging.getLogger(__name__)


class Admission:
    """Turns bursts from the source into envelopes on the pipeline's channels.

    Per burst: each message is decoded by its subscription's decoder; its readings go to the
    worker of their device (one worker per device keeps each device's readings in order), and a
    message that cannot be decoded becomes one Rejection. Every envelope holds a part of the
    burst's ack. A decoder that raises anything but DecodeError is a bug: the message is still
    dead-lettered (`internal_error`) and the gateway goes on.
    """

    def __init__(
        self,
        *,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        shards: list[Channel[Reading]],
        rejects: Channel[Rejection],
        devices: set[str],
        max_devices: int,
    ) -> None:
        self._metrics = metrics
        self._shards = shards
        self._rejects = rejects
        self._devices = devices
        self._max_devices = max_devices
        self._warned: set[str] = set()
        self._left_out_before = 0  # values left out by decoders a reload replaced
        self.reconfigure(config)
        metrics.count_left_out(self._values_left_out)

    def reconfigure(self, config: GatewayConfig, also: Sequence[SubscriptionConfig] = ()) -> None:
        """Decoders, limits and policies from the next burst on (at start, and at a reload).
        `also`: subscriptions being removed whose messages may still arrive until the broker's
        UNSUBACK, decoded as before meanwhile."""
        previous = getattr(self, "_decoders", None)
        if previous is not None:
            self._left_out_before += previous.values_left_out()
        decoders = SubscriptionDecoders((*config.mqtt.subscriptions, *also), config.limits)
        for warning in decoders.warnings:
            log.warning("%s", warning)
        self._decoders = decoders
        self._decode = decoders.single or decoders
        self._drop_qos0 = config.pipeline.qos0_policy == "drop_oldest"
        self._max_payload_bytes = config.limits.max_payload_bytes
        self._kept_bytes = config.dead_letter.max_payload_bytes

    def _values_left_out(self) -> int:
        return self._left_out_before + self._decoders.values_left_out()

    async def __call__(self, bursts: list[Inbound]) -> None:
        # Every burst is decoded and counted before the first wait for room: a message counted
        # as received (by the source, just before this call) is in flight or settled, never in
        # between.
        received_at = time.time()
        decoded = [self._decode_burst(burst, received_at) for burst in bursts]
        m = self._metrics
        items = sum(d[3] for d in decoded)
        # Messages a mapping read to nothing it keeps (no_metrics = "drop"): received, dropped.
        filtered = sum(d[4] for d in decoded)
        m.readings_received.inc(items + filtered)
        m.in_flight.inc(items)
        if filtered:
            m.dropped["filtered"].inc(filtered)
        for burst, (routed, droppable, rejections, _, _) in zip(bursts, decoded, strict=True):
            await self._route(burst, routed, droppable, rejections)

    def _decode_burst(
        self, burst: Inbound, received_at: float
    ) -> tuple[list[list[Reading]], list[list[Reading]], list[Rejection], int, int]:
        """(readings per worker, droppable readings per worker, rejections, items, filtered)."""
        decode = self._decode
        shards = self._shards
        n_shards = len(shards)
        routed: list[list[Reading]] = [[] for _ in range(n_shards)]
        droppable: list[list[Reading]] = [[] for _ in range(n_shards)]
        rejections: list[Rejection] = []
        devices = self._devices
        track_devices = len(devices) < self._max_devices
        drop_qos0 = self._drop_qos0
        items = 0
        filtered = 0  # messages a mapping read to nothing it keeps (no_metrics = "drop")
        for topic, payload, qos in zip(burst.topics, burst.payloads, burst.qos, strict=True):
            try:
                readings = decode(topic, payload, received_at)
            except DecodeError as exc:
                rejections.append(
                    self._rejection(topic, payload, exc.reason, exc.detail, received_at)
                )
                items += 1
                continue
            except Exception as exc:
                rejections.append(self._internal_error(topic, payload, exc, received_at))
                items += 1
                continue
            if not readings:
                filtered += 1
                continue
            # Under drop_oldest, QoS 0 readings never wait: they may be dropped instead.
            lanes = droppable if (drop_qos0 and qos == 0) else routed
            if n_shards == 1:
                lanes[0] += readings
                if track_devices:
                    for reading in readings:
                        devices.add(reading.device_id)
            else:
                for reading in readings:
                    device = reading.device_id
                    if track_devices:
                        devices.add(device)
                    lanes[hash(device) % n_shards].append(reading)
            items += len(readings)
        return routed, droppable, rejections, items, filtered

    async def _route(
        self,
        burst: Inbound,
        routed: list[list[Reading]],
        droppable: list[list[Reading]],
        rejections: list[Rejection],
    ) -> None:
        """Put a decoded burst on the channels; each envelope holds a part of its ack."""
        m = self._metrics
        shards = self._shards
        ack = burst.ack
        if rejections:
            await self._rejects.put(Envelope(rejections, ack.hold()))
        for shard, lane, spare in zip(shards, routed, droppable, strict=True):
            if spare:
                for victim in shard.put_dropping(Envelope(spare, ack.hold(), droppable=True)):
                    m.dropped["queue_full"].inc(len(victim.body))
                    m.in_flight.dec(len(victim.body))
                    victim.ack.release()
            if lane:
                await shard.put(Envelope(lane, ack.hold()))
        ack.release()  # the burst's own part: now only the envelopes hold it

    def _rejection(
        self, topic: str, payload: bytes, reason: str, detail: str, received_at: float
    ) -> Rejection:
        if len(payload) <= self._max_payload_bytes:
            return Rejection(topic, payload, reason, detail, received_at)
        # An oversized payload is released at once: the record keeps a prefix, its size and a
        # digest, so it can be recognised without holding (or storing) all of it.
        return Rejection(
            topic,
            payload[: self._kept_bytes],
            reason,
            detail,
            received_at,
            payload_bytes=len(payload),
            payload_sha256=hashlib.sha256(payload).hexdigest(),
        )

    def _internal_error(
        self, topic: str, payload: bytes, exc: Exception, received_at: float
    ) -> Rejection:
        name = type(exc).__name__
        if name not in self._warned:
            self._warned.add(name)
            log.warning(
                "decoding a message raised %s (a bug); such messages are dead-lettered as "
                "internal_error",
                name,
                exc_info=exc,
            )
        return self._rejection(
            topic, payload, "internal_error", f"decoder raised {name}", received_at
        )
