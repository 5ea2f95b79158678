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
from gateway.topics import TopicFields, TopicTemplate, filter_matches, unshared

# (topic, payload, received_at) -> readings; raises DecodeError, never anything else.
Decoder: TypeAlias = Callable[[str, bytes, float], list[Reading]]
# (payload, topic, the topic's fields, received_at) -> readings before the common checks.
FormatDecoder: TypeAlias = Callable[[bytes, str, TopicFields, float], list[Reading]]

FORMATS: dict[str, Callable[[LimitsConfig], FormatDecoder]] = {
    "json": JsonReadingDecoder,
    "senml": SenmlDecoder,
    "bare": BareValueDecoder,
}

__all__ = ["FORMATS", "Decoder", "FormatDecoder", "SubscriptionDecoders", "make_decoder"]

# Topics whose template match (or subscription) is remembered (a device sends on the same topic
# again and again); past this many the memory is cleared and refilled, so it stays a few MB.
TOPIC_MEMORY = 16_384


class SubscriptionDecoder:
    """The decoder for one subscription: size check, topic match, format decode, common checks.

    Topic fields become tags, except {device_id} and {metric}, which name the device and the
    metric of a bare value.
    """

    __slots__ = ("_check", "_decode_format", "_matched", "_max_payload_bytes", "_template")

    def __init__(self, sub: SubscriptionConfig, limits: LimitsConfig) -> None:
        self._template = TopicTemplate(sub.template, limits.max_device_id_length)
        self._decode_format = FORMATS[sub.format](limits)
        self._check = ReadingCheck(limits)
        self._max_payload_bytes = limits.max_payload_bytes
        self._matched: dict[str, TopicFields] = {}

    def __call__(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        if len(payload) > self._max_payload_bytes:
            raise DecodeError(
                "payload_too_large", f"{len(payload)} bytes, max {self._max_payload_bytes}"
            )
        fields = self._matched.get(topic)
        if fields is None:
            fields = self._template.fields_of(
                topic
            )  # DecodeError: not remembered, raised each time
            if len(self._matched) >= TOPIC_MEMORY:
                self._matched.clear()
            self._matched[topic] = fields
        readings = self._decode_format(payload, topic, fields, received_at)
        self._check(readings)
        return readings


def make_decoder(sub: SubscriptionConfig, limits: LimitsConfig) -> Decoder:
    """The decoder of one subscription (see SubscriptionDecoder)."""
    return SubscriptionDecoder(sub, limits)


class SubscriptionDecoders:
    """Decodes a message with the decoder of the subscription it arrived on: the first whose
    filter matches its topic.

    Mosquitto delivers a message once even when several of our filters match it, so the first
    configured one wins; a topic no filter matches (it should not happen) takes the first.
    """

    __slots__ = ("_by_topic", "_decoders", "_filters")

    def __init__(self, subscriptions: Sequence[SubscriptionConfig], limits: LimitsConfig) -> None:
        self._decoders = [SubscriptionDecoder(sub, limits) for sub in subscriptions]
        # Delivered topics never carry the `$share/<group>/` prefix.
        self._filters = [unshared(sub.effective_filter) for sub in subscriptions]
        self._by_topic: dict[str, SubscriptionDecoder] = {}

    @property
    def single(self) -> SubscriptionDecoder | None:
        """The one decoder when there is one subscription (the common case: no matching)."""
        return self._decoders[0] if len(self._decoders) == 1 else None

    def __call__(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        decoder = self._by_topic.get(topic)
        if decoder is None:
            decoder = next(
                (
                    d
                    for f, d in zip(self._filters, self._decoders, strict=True)
                    if filter_matches(f, topic)
                ),
                self._decoders[0],
            )
            if len(self._by_topic) >= TOPIC_MEMORY:
                self._by_topic.clear()
            self._by_topic[topic] = decoder
        return decoder(topic, payload, received_at)
