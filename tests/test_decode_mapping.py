"""The mapping format: any JSON object (or bare value) read as a MappingConfig says; what it
cannot read is dead-lettered with a reason from the fixed set and a detail naming the payload's
own path and value, never a validator's words."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import LimitsConfig
from gateway.decode import SubscriptionDecoder, make_decoder
from gateway.errors import REJECT_REASONS, DecodeError
from gateway.model import Reading
from gateway.subscriptions import SubscriptionConfig

NOW = 1_795_604_460.0  # 2026-11-25T11:01:00Z
TOPIC = "plant/line-1/dev-7/telemetry"
TEMPLATE = "plant/{line}/{device_id}/telemetry"


def decoder(template: str = TEMPLATE, **mapping: Any) -> SubscriptionDecoder:
    sub = SubscriptionConfig(template=template, format="mapping", mapping=mapping)
    decoder = make_decoder(sub, LimitsConfig())
    assert isinstance(decoder, SubscriptionDecoder)
    return decoder


def read(decoder: SubscriptionDecoder, payload: Any, topic: str = TOPIC) -> Reading:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    readings = decoder(topic, raw, NOW)
    assert len(readings) == 1
    return readings[0]


def rejected(decoder: SubscriptionDecoder, payload: Any, topic: str = TOPIC) -> DecodeError:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(DecodeError) as caught:
        decoder(topic, raw, NOW)
    error = caught.value
    assert error.reason in REJECT_REASONS
    for validator_word in ("Expected `", "Object missing", "ValidationError", "$."):
        assert validator_word not in error.detail
    return error


def test_nested_objects_are_flattened_with_dots_and_every_number_is_a_float() -> None:
    reading = read(decoder(), {"AM2301": {"Temperature": 24.6, "Humidity": 58}, "Vcc": 3}, TOPIC)
    assert reading.metrics == {"AM2301.Temperature": 24.6, "AM2301.Humidity": 58.0, "Vcc": 3.0}
    assert all(type(v) is float for v in reading.metrics.values())
    assert (reading.device_id, reading.ts, reading.seq) == ("dev-7", NOW, None)
    assert reading.tags == {"line": "line-1"}


def test_arrays_are_flattened_by_index() -> None:
    reading = read(decoder(), {"Total": [2.8, 0.25], "Voltage": 235})
    assert reading.metrics == {"Total.0": 2.8, "Total.1": 0.25, "Voltage": 235.0}


def test_include_and_exclude_globs_pick_metrics_and_an_excluded_object_takes_all_under_it() -> None:
    mapping = decoder(include=["sensor.*", "rssi"], exclude=["sensor.raw*", "sensor.debug"])
    payload = {
        "sensor": {"t": 1, "h": 2, "raw_t": 3, "debug": {"x": 4}},
        "rssi": -60,
        "uptime": 99,
    }
    assert read(mapping, payload).metrics == {"sensor.t": 1.0, "sensor.h": 2.0, "rssi": -60.0}


def test_renames_then_units_by_exact_name_or_glob() -> None:
    mapping = decoder(
        rename={"BME280.Temperature": "temperature", "BME280.Pressure": "pressure"},
        units={"temperature": "Cel", "*ure": "hPa", "BME280.*": "x"},
    )
    reading = read(mapping, {"BME280": {"Temperature": 21.7, "Pressure": 988.6, "Humidity": 66}})
    assert reading.metrics == {"temperature": 21.7, "pressure": 988.6, "BME280.Humidity": 66.0}
    assert reading.units == {"temperature": "Cel", "pressure": "hPa", "BME280.Humidity": "x"}


def test_units_in_a_separate_field_are_read_and_translated_and_that_field_is_no_metric() -> None:
    mapping = decoder(
        unit_fields={"*Temperature": "TempUnit", "*Pressure": "PressureUnit"},
        unit_names={"C": "Cel", "F": "degF"},
    )
    payload = {"BME280": {"Temperature": 70.1, "Pressure": 988.6}, "TempUnit": "F"}
    payload["PressureUnit"] = "hPa"
    reading = read(mapping, payload)
    assert reading.metrics == {"BME280.Temperature": 70.1, "BME280.Pressure": 988.6}
    assert reading.units == {"BME280.Temperature": "degF", "BME280.Pressure": "hPa"}


def test_a_unit_field_missing_or_not_a_unit_name_gives_no_unit() -> None:
    mapping = decoder(unit_fields={"t": "unit"})
    assert read(mapping, {"t": 1}).units == {}
    assert read(mapping, {"t": 1, "unit": "deg C"}).units == {}
    assert read(mapping, {"t": 1, "unit": 5}).units == {}


def test_static_tags_and_payload_fields_kept_as_tags() -> None:
    mapping = decoder(tags={"building": "north"}, tag_fields={"model": "device.model", "fw": "fw"})
    reading = read(mapping, {"t": 1, "device": {"model": "WSDCGQ11LM"}, "fw": 12})
    assert reading.metrics == {"t": 1.0}
    assert reading.tags == {
        "line": "line-1",
        "building": "north",
        "model": "WSDCGQ11LM",
        "fw": "12",
    }


def test_coercion_as_stated_numeric_strings_booleans_enums() -> None:
    payload = {"a": "21.5", "b": True, "c": False, "d": "ON", "e": "closed", "f": " 7 "}
    reading = read(decoder(), payload)
    assert reading.metrics == {"a": 21.5, "b": 1.0, "c": 0.0, "d": 1.0, "e": 0.0, "f": 7.0}


def test_coercion_can_be_turned_off_and_the_enum_table_replaced() -> None:
    mapping = decoder(numeric_strings=False, booleans=False, enums={"LOCK": 1, "UNLOCK": 0})
    reading = read(mapping, {"a": "21.5", "b": True, "d": "ON", "l": "UNLOCK", "n": 2})
    assert reading.metrics == {"l": 0.0, "n": 2.0}


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1_000", "0x10", "", "21.5 C"])
def test_strings_that_float_would_read_but_are_no_plain_number_are_left_out(text: str) -> None:
    assert read(decoder(), {"x": text, "t": 1}).metrics == {"t": 1.0}


def test_other_strings_and_nulls_are_left_out_counted_and_noted() -> None:
    mapping = decoder()
    assert mapping.mapping is not None
    mapping.mapping.notes = notes = []
    reading = read(mapping, {"t": 1, "action": "single", "battery": None})
    assert reading.metrics == {"t": 1.0}
    assert mapping.mapping.left_out == 2
    assert notes == [
        'action = "single": a string that is not a number or a listed enum',
        "battery = null: no value",
    ]


def test_other_strings_are_kept_as_tags_when_configured() -> None:
    reading = read(decoder(strings="tag"), {"t": 1, "action": "single", "x": "y" * 300})
    assert reading.tags == {"line": "line-1", "action": "single"}


def test_a_key_that_is_no_metric_name_is_left_out_with_a_note_saying_to_rename_it() -> None:
    mapping = decoder()
    assert mapping.mapping is not None
    mapping.mapping.notes = notes = []
    assert read(mapping, {"Air Quality": 3, "t": 1}).metrics == {"t": 1.0}
    assert notes == ["Air Quality = 3: 'Air Quality' is not a metric name (rename it)"]
    renamed = decoder(rename={"Air Quality": "air_quality"})
    assert read(renamed, {"Air Quality": 3}).metrics == {"air_quality": 3.0}


@pytest.mark.parametrize(
    ("source", "topic", "payload", "device"),
    [
        ("topic", TOPIC, {}, "dev-7"),
        ("topic:line", TOPIC, {}, "line-1"),
        ("topic:0", TOPIC, {}, "plant"),
        ("topic:-2", TOPIC, {}, "dev-7"),
        ("payload:meta.id", TOPIC, {"meta": {"id": "abc-1"}}, "abc-1"),
        ("payload:serial", TOPIC, {"serial": 4711}, "4711"),
        ("payload:meta.id|topic", TOPIC, {}, "dev-7"),
    ],
)
def test_the_device_id_comes_from_the_topic_or_a_payload_path(
    source: str, topic: str, payload: dict[str, Any], device: str
) -> None:
    assert read(decoder(device_id=source), {**payload, "t": 1}, topic).device_id == device


def test_without_a_device_id_field_in_the_template_topic_means_its_last_level() -> None:
    mapping = decoder(template="home/#")
    assert read(mapping, {"t": 1}, "home/kitchen/thermo-1").device_id == "thermo-1"


def test_a_missing_or_unusable_payload_device_id_is_named() -> None:
    mapping = decoder(device_id="payload:meta.id")
    error = rejected(mapping, {"t": 1})
    assert (error.reason, error.detail) == (
        "missing_field",
        "no device id: nothing at payload:meta.id",
    )
    error = rejected(mapping, {"t": 1, "meta": {"id": [1]}})
    assert (error.reason, error.detail) == ("invalid_device_id", "meta.id = [1]: not a device id")
    error = rejected(mapping, {"t": 1, "meta": {"id": "../../etc"}})
    assert error.reason == "invalid_device_id"


@pytest.mark.parametrize(
    ("value", "epoch"),
    [
        ("2026-11-25T11:00:00.123Z", 1795604400.123),
        ("2026-11-25T12:00:00+01:00", 1795604400.0),
        ("2026-11-25T11:00:00", 1795604400.0),
        (1795604400, 1795604400.0),
        (1795604400123, 1795604400.123),
        (1795604400.5, 1795604400.5),
    ],
)
def test_the_time_comes_from_a_payload_path_in_iso_8601_or_epoch_seconds_or_ms(
    value: Any, epoch: float
) -> None:
    mapping = decoder(ts="payload:Time")
    (reading,) = mapping(TOPIC, json.dumps({"Time": value, "t": 1}).encode(), epoch)
    assert reading.ts == pytest.approx(epoch)
    assert reading.metrics == {"t": 1.0}  # the time field is no metric


def test_a_canonical_time_is_kept_as_written() -> None:
    mapping = decoder(ts="payload:ts")
    reading = read(mapping, {"ts": "2026-11-25T11:00:00.123Z", "t": 1})
    assert reading.ts_text == "2026-11-25T11:00:00.123Z"


def test_a_missing_time_falls_back_to_receipt_only_when_the_mapping_says_so() -> None:
    assert read(decoder(ts="payload:ts|received"), {"t": 1}).ts == NOW
    error = rejected(decoder(ts="payload:ts|payload:time"), {"t": 1})
    assert (error.reason, error.detail) == (
        "missing_field",
        "no time: nothing at payload:ts or payload:time",
    )


@pytest.mark.parametrize("value", ["yesterday", "2018.02.15 01:00:50", True, [1]])
def test_a_time_that_is_no_time_is_an_invalid_value_naming_path_and_value(value: Any) -> None:
    error = rejected(decoder(ts="payload:meta.time"), {"meta": {"time": value}, "t": 1})
    assert error.reason == "invalid_value"
    assert error.detail.startswith(f"meta.time = {json.dumps(value)[:20]}")
    assert "not a time (ISO 8601, or epoch seconds or milliseconds)" in error.detail


def test_a_time_far_from_receipt_is_out_of_range() -> None:
    assert rejected(decoder(ts="payload:ts"), {"ts": NOW + 86400, "t": 1}).reason == (
        "ts_out_of_range"
    )


@pytest.mark.parametrize(("value", "seq"), [(17, 17), (17.0, 17), ("17", 17)])
def test_seq_is_a_whole_number_from_a_payload_path(value: Any, seq: int) -> None:
    assert read(decoder(seq="payload:n"), {"n": value, "t": 1}).seq == seq


def test_seq_missing_is_none_and_seq_wrong_is_named() -> None:
    mapping = decoder(seq="payload:up.f_cnt")
    assert read(mapping, {"t": 1}).seq is None
    error = rejected(mapping, {"t": 1, "up": {"f_cnt": 1.5}})
    assert (error.reason, error.detail) == ("invalid_value", "up.f_cnt = 1.5: not a whole number")
    assert rejected(mapping, {"t": 1, "up": {"f_cnt": -1}}).reason == "invalid_value"


def test_a_root_path_picks_the_object_of_metrics_and_its_absence_is_named() -> None:
    mapping = decoder(root="uplink.decoded", ts="payload:received_at")
    payload = {"received_at": NOW, "uplink": {"decoded": {"t": 1.0}, "rssi": -30}}
    assert read(mapping, payload).metrics == {"t": 1.0}
    error = rejected(mapping, {"received_at": NOW, "uplink": {}})
    assert (error.reason, error.detail) == ("missing_field", "the payload has no uplink.decoded")
    error = rejected(mapping, {"uplink": {"decoded": "AQID"}})
    assert (error.reason, error.detail) == (
        "invalid_schema",
        'uplink.decoded = "AQID": not a JSON object',
    )


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b"[1, 2]", "invalid_schema", "the payload is a JSON array, not a JSON object"),
        (b"21.5", "invalid_schema", "the payload is a number, not a JSON object"),
        (b'{"t": 1', "invalid_json", "not valid JSON: it ends in the middle"),
        (b"{t: 1}", "invalid_json", "not valid JSON at byte 1"),
        (b'{"t": NaN}', "invalid_value", "not a finite number (NaN or Infinity)"),
        (b"\xff\xfe", "invalid_json", "not valid JSON at byte 0"),
    ],
)
def test_a_payload_that_is_no_json_object_is_named_in_plain_words(
    payload: bytes, reason: str, detail: str
) -> None:
    error = rejected(decoder(), payload)
    assert (error.reason, error.detail) == (reason, detail)


def test_nothing_to_store_names_what_was_left_out() -> None:
    error = rejected(decoder(), {"action": "single", "linkquality": None})
    assert error.reason == "unsupported_value"
    assert error.detail == (
        'no metrics: action = "single": a string that is not a number or a listed enum; '
        "linkquality = null: no value"
    )


def test_nothing_number_like_at_all_is_a_missing_field() -> None:
    error = rejected(decoder(exclude=["Time"]), {"Time": "2019-01-01T00:00:00"})
    assert (error.reason, error.detail) == ("missing_field", "no metrics: nothing number-like")
    assert rejected(decoder(), {}).reason == "missing_field"


def test_with_no_metrics_drop_such_a_message_gives_no_reading() -> None:
    mapping = decoder(no_metrics="drop")
    assert mapping(TOPIC, b'{"action": "single"}', NOW) == []


def test_a_number_beyond_a_float_is_named() -> None:
    error = rejected(decoder(), b'{"t": 1' + b"0" * 400 + b"}")
    assert error.reason == "invalid_value"


def test_a_metric_prefix_from_the_topic_names_every_metric() -> None:
    mapping = decoder(template="{device_id}/status/+", metric_prefix="topic:-1")
    reading = read(mapping, {"apower": 5, "temperature": {"tC": 41.7}}, "shelly-1/status/switch:0")
    assert reading.metrics == {"switch:0.apower": 5.0, "switch:0.temperature.tC": 41.7}


@pytest.mark.parametrize(
    ("payload", "value"),
    [(b"21.5", 21.5), (b"21.5\n", 21.5), (b"on", 1.0), (b'"off"', 0.0), (b"true", 1.0)],
)
def test_shape_value_reads_the_whole_payload_as_one_value(payload: bytes, value: float) -> None:
    mapping = decoder(template="ha/{domain}/{device_id}/state", shape="value", value_name="state")
    reading = read(mapping, payload, "ha/sensor/kitchen/state")
    assert reading.metrics == {"state": value}
    assert (reading.device_id, reading.tags) == ("kitchen", {"domain": "sensor"})


def test_shape_value_names_its_metric_from_the_topic_and_names_what_it_cannot_read() -> None:
    mapping = decoder(template="d/{device_id}/{metric}", shape="value", value_name="topic:metric")
    assert read(mapping, b"3", "d/x/rpm").metrics == {"rpm": 3.0}
    error = rejected(mapping, b"unavailable", "d/x/rpm")
    assert (error.reason, error.detail) == (
        "unsupported_value",
        'rpm = "unavailable": a string that is not a number or a listed enum',
    )
    assert rejected(mapping, b'{"a": 1}', "d/x/rpm").reason == "invalid_schema"
    assert rejected(mapping, b"\xff", "d/x/rpm").reason == "invalid_value"


def test_a_plan_is_made_once_per_key_set() -> None:
    mapping = decoder()
    for n in range(50):
        read(mapping, {"a": n, "b": {"c": n}})
    read(mapping, {"b": {"c": 1}, "a": 2})  # another order: another key set
    assert mapping.mapping is not None
    roots = mapping.mapping._nodes
    assert len(roots[""].plans) == 2


@given(st.binary(max_size=200))
def test_any_bytes_give_readings_or_a_decode_error(payload: bytes) -> None:
    mapping = decoder(ts="payload:ts|received", seq="payload:seq", tag_fields={"m": "m"})
    readings: list[Reading] = []
    reason = None
    try:
        readings = mapping(TOPIC, payload, time.time())
    except DecodeError as exc:
        reason = exc.reason
    assert reason is None or reason in REJECT_REASONS
    assert all(type(v) is float for r in readings for v in r.metrics.values())


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_any_json_object_gives_float_metrics_or_a_decode_error(payload: dict[str, Any]) -> None:
    mapping = decoder(strings="tag")
    readings: list[Reading] = []
    reason = None
    try:
        readings = mapping(TOPIC, json.dumps(payload).encode(), NOW)
    except DecodeError as exc:
        reason = exc.reason
    assert reason is None or reason in REJECT_REASONS
    for reading in readings:
        assert reading.metrics
        assert all(type(v) is float for v in reading.metrics.values())
