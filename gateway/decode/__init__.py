"""Pure (topic, payload) -> list[Reading] | DecodeError; one module per format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

from gateway.config import LimitsConfig, SubscriptionConfig
from gateway.decode.bare_value import BareValueDecoder
from gateway.decode.checks import ReadingCheck
from gateway.decode.json_reading import JsonReadingDecoder
from gateway.decode.senml import SenmlDecoder
from gateway.errors import DecodeError
from gateway.model import Reading
from gateway.topics import DEVICE_ID_FIELD, METRIC_FIELD, TopicTemplate, filter_matches, unshared

# (topic, payload, received_at) -> readings; raises DecodeError, never anything else.
Decoder: TypeAlias = Callable[[str, bytes, float], list[Reading]]
# (payload, topic device id, topic metric, received_at) -> readings before the common checks.
FormatDecoder: TypeAlias = Callable[[bytes, str | None, str | None, float], list[Reading]]

FORMATS: dict[str, Callable[[LimitsConfig], FormatDecoder]] = {
    "json": JsonReadingDecoder,
    "senml": SenmlDecoder,
    "bare": BareValueDecoder,
}

__all__ = ["FORMATS", "Decoder", "FormatDecoder", "SubscriptionDecoders", "make_decoder"]

# Topics whose template match (or subscription) is remembered (a device sends on the same topic
# again and again); past this many the memory is cleared and refilled, so it stays a few MB.
TOPIC_MEMORY = 16_384


def make_decoder(sub: SubscriptionConfig, limits: LimitsConfig) -> Decoder:
    """The decoder for one subscription: size check, topic match, format decode, common checks.

    Topic fields become tags, except {device_id} and {metric}, which name the device and the
    metric of a bare value.
    """
    template = TopicTemplate(sub.template, limits.max_device_id_length)
    decode_format = FORMATS[sub.format](limits)
    check = ReadingCheck(limits)
    max_payload_bytes = limits.max_payload_bytes
    # topic -> (device id, metric, other fields) of topics that matched.
    matched: dict[str, tuple[str | None, str | None, dict[str, str]]] = {}

    def decode(topic: str, payload: bytes, received_at: float) -> list[Reading]:
        if len(payload) > max_payload_bytes:
            raise DecodeError("payload_too_large", f"{len(payload)} bytes, max {max_payload_bytes}")
        fields = matched.get(topic)
        if fields is None:
            tags = template.match(topic)  # DecodeError: not remembered, raised each time
            fields = (tags.pop(DEVICE_ID_FIELD, None), tags.pop(METRIC_FIELD, None), tags)
            if len(matched) >= TOPIC_MEMORY:
                matched.clear()
            matched[topic] = fields
        device_id, metric, tags = fields
        readings = decode_format(payload, device_id, metric, received_at)
        for reading in readings:
            check(reading)
            # Each reading owns its tags, so a later step may change one without the others.
            reading.tags = tags.copy()
            reading.topic = topic
            reading.payload = payload
        return readings

    return decode


class SubscriptionDecoders:
    """The decoder of the subscription a topic arrived on: the first whose filter matches.

    Mosquitto delivers a message once even when several of our filters match it, so the first
    configured one wins; a topic no filter matches (it should not happen) takes the first.
    """

    __slots__ = ("_by_topic", "_decoders", "_filters")

    def __init__(self, subscriptions: Sequence[SubscriptionConfig], limits: LimitsConfig) -> None:
        self._decoders = [make_decoder(sub, limits) for sub in subscriptions]
        # Delivered topics never carry the `$share/<group>/` prefix.
        self._filters = [unshared(sub.effective_filter) for sub in subscriptions]
        self._by_topic: dict[str, Decoder] = {}

    def __call__(self, topic: str) -> Decoder:
        decoders = self._decoders
        if len(decoders) == 1:
            return decoders[0]
        decoder = self._by_topic.get(topic)
        if decoder is None:
            decoder = next(
                (
                    d
                    for f, d in zip(self._filters, decoders, strict=True)
                    if filter_matches(f, topic)
                ),
                decoders[0],
            )
            if len(self._by_topic) >= TOPIC_MEMORY:
                self._by_topic.clear()
            self._by_topic[topic] = decoder
        return decoder
