"""Presets: each project's documented messages parse to the expected readings (the examples and
their sources are in tests/support/preset_examples.py), including the awkward parts: nested
objects, strings, nulls, units in separate fields, events that are no telemetry."""

from __future__ import annotations

import pytest

from gateway.config import LimitsConfig
from gateway.decode import make_decoder
from gateway.errors import DecodeError
from gateway.presets import PRESETS
from gateway.subscriptions import SubscriptionConfig
from gateway.topics import derive_filter, filter_matches
from tests.support.preset_examples import EXAMPLES, Example


def subscription(preset: str) -> SubscriptionConfig:
    # flat_json fits any topic: as `gateway run --topic 'home/#' --format flat_json` makes it.
    filter_ = "home/#" if preset == "flat_json" else ""
    return SubscriptionConfig(format=preset, filter=filter_)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_a_documented_message_becomes_the_expected_reading(example: Example) -> None:
    sub = subscription(example.preset)
    assert filter_matches(sub.effective_filter, example.topic) or example.outcome != "stored"
    decoder = make_decoder(sub, LimitsConfig())
    error: DecodeError | None = None
    try:
        readings = decoder(example.topic, example.raw, example.received_at)
    except DecodeError as exc:
        error = exc
    if error is not None:
        assert example.outcome == error.reason, error.detail
        if example.detail is not None:
            assert error.detail == example.detail
        return
    if example.outcome == "dropped":
        assert readings == []
        return
    assert example.outcome == "stored"
    (reading,) = readings
    assert reading.device_id == example.device_id
    assert reading.metrics == example.metrics
    assert reading.units == example.units
    assert dict(reading.tags) == example.tags
    assert reading.ts == pytest.approx(
        example.ts if example.ts is not None else example.received_at
    )
    assert reading.seq == example.seq


def test_every_preset_has_a_documented_example() -> None:
    assert {e.preset for e in EXAMPLES} == set(PRESETS)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_a_valid_mapping_whose_filter_follows_from_its_template(name: str) -> None:
    sub = SubscriptionConfig(format=name, filter="home/#" if name == "flat_json" else "")
    assert sub.effective_mapping is not None
    if PRESETS[name].template is not None:
        assert sub.effective_filter == derive_filter(PRESETS[name].template or "")
    assert PRESETS[name].source


def test_a_field_given_with_a_preset_overrides_only_that_field() -> None:
    sub = SubscriptionConfig.model_validate(
        {
            "format": "zigbee2mqtt",
            "mapping": {"units": {"temperature": "degF"}, "strings": "tag"},
        }
    )
    mapping = sub.effective_mapping
    assert mapping is not None
    assert mapping.units == {"temperature": "degF"}
    assert mapping.strings == "tag"
    assert "last_seen" in mapping.exclude  # the preset's own, kept
    decoder = make_decoder(sub, LimitsConfig())
    (reading,) = decoder("zigbee2mqtt/x", b'{"temperature": 70, "action": "single"}', 1e9)
    assert (reading.units, dict(reading.tags)) == ({"temperature": "degF"}, {"action": "single"})


def test_a_preset_with_a_template_of_ones_own() -> None:
    sub = SubscriptionConfig(format="tasmota", template="site/{site}/tele/{device_id}/SENSOR")
    decoder = make_decoder(sub, LimitsConfig())
    (reading,) = decoder("site/a/tele/t1/SENSOR", b'{"DS18B20": {"Temperature": 20.6}}', 1e9)
    assert (reading.device_id, dict(reading.tags)) == ("t1", {"site": "a"})
