"""JSON readings: one object or a batch -> valid Readings, or a DecodeError with our reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import LimitsConfig, SubscriptionConfig
from gateway.decode import make_decoder
from gateway.decode.checks import NAME_MEMORY
from gateway.decode.timestamps import TimestampParser
from gateway.errors import DecodeError
from tests.support.readings import NOW, assert_valid_readings, decode_or_reason, reason_of

LIMITS = LimitsConfig()
TOPIC = "sensors/plant-1/dev-0042/telemetry"
DECODE = make_decoder(SubscriptionConfig(), LIMITS)
EXAMPLE = {
    "device_id": "dev-0042",
    "ts": "2026-11-25T11:00:00.123Z",
    "seq": 17,
    "metrics": {"temperature": 21.4},
    "units": {"temperature": "Cel"},
}


def payload(**changes: Any) -> bytes:
    """The example reading with fields replaced (a value of ... removes the field)."""
    body = {**EXAMPLE, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_a_reading_object_becomes_one_reading_with_topic_tags() -> None:
    [reading] = DECODE(TOPIC, payload(), NOW)
    assert reading.device_id == "dev-0042"
    assert reading.ts == pytest.approx(NOW + 0.123)
    assert reading.received_at == NOW
    assert reading.seq == 17
    assert reading.metrics == {"temperature": 21.4}
    assert reading.units == {"temperature": "Cel"}
    assert reading.tags == {"site": "plant-1"}
    assert reading.flags is None


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-25T11:00:00.123Z", NOW + 0.123),
        ("2026-11-25T12:00:00+01:00", NOW),
        ("2026-11-25T06:30:00-04:30", NOW),
        ("2026-11-25T11:00:00", NOW),  # naive means UTC
        ("2026-11-25 11:00:00.5", NOW + 0.5),
        (NOW, NOW),
        (int(NOW), NOW),
        (NOW - 30.25, NOW - 30.25),
        (int(NOW * 1000) + 250, NOW + 0.25),  # epoch milliseconds
        (NOW * 1000, NOW),
    ],
)
def test_ts_is_iso_8601_epoch_seconds_or_epoch_milliseconds(ts: object, expected: float) -> None:
    [reading] = DECODE(TOPIC, payload(ts=ts), NOW)
    assert reading.ts == pytest.approx(expected, abs=1e-6)
    assert type(reading.ts) is float


def test_numbers_above_1e11_are_milliseconds_and_below_are_seconds() -> None:
    parse_ts = TimestampParser()
    assert parse_ts(1e11) == 1e11
    assert parse_ts(1e11 + 1000) == pytest.approx(1e8 + 1)


def test_seq_and_units_are_optional() -> None:
    [reading] = DECODE(TOPIC, payload(seq=..., units=...), NOW)
    assert reading.seq is None
    assert reading.units == {}


def test_device_id_comes_from_the_topic_when_the_payload_has_none() -> None:
    [reading] = DECODE("sensors/plant-1/dev-7/telemetry", payload(device_id=...), NOW)
    assert reading.device_id == "dev-7"


def test_payload_and_topic_device_ids_must_agree() -> None:
    topic = "sensors/plant-1/dev-7/telemetry"
    assert reason_of(DECODE, topic, payload()) == "device_id_mismatch"


def test_without_a_topic_device_id_the_payload_must_name_the_device() -> None:
    decode = make_decoder(SubscriptionConfig(template="plant/{site}/telemetry"), LIMITS)
    [reading] = decode("plant/p1/telemetry", payload(), NOW)
    assert (reading.device_id, reading.tags) == ("dev-0042", {"site": "p1"})
    assert reason_of(decode, "plant/p1/telemetry", payload(device_id=...)) == "missing_field"


def test_topic_fields_become_tags_except_device_id_and_metric() -> None:
    sub = SubscriptionConfig(template="sensors/{site}/{line}/{device_id}/{metric}")
    [reading] = make_decoder(sub, LIMITS)("sensors/p1/l2/dev-0042/temperature", payload(), NOW)
    assert reading.tags == {"site": "p1", "line": "l2"}


def test_bool_and_int_metrics_are_stored_as_floats() -> None:
    [reading] = DECODE(TOPIC, payload(metrics={"door": True, "alarm": False, "count": 3}), NOW)
    assert reading.metrics == {"door": 1.0, "alarm": 0.0, "count": 3.0}
    assert all(type(v) is float for v in reading.metrics.values())


def test_units_of_metrics_not_in_the_reading_are_dropped() -> None:
    body = payload(metrics={"humidity": 40}, units={"temperature": "Cel", "humidity": "%RH"})
    [reading] = DECODE(TOPIC, body, NOW)
    assert reading.units == {"humidity": "%RH"}


def test_unknown_fields_are_ignored() -> None:
    [reading] = DECODE(TOPIC, payload(firmware="1.2.3", extra={"a": [1]}), NOW)
    assert reading.metrics == {"temperature": 21.4}


def test_a_batch_becomes_one_reading_per_element_with_the_topic_tags() -> None:
    batch = [{**EXAMPLE, "seq": n, "metrics": {"t": float(n)}} for n in range(3)]
    readings = DECODE(TOPIC, b" \n" + json.dumps(batch).encode(), NOW)
    assert [r.seq for r in readings] == [0, 1, 2]
    assert [r.metrics for r in readings] == [{"t": 0.0}, {"t": 1.0}, {"t": 2.0}]
    assert all(r.tags == {"site": "plant-1"} for r in readings)
    # Tags are shared by a topic's readings (documented on Reading): steps replace them.
    readings[0].tags = {**readings[0].tags, "changed": "yes"}
    assert readings[1].tags == {"site": "plant-1"}


def test_a_batch_over_max_readings_per_message_is_refused() -> None:
    decode = make_decoder(SubscriptionConfig(), LimitsConfig(max_readings_per_message=2))
    assert len(decode(TOPIC, json.dumps([EXAMPLE] * 2).encode(), NOW)) == 2
    assert reason_of(decode, TOPIC, json.dumps([EXAMPLE] * 3).encode()) == "payload_too_large"


def test_an_empty_batch_is_refused_rather_than_yielding_nothing_to_ack() -> None:
    assert reason_of(DECODE, TOPIC, b"[]") == "missing_field"


def test_one_bad_element_refuses_the_whole_batch() -> None:
    batch = [EXAMPLE, {**EXAMPLE, "metrics": {"t": "warm"}}]
    assert reason_of(DECODE, TOPIC, json.dumps(batch).encode()) == "invalid_schema"


def test_a_payload_over_max_payload_bytes_is_refused_before_parsing() -> None:
    decode = make_decoder(SubscriptionConfig(), LimitsConfig(max_payload_bytes=100))
    assert reason_of(decode, TOPIC, b"x" * 101) == "payload_too_large"
    assert reason_of(decode, TOPIC, b"x" * 100) == "invalid_json"


def test_the_topic_is_matched_before_the_payload_is_parsed() -> None:
    assert reason_of(DECODE, "sensors/plant-1/dev-0042/status", b"not json") == "topic_mismatch"
    assert reason_of(DECODE, "sensors/plant-1/dev 42/telemetry", b"{}") == "invalid_device_id"


TOO_MANY = {f"m{n}": 1.0 for n in range(LIMITS.max_metrics + 1)}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"{'ts': 1}", "invalid_json"),
        (b'{"ts": "\xff"}', "invalid_json"),  # not UTF-8
        (b'\xef\xbb\xbf{"ts": 1}', "invalid_json"),  # a BOM is not JSON (RFC 8259 8.1)
        (b'"a string"', "invalid_schema"),
        (b"42", "invalid_schema"),
        (b"null", "invalid_schema"),
        (b"[1, 2]", "invalid_schema"),
        (payload(ts=...), "missing_field"),
        (payload(metrics=...), "missing_field"),
        (payload(metrics={}), "missing_field"),
        (payload(metrics=[21.4]), "invalid_schema"),
        (payload(metrics={"t": "21.4"}), "invalid_schema"),
        (payload(metrics={"t": None}), "invalid_schema"),
        (payload(metrics={"t": [1]}), "invalid_schema"),
        (payload(metrics={"t": float("nan")}), "invalid_value"),
        (payload(metrics={"t": float("inf")}), "invalid_value"),
        (payload(metrics={"t": float("-inf")}), "invalid_value"),
        (payload().replace(b"21.4", b"1e400"), "invalid_value"),
        (payload(metrics=TOO_MANY), "too_many_metrics"),
        (payload(metrics={"1st": 1}), "invalid_metric"),
        (payload(metrics={"": 1}), "invalid_metric"),
        (payload(metrics={"a b": 1}), "invalid_metric"),
        (payload(metrics={"x" * 65: 1}), "invalid_metric"),
        (payload(device_id=7), "invalid_schema"),
        (payload(device_id=None), "invalid_schema"),
        (payload(seq=1.5), "invalid_schema"),
        (payload(seq="17"), "invalid_schema"),
        (payload(seq=True), "invalid_schema"),
        (payload(seq=-1), "invalid_value"),
        (payload(seq=2**63), "invalid_value"),
        (payload(ts="yesterday"), "invalid_schema"),
        (payload(ts=None), "invalid_schema"),
        (payload(ts=True), "invalid_schema"),
        (payload(ts=[NOW]), "invalid_schema"),
        (payload(ts="2026-11-25T11:06:00Z"), "ts_out_of_range"),
        (payload(ts="2026-11-01T00:00:00Z"), "ts_out_of_range"),
        (payload(ts=0), "ts_out_of_range"),
        (payload(ts=-1e300), "ts_out_of_range"),
        (payload(units=["Cel"]), "invalid_schema"),
        (payload(units={"temperature": 1}), "invalid_schema"),
        (payload(units={"temperature": "deg C"}), "invalid_schema"),
        (payload(units={"temperature": "x" * 33}), "invalid_schema"),
    ],
)
def test_a_bad_payload_is_refused_with_its_reason(body: bytes, expected: str) -> None:
    assert reason_of(DECODE, TOPIC, body) == expected


def test_the_time_window_is_inclusive_and_configurable() -> None:
    decode = make_decoder(SubscriptionConfig(), LimitsConfig(max_future_s=10, max_past_s=20))
    assert decode(TOPIC, payload(ts=NOW + 10), NOW)[0].ts == NOW + 10
    assert decode(TOPIC, payload(ts=NOW - 20), NOW)[0].ts == NOW - 20
    assert reason_of(decode, TOPIC, payload(ts=NOW + 10.5)) == "ts_out_of_range"
    assert reason_of(decode, TOPIC, payload(ts=NOW - 20.5)) == "ts_out_of_range"


def test_error_details_quote_network_text_only_truncated() -> None:
    long = "x" * 20_000
    bodies = [
        payload(metrics={long: 1}),
        payload(device_id=long),
        payload(ts=long),
        payload(units={"temperature": long}),
        payload(metrics={"t": long}),
    ]
    for body in bodies:
        with pytest.raises(DecodeError) as caught:
            DECODE(TOPIC, body, NOW)
        assert len(caught.value.detail) < 300, caught.value.reason


# --- fuzzing: whatever arrives, the decoder returns valid Readings or raises DecodeError ---

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NOW, NOW * 1000, "2026-11-25T11:00:00Z", "dev-0042", "Cel", ""]),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(list(EXAMPLE)), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def broken_readings(draw: st.DrawFn) -> bytes:
    """The example reading with fields dropped, replaced or added, sometimes in a batch."""
    body: dict[str, Any] = dict(EXAMPLE)
    for key in draw(st.lists(st.sampled_from([*EXAMPLE, "extra"]), max_size=3)):
        action = draw(st.sampled_from(["drop", "replace", "nested"]))
        if action == "drop":
            body.pop(key, None)
        elif action == "replace":
            body[key] = draw(json_values)
        else:
            body[key] = {draw(st.text(max_size=70)): draw(json_values)}
    value: Any = body if draw(st.booleans()) else [body] * draw(st.integers(0, 3))
    text = json.dumps(value, allow_nan=True)
    if draw(st.booleans()):  # break the syntax somewhere
        cut = draw(st.integers(0, len(text)))
        text = (
            text[:cut] + draw(st.sampled_from(["", "}", "]", ",", '"', "\\", "NaN"])) + text[cut:]
        )
    return text.encode()


def assert_decodes_or_refuses(body: bytes, topic: str = TOPIC) -> None:
    result = decode_or_reason(DECODE, topic, body)
    if not isinstance(result, str):
        assert_valid_readings(result, LIMITS, NOW)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300))
def test_any_bytes_decode_to_valid_readings_or_a_decode_error(body: bytes) -> None:
    assert_decodes_or_refuses(body)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(body=broken_readings())
def test_structured_but_broken_json_decodes_to_valid_readings_or_a_decode_error(
    body: bytes,
) -> None:
    assert_decodes_or_refuses(body)


@settings(max_examples=300)
@given(value=json_values)
def test_any_json_value_decodes_to_valid_readings_or_a_decode_error(value: object) -> None:
    assert_decodes_or_refuses(json.dumps(value, allow_nan=True).encode())


@given(
    metrics=st.dictionaries(
        st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.:-]{0,20}\Z"),
        st.floats(allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=LIMITS.max_metrics,
    ),
    seq=st.none() | st.integers(0, 2**63 - 1),
    offset_s=st.floats(-LIMITS.max_past_s, LIMITS.max_future_s),
)
def test_any_valid_reading_decodes_to_exactly_its_values(
    metrics: dict[str, float], seq: int | None, offset_s: float
) -> None:
    body = {"device_id": "dev-0042", "ts": NOW + offset_s, "metrics": metrics}
    if seq is not None:
        body["seq"] = seq
    [reading] = DECODE(TOPIC, json.dumps(body).encode(), NOW)
    assert reading.metrics == metrics
    assert reading.seq == seq
    assert reading.ts == NOW + offset_s
    assert_valid_readings([reading], LIMITS, NOW)


def test_tags_of_a_remembered_topic_cannot_be_changed_in_place() -> None:
    """The topic match is remembered per topic and its tags shared by its readings: changing
    them in place fails (loudly, in the step that tries), replacing them changes one reading."""
    decode = make_decoder(SubscriptionConfig(), LIMITS)
    first = decode(TOPIC, payload(), NOW)[0]
    with pytest.raises(TypeError, match=r"replace reading\.tags"):
        first.tags["site"] = "changed by a step"
    with pytest.raises(TypeError):
        first.tags.update(site="changed")
    first.tags = {**first.tags, "site": "replaced"}
    second = decode(TOPIC, payload(), NOW)[0]
    assert second.tags == {"site": "plant-1"}


def test_remembered_names_never_let_a_bad_one_through() -> None:
    """Well-formed ids, metric names and units are remembered, and forgotten past a bound: a bad
    one is refused before, while and after that memory fills up and is cleared."""
    decode = make_decoder(SubscriptionConfig(), LIMITS)
    bad = {"metrics": {"bad name": 1.0}}
    assert reason_of(decode, TOPIC, payload(**bad)) == "invalid_metric"
    for n in range(NAME_MEMORY + 10):  # past the bound: the memory is cleared once on the way
        device = f"dev-{n}"
        topic = f"sensors/plant-1/{device}/telemetry"
        metrics = {f"m{n % 50}": 1.0}
        assert decode(topic, payload(device_id=device, metrics=metrics), NOW)[0].device_id == device
    assert reason_of(decode, TOPIC, payload(**bad)) == "invalid_metric"
    assert reason_of(decode, TOPIC, payload(units={"temperature": "bad unit"})) == "invalid_schema"
    assert reason_of(decode, TOPIC, payload(device_id="dev/../x")) == "invalid_device_id"
