"""Bare values: an ASCII number on `.../{device_id}/{metric}` -> one Reading timed at receipt."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import LimitsConfig, SubscriptionConfig
from gateway.decode import make_decoder
from gateway.decode.bare_value import BareValueDecoder
from gateway.errors import DecodeError
from gateway.topics import TopicFields
from tests.support.readings import NOW, assert_valid_readings, decode_or_reason, reason_of

LIMITS = LimitsConfig()
SUB = SubscriptionConfig(format="bare", template="bare/{site}/{device_id}/{metric}")
DECODE = make_decoder(SUB, LIMITS)
TOPIC = "bare/plant-1/dev-0042/temperature"


def test_a_number_becomes_one_reading_named_by_the_topic() -> None:
    [reading] = DECODE(TOPIC, b"21.5", NOW)
    assert reading.device_id == "dev-0042"
    assert reading.metrics == {"temperature": 21.5}
    assert reading.ts == NOW
    assert reading.received_at == NOW
    assert reading.seq is None
    assert reading.units == {}
    assert reading.tags == {"site": "plant-1"}


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b"21.5", 21.5),
        (b"-3", -3.0),
        (b"+0.5", 0.5),
        (b".5", 0.5),
        (b"7.", 7.0),
        (b"1e3", 1000.0),
        (b"2.5E-2", 0.025),
        (b"21.5\n", 21.5),
        (b" 21.5\r\n", 21.5),
    ],
)
def test_decimal_numbers_with_surrounding_whitespace_are_accepted(
    body: bytes, value: float
) -> None:
    [reading] = DECODE(TOPIC, body, NOW)
    assert reading.metrics["temperature"] == value
    assert type(reading.metrics["temperature"]) is float


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" ",
        b"abc",
        b"21.5 C",
        b"21.5.1",
        b"1,5",
        b"nan",
        b"NaN",
        b"inf",
        b"-Infinity",
        b"1e999",
        b"-1e999",
        b"1_000",
        b"0x10",
        b"true",
        b'"21.5"',
        b"{}",
        b"\xff\xfe",
        "٣".encode(),  # a non-ASCII digit, which float() would take
        b"21.5\x00",
    ],
)
def test_anything_but_a_finite_ascii_number_is_an_invalid_value(body: bytes) -> None:
    assert reason_of(DECODE, TOPIC, body) == "invalid_value"


def test_the_metric_level_must_be_a_valid_metric_name() -> None:
    assert reason_of(DECODE, "bare/plant-1/dev-0042/1st", b"1") == "invalid_metric"


def test_the_topic_must_have_the_template_shape() -> None:
    assert reason_of(DECODE, "bare/plant-1/dev-0042", b"1") == "topic_mismatch"
    assert reason_of(DECODE, "bare/plant-1/dev 42/t", b"1") == "invalid_device_id"


def test_a_payload_over_max_payload_bytes_is_refused() -> None:
    decode = make_decoder(SUB, LimitsConfig(max_payload_bytes=16))
    assert reason_of(decode, TOPIC, b"1" + b" " * 16) == "payload_too_large"


def test_without_device_or_metric_the_decoder_refuses_rather_than_guessing() -> None:
    with pytest.raises(DecodeError) as caught:
        BareValueDecoder(LIMITS)(b"1", "t", TopicFields(None, "t", {}), NOW)
    assert caught.value.reason == "missing_field"


def test_error_detail_quotes_the_payload_only_truncated() -> None:
    with pytest.raises(DecodeError) as caught:
        DECODE(TOPIC, b"x" * 60_000, NOW)
    assert len(caught.value.detail) < 100


@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_sent_as_text_comes_back_exactly(value: float) -> None:
    [reading] = DECODE(TOPIC, repr(value).encode(), NOW)
    assert reading.metrics == {"temperature": value}


@settings(max_examples=500)
@given(body=st.binary(max_size=64) | st.text(max_size=20).map(str.encode))
def test_any_bytes_decode_to_a_valid_reading_or_a_decode_error(body: bytes) -> None:
    result = decode_or_reason(DECODE, TOPIC, body)
    if not isinstance(result, str):
        assert_valid_readings(result, LIMITS, NOW)
        assert len(result) == 1
