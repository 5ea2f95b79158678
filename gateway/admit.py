"""Admission: decode a burst, count it, and route it: readings to their device's worker,
rejections to the dead-letter channel."""

from __future__ import annotations

import logging
import time

from gateway.channel import Channel
from gateway.config import GatewayConfig
from gateway.decode import SubscriptionDecoders
from gateway.distinct import DistinctCount
from gateway.errors import DecodeError
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Inbound, Reading, Rejection, rejection_of

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
        devices: DistinctCount,
    ) -> None:
        decoders = SubscriptionDecoders(config.mqtt.subscriptions, config.limits)
        self._decode = decoders.single or decoders
        self._metrics = metrics
        self._shards = shards
        self._rejects = rejects
        self._drop_qos0 = config.pipeline.qos0_policy == "drop_oldest"
        self._kept_bytes = config.dead_letter.max_payload_bytes
        self._devices = devices
        self._warned: set[str] = set()

    async def __call__(self, bursts: list[Inbound]) -> None:
        for burst in bursts:
            await self._admit(burst)

    async def _admit(self, burst: Inbound) -> None:
        received_at = time.time()
        decode = self._decode
        shards = self._shards
        n_shards = len(shards)
        routed: list[list[Reading]] = [[] for _ in range(n_shards)]
        droppable: list[list[Reading]] = [[] for _ in range(n_shards)]
        # What each lane's readings keep alive: their messages' topics and payloads.
        routed_bytes = [0] * n_shards
        droppable_bytes = [0] * n_shards
        rejections: list[Rejection] = []
        rejected_bytes = 0
        seen: set[str] = set()
        drop_qos0 = self._drop_qos0
        items = 0
        for topic, payload, qos in zip(burst.topics, burst.payloads, burst.qos, strict=True):
            try:
                readings = decode(topic, payload, received_at)
            except DecodeError as exc:
                rejection = self._rejection(topic, payload, exc.reason, exc.detail, received_at)
                rejections.append(rejection)
                rejected_bytes += len(topic) + len(rejection.payload)
                items += 1
                continue
            except Exception as exc:
                rejection = self._internal_error(topic, payload, exc, received_at)
                rejections.append(rejection)
                rejected_bytes += len(topic) + len(rejection.payload)
                items += 1
                continue
            size = len(topic) + len(payload)
            # Under drop_oldest, QoS 0 readings never wait: they may be dropped instead.
            if drop_qos0 and qos == 0:
                lanes, lane_bytes = droppable, droppable_bytes
            else:
                lanes, lane_bytes = routed, routed_bytes
            if n_shards == 1:
                lanes[0] += readings
                lane_bytes[0] += size
                for reading in readings:
                    seen.add(reading.device_id)
            else:
                touched = -1
                for reading in readings:
                    device = reading.device_id
                    seen.add(device)
                    index = hash(device) % n_shards
                    lanes[index].append(reading)
                    # A message's bytes count in each lane it reaches (again when its readings
                    # alternate between lanes: an overcount only bounds the channel sooner).
                    if index != touched:
                        touched = index
                        lane_bytes[index] += size
            items += len(readings)
        self._devices.update(seen)
        m = self._metrics
        m.readings_received.inc(items)
        m.in_flight.inc(items)
        ack = burst.ack
        if rejections:
            await self._rejects.put(Envelope(rejections, ack.hold(), nbytes=rejected_bytes))
        for n, (shard, lane, spare) in enumerate(zip(shards, routed, droppable, strict=True)):
            if spare:
                spare_envelope = Envelope(
                    spare, ack.hold(), droppable=True, nbytes=droppable_bytes[n]
                )
                for victim in shard.put_dropping(spare_envelope):
                    m.dropped["queue_full"].inc(len(victim.body))
                    m.in_flight.dec(len(victim.body))
                    victim.ack.release()
            if lane:
                await shard.put(Envelope(lane, ack.hold(), nbytes=routed_bytes[n]))
        ack.release()  # the burst's own part: now only the envelopes hold it

    def _rejection(
        self, topic: str, payload: bytes, reason: str, detail: str, received_at: float
    ) -> Rejection:
        return rejection_of(topic, payload, reason, detail, received_at, self._kept_bytes)

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
