"""Pure (topic, payload) -> list[Reading] | DecodeError; one module per format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

from gateway.config import LimitsConfig, SubscriptionConfig
from gateway.decode.bare_value import BareValueDecoder
from gateway.decode.checks import ReadingCheck
from gateway.decode.json_reading import JsonReadingDecoder
from gateway.decode.mapping import MappingDecoder
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

__all__ = [
    "FORMATS",
    "Decoder",
    "FormatDecoder",
    "MappingDecoder",
    "SubscriptionDecoder",
    "SubscriptionDecoders",
    "make_decoder",
]

# Topics whose template match (or subscription) is remembered (a device sends on the same topic
# again and again); past this many the memory is cleared and refilled, so it stays a few MB.
TOPIC_MEMORY = 16_384


class SubscriptionDecoder:
    """The decoder for one subscription: size check, topic match, format decode, common checks.

    Topic fields become tags, except {device_id} and {metric}, which name the device and the
    metric of a bare value. A mapping (`format = "mapping"` or a preset) also reads, once per
    topic, what its settings take from the topic (`MappingDecoder.topic_fields`).
    """

    __slots__ = (
        "_check",
        "_decode_format",
        "_matched",
        "_max_payload_bytes",
        "_template",
        "_topic_fields",
        "mapping",
    )

    def __init__(self, sub: SubscriptionConfig, limits: LimitsConfig) -> None:
        self._template = TopicTemplate(sub.effective_template, limits.max_device_id_length)
        mapping = sub.effective_mapping
        # The mapping decoder of a mapped format (its counters and notes), else None.
        self.mapping: MappingDecoder | None = None
        self._decode_format: FormatDecoder
        self._topic_fields: Callable[[str, TopicFields], TopicFields] | None
        if mapping is not None:
            self.mapping = MappingDecoder(mapping, self._template, limits)
            self._decode_format = self.mapping
            self._topic_fields = self.mapping.topic_fields
        else:
            self._decode_format = FORMATS[sub.format](limits)
            self._topic_fields = None
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
            if self._topic_fields is not None:
                fields = self._topic_fields(topic, fields)
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

    __slots__ = ("_by_topic", "_decoders", "_filters", "_subscriptions")

    def __init__(self, subscriptions: Sequence[SubscriptionConfig], limits: LimitsConfig) -> None:
        self._subscriptions = tuple(subscriptions)
        self._decoders = [SubscriptionDecoder(sub, limits) for sub in subscriptions]
        # Delivered topics never carry the `$share/<group>/` prefix.
        self._filters = [unshared(sub.effective_filter) for sub in subscriptions]
        self._by_topic: dict[str, SubscriptionDecoder] = {}

    @property
    def warnings(self) -> list[str]:
        """What start-up should say about the subscriptions (a filter wider than its template)."""
        return [
            f"mqtt.subscriptions.{index}: {sub.filter_warning}"
            for index, sub in enumerate(self._subscriptions)
            if sub.filter_warning is not None
        ]

    def values_left_out(self) -> int:
        """Payload values the mappings left out so far (strings they do not read, nulls)."""
        return sum(d.mapping.left_out for d in self._decoders if d.mapping is not None)

    def index(self, decoder: SubscriptionDecoder) -> int:
        """The position of `decoder`'s subscription in the configuration."""
        return self._decoders.index(decoder)

    def pick(self, topic: str) -> SubscriptionDecoder:
        """The decoder a message on `topic` goes to (see the class docstring)."""
        return next(
            (
                d
                for f, d in zip(self._filters, self._decoders, strict=True)
                if filter_matches(f, topic)
            ),
            self._decoders[0],
        )

    @property
    def single(self) -> SubscriptionDecoder | None:
        """The one decoder when there is one subscription (the common case: no matching)."""
        return self._decoders[0] if len(self._decoders) == 1 else None

    def __call__(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        decoder = self._by_topic.get(topic)
        if decoder is None:
            decoder = self.pick(topic)
            if len(self._by_topic) >= TOPIC_MEMORY:
                self._by_topic.clear()
            self._by_topic[topic] = decoder
        return decoder(topic, payload, received_at)
