"""SenML (RFC 8428): base fields resolved, one Reading per device and time, our reasons."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import LimitsConfig, SubscriptionConfig
from gateway.decode import make_decoder
from gateway.decode.senml import device_id_from_base_name
from tests.support.readings import NOW, assert_valid_readings, decode_or_reason, reason_of

LIMITS = LimitsConfig()
# Device from the topic.
TOPIC = "senml/plant-1/dev-0042"
DECODE = make_decoder(
    SubscriptionConfig(format="senml", template="senml/{site}/{device_id}"), LIMITS
)
# Device from the base name.
BN_TOPIC = "senml/plant-1"
BN_DECODE = make_decoder(SubscriptionConfig(format="senml", template="senml/{site}"), LIMITS)


def pack(*records: dict[str, Any]) -> bytes:
    return json.dumps(list(records)).encode()


def test_rfc_8428_example_with_device_from_the_base_name() -> None:
    # RFC 8428 §5.1.2, with times moved to our day.
    body = pack(
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": NOW, "bu": "A", "bver": 5, "n": "voltage",
         "u": "V", "v": 120.1},
        {"n": "current", "t": -5, "v": 1.2},
        {"n": "current", "t": -4, "v": 1.3},
    )  # fmt: skip
    readings = BN_DECODE(BN_TOPIC, body, NOW)
    assert [(r.device_id, r.ts, r.metrics, r.units) for r in readings] == [
        ("10e2073a01080063", NOW, {"voltage": 120.1}, {"voltage": "V"}),
        ("10e2073a01080063", NOW - 5, {"current": 1.2}, {"current": "A"}),
        ("10e2073a01080063", NOW - 4, {"current": 1.3}, {"current": "A"}),
    ]
    assert all(r.tags == {"site": "plant-1"} for r in readings)
    assert_valid_readings(readings, LIMITS, NOW)


def test_records_at_the_same_resolved_time_form_one_reading() -> None:
    body = pack(
        {"bt": NOW, "n": "temperature", "u": "Cel", "v": 21.4},
        {"n": "humidity", "u": "%RH", "v": 40},
        {"n": "temperature", "t": 60 - 120, "v": 21.0},
        {"n": "humidity", "t": -60, "v": 41},
    )
    readings = DECODE(TOPIC, body, NOW)
    assert [(r.ts, r.metrics) for r in readings] == [
        (NOW, {"temperature": 21.4, "humidity": 40.0}),
        (NOW - 60, {"temperature": 21.0, "humidity": 41.0}),
    ]
    assert readings[0].units == {"temperature": "Cel", "humidity": "%RH"}
    assert readings[0].device_id == "dev-0042"
    assert readings[0].tags == {"site": "plant-1"}
    readings[0].tags = {**readings[0].tags, "x": "y"}  # shared by the topic's readings: replaced
    assert readings[1].tags == {"site": "plant-1"}


def test_times_below_2_to_the_28_are_relative_to_receipt() -> None:
    body = pack({"n": "a", "v": 1}, {"n": "a", "t": -10, "v": 2}, {"n": "a", "t": 5, "v": 3})
    assert [r.ts for r in DECODE(TOPIC, body, NOW)] == [NOW, NOW - 10, NOW + 5]


def test_base_value_is_added_to_v_and_base_unit_applies_until_overridden() -> None:
    body = pack(
        {"bv": 100, "bu": "Pa", "n": "p1", "v": 1.5},
        {"n": "p2", "v": -1, "u": "hPa"},
        {"n": "p3", "v": 0},
    )
    [reading] = DECODE(TOPIC, body, NOW)
    assert reading.metrics == {"p1": 101.5, "p2": 99.0, "p3": 100.0}
    assert reading.units == {"p1": "Pa", "p2": "hPa", "p3": "Pa"}


def test_boolean_values_become_1_and_0_without_the_base_value() -> None:
    [reading] = DECODE(
        TOPIC, pack({"bv": 5, "n": "open", "vb": True}, {"n": "shut", "vb": False}), NOW
    )
    assert reading.metrics == {"open": 1.0, "shut": 0.0}


def test_a_record_of_base_fields_only_is_not_a_reading() -> None:
    body = pack({"bn": "dev-0042/", "bt": NOW}, {"n": "a", "v": 1})
    assert [r.metrics for r in DECODE(TOPIC, body, NOW)] == [{"a": 1.0}]


def test_base_name_and_topic_device_must_agree() -> None:
    assert DECODE(TOPIC, pack({"bn": "urn:dev:x:dev-0042:", "n": "a", "v": 1}), NOW)
    body = pack({"bn": "urn:dev:x:dev-9:", "n": "a", "v": 1})
    assert reason_of(DECODE, TOPIC, body) == "device_id_mismatch"


def test_a_later_base_name_starts_another_device() -> None:
    body = pack({"bn": "a/", "n": "t", "v": 1}, {"bn": "b/", "n": "t", "v": 2})
    readings = BN_DECODE(BN_TOPIC, body, NOW)
    assert [(r.device_id, r.metrics) for r in readings] == [("a", {"t": 1.0}), ("b", {"t": 2.0})]


@pytest.mark.parametrize(
    ("base_name", "device_id"),
    [
        ("urn:dev:ow:10e2073a01080063:", "10e2073a01080063"),
        ("urn:dev:mac:0024befffe804ff1", "0024befffe804ff1"),
        ("plant-1/dev-0042/", "dev-0042"),
        ("dev-0042", "dev-0042"),
        ("a:b/c//", "c"),
        ("", ""),
    ],
)
def test_device_id_is_the_last_segment_of_the_base_name(base_name: str, device_id: str) -> None:
    assert device_id_from_base_name(base_name) == device_id


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "invalid_json"),
        (b"[{]", "invalid_json"),
        (b'[{"n": "a", "v": NaN}]', "invalid_value"),
        (b'[{"n": "a", "v": 1e400}]', "invalid_value"),
        (b'{"n": "a", "v": 1}', "invalid_schema"),  # a pack is an array
        (b"[]", "missing_field"),
        (pack({"bn": "dev-0042:"}), "missing_field"),
        (pack({"n": "a"}), "missing_field"),
        (pack({"v": 1}), "missing_field"),
        (pack({"n": "a", "vs": "on"}), "unsupported_value"),
        (pack({"n": "a", "vd": "aGk="}), "unsupported_value"),
        (pack({"n": "a", "s": 10}), "unsupported_value"),
        (pack({"n": "a", "v": 1, "vb": True}), "invalid_schema"),
        (pack({"n": "a", "v": "1"}), "invalid_schema"),
        (pack({"n": 1, "v": 1}), "invalid_schema"),
        (pack({"n": "a", "v": True}), "invalid_schema"),
        (pack({"n": "a", "v": 1, "t": "now"}), "invalid_schema"),
        (pack({"n": "a", "v": 1}, {"n": "a", "v": 2}), "invalid_schema"),
        (pack({"n": "a", "v": 1, "crit_": 1}), "unsupported_value"),  # must-understand (§4.4)
        (pack({"bver": 11, "n": "a", "v": 1}), "unsupported_value"),
        (pack({"bv": 1.7e308, "n": "a", "v": 1.7e308}), "invalid_value"),
        (pack({"n": "1a", "v": 1}), "invalid_metric"),
        (pack({"n": "a", "v": 1, "u": "deg C"}), "invalid_schema"),
        (pack({"n": "a", "v": 1, "t": 3600}), "ts_out_of_range"),
        (pack({"n": "a", "v": 1, "t": 2**28}), "ts_out_of_range"),  # absolute: 1978
        (pack({"n": "a", "v": 1, "bt": 1e300, "t": 1e300}), "ts_out_of_range"),
        (pack({"bn": "dev 1:", "n": "a", "v": 1}), "invalid_device_id"),  # unsafe beats mismatch
        (pack({"bn": "dev-2:", "n": "a", "v": 1}), "device_id_mismatch"),
    ],
)
def test_a_bad_pack_is_refused_with_its_reason(body: bytes, expected: str) -> None:
    assert reason_of(DECODE, TOPIC, body) == expected


def test_without_a_topic_device_the_base_name_must_give_a_safe_one() -> None:
    assert reason_of(BN_DECODE, BN_TOPIC, pack({"n": "a", "v": 1})) == "missing_field"
    assert reason_of(BN_DECODE, BN_TOPIC, pack({"bn": "d v:", "n": "a", "v": 1})) == (
        "invalid_device_id"
    )
    assert reason_of(BN_DECODE, BN_TOPIC, pack({"bn": ":", "n": "a", "v": 1})) == (
        "invalid_device_id"
    )


def test_more_distinct_times_than_max_readings_per_message_is_refused() -> None:
    decode = make_decoder(
        SubscriptionConfig(format="senml", template="senml/{site}/{device_id}"),
        LimitsConfig(max_readings_per_message=2),
    )
    two = pack({"n": "a", "v": 1}, {"n": "a", "t": -1, "v": 1})
    assert len(decode(TOPIC, two, NOW)) == 2
    three = pack({"n": "a", "v": 1}, {"n": "a", "t": -1, "v": 1}, {"n": "a", "t": -2, "v": 1})
    assert reason_of(decode, TOPIC, three) == "payload_too_large"


# --- fuzzing ---

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
)
names = st.sampled_from(["dev-0042/", "urn:dev:ow:dev-0042:", "plant/dev-9/", "", ":", "a b"])
times = st.sampled_from([NOW, 0, -5, 5, 2.0**28, 1e300]) | st.floats(-1e6, 1e6)
units = st.sampled_from(["Cel", "%RH", "Pa", "", "deg C"])
MOSTLY = st.sampled_from([True] * 9 + [False])
# Mostly the right type, so that packs get past the schema and exercise resolution and checks.
TYPED = {
    "bn": names,
    "bt": times,
    "bu": units,
    "bv": st.floats(allow_nan=False),
    "bver": st.integers(8, 12),
    "n": st.sampled_from(["temp", "hum", "1x", "", "a" * 70]),
    "u": units,
    "v": st.floats(-1e6, 1e6) | st.floats(allow_nan=False),
    "vb": st.booleans(),
    "vs": st.text(max_size=5),
    "t": times,
    "x_": anything,
}


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    labels = draw(st.lists(st.sampled_from(list(TYPED)), max_size=5, unique=True))
    chosen = ["n", "v", *labels] if draw(MOSTLY) else labels
    return {label: draw(TYPED[label] if draw(MOSTLY) else anything) for label in chosen}


@st.composite
def broken_packs(draw: st.DrawFn) -> bytes:
    text = json.dumps(draw(st.lists(records(), max_size=5)), allow_nan=True)
    if not draw(MOSTLY):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "}", "]", ",", '"'])) + text[cut:]
    return text.encode()


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(body=broken_packs(), from_topic=st.booleans())
def test_structured_but_broken_senml_decodes_to_valid_readings_or_a_decode_error(
    body: bytes, from_topic: bool
) -> None:
    decode, topic = (DECODE, TOPIC) if from_topic else (BN_DECODE, BN_TOPIC)
    result = decode_or_reason(decode, topic, body)
    if not isinstance(result, str):
        assert_valid_readings(result, LIMITS, NOW)


@settings(max_examples=500)
@given(body=st.binary(max_size=300))
def test_any_bytes_decode_to_valid_readings_or_a_decode_error(body: bytes) -> None:
    result = decode_or_reason(DECODE, TOPIC, body)
    if not isinstance(result, str):
        assert_valid_readings(result, LIMITS, NOW)
