"""gateway-sim --format <preset>: each preset's shape, deterministic, read by the gateway's own
preset into exactly the metrics the manifest records, and every fault kind that applies
dead-lettered with the reason the manifest gives it."""

from __future__ import annotations

import json

import pytest

from gateway.config import CheckRangeStep, LimitsConfig
from gateway.decode import make_decoder
from gateway.errors import REJECT_REASONS, DecodeError
from gateway.manifest import FORMATS
from gateway.presets import PRESETS
from gateway.subscriptions import SubscriptionConfig
from gateway.topics import filter_matches
from gateway.transforms import build_transform
from simulators.cli import build_parser, spec_from_args
from simulators.faults import FaultPlan, reasons_for
from simulators.preset_payloads import PRESET_FORMATS, PRESET_TEMPLATES
from simulators.spec import RunSpec, default_template
from simulators.stream import Message, device_for, device_messages, manifest_metrics, message_at

START_MS = 1_795_604_400_123
RECEIVED = START_MS / 1000 + 60


def spec_for(fmt: str, **changes: object) -> RunSpec:
    fields: dict[str, object] = {
        "format": fmt,
        "topic_template": default_template(fmt),
        "start_ms": START_MS,
        "seed": 5,
        "devices": 40,
        "profile": __import__("simulators.profile", fromlist=["load_profile"]).load_profile(
            "factory_floor"
        ),
    }
    fields.update(changes)
    return RunSpec(**fields)  # type: ignore[arg-type]


def verdict(fmt: str, messages: list[Message]) -> tuple[str, int]:
    """What the gateway's preset (and the check_range step of the tests) makes of messages:
    ("stored", metric values) or ("dropped", 0) or (reason, 0)."""
    decoder = make_decoder(SubscriptionConfig(format=fmt), LimitsConfig())
    step = build_transform(
        CheckRangeStep(kind="check_range", metric="temperature", min=-60, max=150)
    )
    stored = 0
    for message in messages:
        try:
            readings = decoder(message.topic, message.payload, RECEIVED)
        except DecodeError as exc:
            return exc.reason, 0
        result = step(readings)
        if result.rejected:  # type: ignore[union-attr]
            return result.rejected[0][1], 0  # type: ignore[union-attr]
        stored += sum(len(r.metrics) for r in result.kept)  # type: ignore[union-attr]
    return ("stored", stored) if stored else ("dropped", 0)


def test_every_preset_has_a_simulated_shape_and_the_manifest_knows_it() -> None:
    assert set(PRESET_FORMATS) == set(PRESETS)
    assert set(PRESET_FORMATS) <= set(FORMATS)
    for fmt in PRESET_FORMATS:
        reasons = reasons_for(fmt, topic_has_device_id=True)
        assert {r for r in reasons.values() if r is not None} <= set(REJECT_REASONS)


@pytest.mark.parametrize("fmt", PRESET_FORMATS)
def test_the_simulator_publishes_on_the_topics_the_preset_subscribes_to(fmt: str) -> None:
    topic_filter = SubscriptionConfig(format=fmt).effective_filter
    for message in stream(spec_for(fmt, faults=FaultPlan.build(fmt, True, 0.5)), 3, 20):
        assert filter_matches(topic_filter, message.topic), (topic_filter, message.topic)


def stream(spec: RunSpec, index: int, count: int) -> list[Message]:
    return list(device_messages(spec, device_for(spec, index), count))


@pytest.mark.parametrize("fmt", PRESET_FORMATS)
def test_same_seed_gives_byte_identical_preset_messages(fmt: str) -> None:
    plan = FaultPlan.build(fmt, True, 0.3)
    first = stream(spec_for(fmt, faults=plan), 7, 30)
    again = stream(spec_for(fmt, faults=FaultPlan.build(fmt, True, 0.3)), 7, 30)
    assert [(m.topic, m.payload, m.fault) for m in first] == [
        (m.topic, m.payload, m.fault) for m in again
    ]


@pytest.mark.parametrize("fmt", PRESET_FORMATS)
def test_every_valid_reading_is_stored_as_the_metrics_the_manifest_lists(fmt: str) -> None:
    spec = spec_for(fmt)
    for index in range(spec.devices):
        expected = manifest_metrics(spec, device_for(spec, index))
        for seq in (0, 1, 17):
            assert verdict(fmt, message_at(spec, index, seq)) == ("stored", len(expected))


@pytest.mark.parametrize("fmt", PRESET_FORMATS)
def test_every_fault_label_is_the_reason_the_gateway_gives(fmt: str) -> None:
    spec = spec_for(fmt)
    for kind, reason in reasons_for(fmt, topic_has_device_id=True).items():
        for index in range(0, spec.devices, 7):
            got = verdict(fmt, message_at(spec, index, 4, kind))
            assert got[0] == (reason or "stored"), (kind, index)


def test_the_shapes_carry_their_awkward_parts() -> None:
    z2m = json.loads(message_at(spec_for("zigbee2mqtt"), 0, 1)[0].payload)
    assert z2m["battery_low"] is None
    assert z2m["update"]["state"] == "idle"
    assert isinstance(z2m["last_seen"], str)
    tasmota = json.loads(message_at(spec_for("tasmota"), 0, 1)[0].payload)
    assert tasmota["TempUnit"] == "C"
    assert isinstance(tasmota["BME280"], dict)
    assert not tasmota["Time"].endswith("Z")  # local time, no offset
    ttn = spec_for("ttn_v3")
    first, second = (json.loads(message_at(ttn, 0, seq)[0].payload) for seq in (0, 1))
    assert "f_cnt" not in first["uplink_message"]  # 0 is omitted, as The Things Stack does
    assert second["uplink_message"]["f_cnt"] == 1
    status = spec_for("shelly_status")
    topics = [m.topic for m in message_at(status, 0, 1)]
    assert len(topics) > 1
    assert all(t.startswith("dev-00000/status/") and ":" in t for t in topics)
    assert message_at(spec_for("ha_statestream"), 0, 1)[0].payload.replace(b".", b"").isdigit()


@pytest.mark.parametrize("fmt", PRESET_FORMATS)
def test_gateway_sim_takes_each_preset_with_its_default_topic(fmt: str) -> None:
    args = build_parser().parse_args(["--format", fmt, "--count", "1", "--fault-rate", "0.1"])
    spec = spec_from_args(args)
    assert spec.topic_template == PRESET_TEMPLATES[fmt]
    assert spec.faults
