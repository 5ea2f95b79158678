"""Admission: decode a burst, count it, and route it: readings to their device's worker,
rejections to the dead-letter channel."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.channel import Channel
from gateway.config import GatewayConfig, SubscriptionConfig
from gateway.decode import SubscriptionDecoders
from gateway.distinct import DistinctCount
from gateway.errors import DecodeError
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Inbound, Reading, Rejection, rejection_of

log = logging.getLogger(__name__)


@dataclass
class _Lanes:
    """A decoded burst, per worker: its readings (those QoS 0 ones that may be dropped apart),
    and the bytes of the messages each lane keeps alive (the channels are bounded in bytes)."""

    routed: list[list[Reading]]
    routed_bytes: list[int]
    droppable: list[list[Reading]]
    droppable_bytes: list[int]
    rejections: list[Rejection] = field(default_factory=list)
    rejected_bytes: int = 0
    items: int = 0
    filtered: int = 0  # messages a mapping read to nothing it keeps (no_metrics = "drop")


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
        self._metrics = metrics
        self._shards = shards
        self._rejects = rejects
        self._devices = devices
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
        items = sum(lanes.items for lanes in decoded)
        filtered = sum(lanes.filtered for lanes in decoded)
        m.readings_received.inc(items + filtered)
        m.in_flight.inc(items)
        if filtered:
            m.dropped["filtered"].inc(filtered)
        for burst, lanes in zip(bursts, decoded, strict=True):
            await self._route(burst, lanes)

    def _decode_burst(self, burst: Inbound, received_at: float) -> _Lanes:
        decode = self._decode
        n_shards = len(self._shards)
        lanes = _Lanes(
            [[] for _ in range(n_shards)],
            [0] * n_shards,
            [[] for _ in range(n_shards)],
            [0] * n_shards,
        )
        seen: set[str] = set()
        drop_qos0 = self._drop_qos0
        items = filtered = 0
        for topic, payload, qos in zip(burst.topics, burst.payloads, burst.qos, strict=True):
            try:
                readings = decode(topic, payload, received_at)
            except DecodeError as exc:
                self._reject(lanes, topic, payload, exc.reason, exc.detail, received_at)
                items += 1
                continue
            except Exception as exc:
                self._internal_error(lanes, topic, payload, exc, received_at)
                items += 1
                continue
            if not readings:
                filtered += 1
                continue
            size = len(topic) + len(payload)
            # Under drop_oldest, QoS 0 readings never wait: they may be dropped instead.
            if drop_qos0 and qos == 0:
                lane, lane_bytes = lanes.droppable, lanes.droppable_bytes
            else:
                lane, lane_bytes = lanes.routed, lanes.routed_bytes
            if n_shards == 1:
                lane[0] += readings
                lane_bytes[0] += size
                for reading in readings:
                    seen.add(reading.device_id)
            else:
                touched = -1
                for reading in readings:
                    device = reading.device_id
                    seen.add(device)
                    index = hash(device) % n_shards
                    lane[index].append(reading)
                    # A message's bytes count in each lane it reaches (again when its readings
                    # alternate between lanes: an overcount only bounds the channel sooner).
                    if index != touched:
                        touched = index
                        lane_bytes[index] += size
            items += len(readings)
        self._devices.update(seen)
        lanes.items, lanes.filtered = items, filtered
        return lanes

    async def _route(self, burst: Inbound, lanes: _Lanes) -> None:
        """Put a decoded burst on the channels; each envelope holds a part of its ack."""
        m = self._metrics
        ack = burst.ack
        if lanes.rejections:
            await self._rejects.put(
                Envelope(lanes.rejections, ack.hold(), nbytes=lanes.rejected_bytes)
            )
        for n, (shard, lane, spare) in enumerate(
            zip(self._shards, lanes.routed, lanes.droppable, strict=True)
        ):
            if spare:
                spare_envelope = Envelope(
                    spare, ack.hold(), droppable=True, nbytes=lanes.droppable_bytes[n]
                )
                for victim in shard.put_dropping(spare_envelope):
                    m.dropped["queue_full"].inc(len(victim.body))
                    m.in_flight.dec(len(victim.body))
                    victim.ack.release()
            if lane:
                await shard.put(Envelope(lane, ack.hold(), nbytes=lanes.routed_bytes[n]))
        ack.release()  # the burst's own part: now only the envelopes hold it

    def _reject(  # noqa: PLR0917 - the Rejection's own fields, in its order
        self,
        lanes: _Lanes,
        topic: str,
        payload: bytes,
        reason: str,
        detail: str,
        received_at: float,
    ) -> None:
        rejection = rejection_of(topic, payload, reason, detail, received_at, self._kept_bytes)
        lanes.rejections.append(rejection)
        lanes.rejected_bytes += len(topic) + len(rejection.payload)

    def _internal_error(
        self, lanes: _Lanes, topic: str, payload: bytes, exc: Exception, received_at: float
    ) -> None:
        name = type(exc).__name__
        if name not in self._warned:
            self._warned.add(name)
            log.warning(
                "decoding a message raised %s (a bug); such messages are dead-lettered as "
                "internal_error",
                name,
                exc_info=exc,
            )
        self._reject(lanes, topic, payload, "internal_error", f"decoder raised {name}", received_at)
