"""The simulator's payloads: deterministic, in the documented shapes, and broken as labelled."""

from __future__ import annotations

import json
import re
import statistics
from datetime import datetime
from pathlib import Path

import pytest

from gateway.config import CheckRangeStep, LimitsConfig, SubscriptionConfig
from gateway.decode import make_decoder
from gateway.errors import REJECT_REASONS, DecodeError
from gateway.manifest import (
    ManifestHeader,
    iter_devices,
    payload_digest,
    read_header,
    write_device_lines,
    write_manifest,
)
from gateway.transforms import build_transform
from simulators.faults import FaultPlan, reasons_for
from simulators.payloads import MAX_PAYLOAD_BYTES, TRAVERSAL_DEVICE_ID
from simulators.profile import builtin_profiles, load_profile
from simulators.record import DeviceLog, SeqRuns
from simulators.spec import DEFAULT_BARE_TEMPLATE, DEFAULT_TEMPLATE, RunSpec
from simulators.stream import Message, device_for, device_messages, device_topic, message_at

ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
FORMATS = ("json", "json_batch", "senml", "bare")
# A fixed device clock: byte-identical output needs the start time fixed too.
START_MS = 1_795_600_000_123


def spec_for(fmt: str = "json", **changes: object) -> RunSpec:
    template = DEFAULT_BARE_TEMPLATE if fmt == "bare" else DEFAULT_TEMPLATE
    fields: dict[str, object] = {
        "format": fmt,
        "topic_template": template,
        "start_ms": START_MS,
        "seed": 7,
        "devices": 50,
    }
    fields.update(changes)
    return RunSpec(**fields)  # type: ignore[arg-type]


def stream(spec: RunSpec, index: int, count: int) -> list[Message]:
    return list(device_messages(spec, device_for(spec, index), count))


def gateway_steps(fmt: str, template: str) -> tuple[object, object]:
    """The gateway's real decoder for `fmt` and the demo config's check_range step."""
    sub = SubscriptionConfig(template=template, format="json" if fmt == "json_batch" else fmt)
    step = CheckRangeStep(kind="check_range", metric="temperature", min=-60, max=150)
    return make_decoder(sub, LimitsConfig()), build_transform(step)


def gateway_verdict(fmt: str, message: Message, template: str = "") -> str | None:
    """What the gateway does with a message: its reject reason, or None when stored."""
    template = template or (DEFAULT_BARE_TEMPLATE if fmt == "bare" else DEFAULT_TEMPLATE)
    decode, check_range = gateway_steps(fmt, template)
    try:
        readings = decode(message.topic, message.payload, START_MS / 1000)  # type: ignore[operator]
    except DecodeError as exc:
        return exc.reason
    verdict = check_range(readings)  # type: ignore[operator]
    return verdict.rejected[0][1] if verdict.rejected else None


# --- determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_seed_gives_byte_identical_messages(fmt: str) -> None:
    spec = spec_for(fmt, faults=FaultPlan.build(fmt, True, 0.2))
    for index in (0, 7, 49):
        first = stream(spec, index, 40)
        again = stream(spec_for(fmt, faults=FaultPlan.build(fmt, True, 0.2)), index, 40)
        assert [(m.topic, m.payload, m.fault) for m in first] == [
            (m.topic, m.payload, m.fault) for m in again
        ]


def test_different_seed_gives_different_values() -> None:
    a = stream(spec_for(seed=1), 3, 10)
    b = stream(spec_for(seed=2), 3, 10)
    values_a = [json.loads(m.payload)["metrics"] for m in a]
    values_b = [json.loads(m.payload)["metrics"] for m in b]
    assert values_a != values_b
    assert [json.loads(m.payload)["seq"] for m in a] == list(range(10))


def test_a_reading_depends_only_on_seed_device_and_seq() -> None:
    """Reading 17 of device 5 is the same whether built alone or in the middle of a stream."""
    spec = spec_for()
    whole = stream(spec, 5, 30)
    alone = message_at(spec, 5, 17)
    assert [m.payload for m in alone] == [whole[17].payload]


# --- documented shapes ---------------------------------------------------------------------------


def test_json_reading_has_the_documented_shape() -> None:
    spec = spec_for()
    messages = stream(spec, 42, 5)
    for seq, message in enumerate(messages):
        obj = json.loads(message.payload)
        assert list(obj) == ["device_id", "ts", "seq", "metrics", "units"]
        assert obj["device_id"] == "dev-00042"
        assert obj["seq"] == seq
        assert ISO_MS_Z.fullmatch(obj["ts"])
        assert set(obj["metrics"]) == {"temperature", "humidity"}
        assert all(isinstance(v, float) for v in obj["metrics"].values())
        assert obj["units"] == {"temperature": "Cel", "humidity": "%RH"}
        assert message.topic == "sensors/site-01/dev-00042/telemetry"
    stamps = [json.loads(m.payload)["ts"] for m in messages]
    assert stamps == sorted(stamps), "device time runs forwards, jitter or not"


def test_json_batch_is_an_array_of_readings_in_seq_order() -> None:
    messages = stream(spec_for("json_batch", batch_size=4), 1, 10)
    batches = [json.loads(m.payload) for m in messages]
    assert [len(b) for b in batches] == [4, 4, 2]
    seqs = [r["seq"] for batch in batches for r in batch]
    assert seqs == list(range(10))
    assert all(set(r) >= {"device_id", "ts", "seq", "metrics"} for b in batches for r in b)


def test_senml_pack_follows_rfc_8428() -> None:
    (message,) = stream(spec_for("senml"), 42, 1)
    pack = json.loads(message.payload)
    assert pack[0]["bn"] == "dev-00042:"
    assert isinstance(pack[0]["bt"], float)
    assert abs(pack[0]["bt"] - START_MS / 1000) < 1.0
    assert [r["n"] for r in pack] == ["temperature", "humidity"]
    assert [r["u"] for r in pack] == ["Cel", "%RH"]
    assert all("bn" not in r and "bt" not in r for r in pack[1:])
    assert all(isinstance(r["v"], float) for r in pack)


def test_bare_value_is_a_number_on_a_topic_naming_device_and_metric() -> None:
    messages = stream(spec_for("bare"), 42, 1)
    assert [m.topic for m in messages] == [
        "sensors/site-01/dev-00042/temperature",
        "sensors/site-01/dev-00042/humidity",
    ]
    assert all(re.fullmatch(rb"-?\d+\.\d+", m.payload) for m in messages)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_valid_message_is_stored_by_the_gateway(fmt: str) -> None:
    for profile in builtin_profiles():
        spec = spec_for(fmt, profile=load_profile(profile))
        for index in range(0, 50, 7):
            for message in stream(spec, index, 3):
                assert gateway_verdict(fmt, message) is None, (profile, message.payload[:200])


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_fault_label_is_the_reason_the_gateway_gives(fmt: str) -> None:
    """Each rejecting fault goes through the gateway's own decoder and check_range step."""
    spec = spec_for(fmt, faults=FaultPlan.build(fmt, True, 0.5))
    for kind, reason in reasons_for(fmt, topic_has_device_id=True).items():
        for index in (0, 3):
            messages = message_at(spec, index, 5, kind)
            labelled = [m for m in messages if m.fault == kind]
            assert labelled, kind
            for message in labelled:
                assert message.reason == reason
                assert gateway_verdict(fmt, message) == reason, (kind, message.payload[:200])
            if reason is not None:
                assert reason in REJECT_REASONS


@pytest.mark.parametrize("fmt", ["json", "json_batch", "senml"])
def test_fault_labels_hold_without_device_id_in_the_topic(fmt: str) -> None:
    template = "plant/{site}/telemetry"
    spec = spec_for(fmt, topic_template=template)
    for kind, reason in reasons_for(fmt, topic_has_device_id=False).items():
        for message in message_at(spec, 4, 11, kind):
            assert message.topic == "plant/site-01/telemetry"
            assert gateway_verdict(fmt, message, template) == message.reason
            if message.fault == kind:
                assert message.reason == reason


def test_json_faults_are_broken_as_their_kind_says() -> None:
    spec = spec_for()

    def broken(kind: str) -> bytes:
        return message_at(spec, 42, 9, kind)[0].payload

    with pytest.raises(json.JSONDecodeError):
        json.loads(broken("malformed_json"))
    assert "metrics" not in json.loads(broken("missing_field"))
    assert isinstance(json.loads(broken("wrong_type"))["metrics"], str)
    assert json.loads(broken("out_of_range"))["metrics"] == {"temperature": 1e6}
    assert len(broken("oversized")) > MAX_PAYLOAD_BYTES
    assert json.loads(broken("oversized"))["seq"] == 9
    traversal = json.loads(broken("path_traversal"))
    assert traversal["device_id"] == TRAVERSAL_DEVICE_ID == "../../etc/passwd"
    skewed = datetime.fromisoformat(json.loads(broken("clock_skew"))["ts"])
    clean = datetime.fromisoformat(json.loads(broken("duplicate"))["ts"])
    assert (skewed - clean).total_seconds() == 2 * 86400


def test_senml_path_traversal_is_only_a_fault_with_device_id_in_the_topic() -> None:
    """The gateway names a SenML device by its base name's last segment ("passwd")."""
    assert reasons_for("senml", topic_has_device_id=True)["path_traversal"] == "device_id_mismatch"
    assert "path_traversal" not in reasons_for("senml", topic_has_device_id=False)
    assert reasons_for("json", topic_has_device_id=False)["path_traversal"] == "invalid_device_id"


def test_bare_values_have_no_clock_skew_missing_field_or_wrong_type() -> None:
    assert {"clock_skew", "missing_field", "wrong_type"}.isdisjoint(reasons_for("bare", True))
    with pytest.raises(ValueError, match="does not apply"):
        FaultPlan.build("bare", True, per_kind=[("clock_skew", 0.1)])


def test_duplicate_sends_the_same_bytes_twice_and_out_of_order_swaps_with_the_next() -> None:
    spec = spec_for(faults=FaultPlan.build("json", True, per_kind=[("duplicate", 0.1)]))
    messages = stream(spec, 0, 200)
    seqs = [json.loads(m.payload)["seq"] for m in messages]
    copies = [m for m in messages if m.fault == "duplicate"]
    assert copies
    for copy in copies:
        originals = [m for m in messages if m.payload == copy.payload]
        assert len(originals) == 2
    assert sorted(set(seqs)) == list(range(200))

    spec = spec_for(faults=FaultPlan.build("json", True, per_kind=[("out_of_order", 0.1)]))
    messages = stream(spec, 0, 200)
    seqs = [json.loads(m.payload)["seq"] for m in messages]
    assert sorted(seqs) == list(range(200)), "a swap neither loses nor repeats a reading"
    swapped = [m.seqs[0] for m in messages if m.fault == "out_of_order"]
    assert swapped
    for seq in swapped:
        assert seqs.index(seq + 1) == seqs.index(seq) - 1


def test_a_faulty_message_still_uses_its_seq() -> None:
    spec = spec_for(faults=FaultPlan.build("json", True, per_kind=[("missing_field", 0.2)]))
    messages = stream(spec, 2, 100)
    faulty = {m.seqs[0] for m in messages if m.fault == "missing_field"}
    clean = {json.loads(m.payload)["seq"] for m in messages if m.fault is None}
    assert faulty
    assert faulty.isdisjoint(clean)
    assert faulty | clean == set(range(100))


def test_fault_rate_is_spread_over_the_kinds_that_apply() -> None:
    plan = FaultPlan.build("bare", True, fault_rate=0.7)
    assert set(plan.rates_by_kind()) == set(reasons_for("bare", True))
    spec = spec_for("bare", faults=plan)
    seen = {m.fault for i in range(10) for m in stream(spec, i, 100)} - {None}
    assert seen == set(reasons_for("bare", True))


# --- device models -------------------------------------------------------------------------------


def readings(profile: str, model: str, count: int, rate_hz: float = 1 / 600) -> list[dict]:
    """Metrics of the first device of `model` in `profile`, one reading every 10 minutes."""
    spec = spec_for(profile=load_profile(profile), rate_hz=rate_hz, jitter=0.0, devices=400)
    index = next(i for i in range(400) if device_for(spec, i).model == model)
    return [json.loads(m.payload)["metrics"] for m in stream(spec, index, count)]


def test_humidity_falls_as_temperature_rises() -> None:
    rows = readings("smart_building", "room_climate", 144)  # a day
    temps = [r["temperature"] for r in rows]
    hums = [r["humidity"] for r in rows]
    assert max(temps) - min(temps) > 1.5, "a daily cycle"
    assert statistics.correlation(temps, hums) < -0.5


def test_battery_drains_and_door_is_open_or_closed() -> None:
    rows = readings("smart_building", "door_contact", 300)
    battery = [r["battery"] for r in rows]
    assert battery == sorted(battery, reverse=True)
    assert battery[0] > battery[-1]
    assert {r["door"] for r in rows} == {0, 1}


def test_vibration_has_bursts() -> None:
    rows = readings("factory_floor", "machine", 2000)
    vibration = [r["vibration"] for r in rows]
    assert max(vibration) > 4 * statistics.median(vibration)


def test_gps_track_moves_at_a_plausible_speed() -> None:
    rows = readings("cold_chain", "reefer_truck", 50, rate_hz=1 / 30)
    assert all(0 <= r["speed"] < 60 for r in rows)
    assert len({(r["lat"], r["lon"]) for r in rows}) == 50
    assert all(-90 <= r["lat"] <= 90 and -180 <= r["lon"] <= 180 for r in rows)


@pytest.mark.parametrize("profile", ["smart_building", "cold_chain", "factory_floor"])
def test_shipped_profiles_mix_their_models(profile: str) -> None:
    loaded = load_profile(profile)
    spec = spec_for(profile=loaded, sites=loaded.sites)
    models = {device_for(spec, i).model for i in range(200)}
    assert models == {m.name for m in loaded.models}
    assert len({device_for(spec, i).site for i in range(200)}) == len(loaded.sites)


def test_a_profile_file_with_an_unknown_sensor_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nname = "x"\nsensors = ["thermometer"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="unknown sensors"):
        load_profile(str(bad))


# --- manifest -------------------------------------------------------------------------------------


def test_seq_runs_merge_out_of_order_and_repeated_seqs() -> None:
    runs = SeqRuns()
    for seq in (0, 1, 3, 2, 2, 5, 7, 6, 9):
        runs.add(seq)
    assert runs.runs == [[0, 3], [5, 7], [9, 9]]
    assert runs.count() == 8


def test_manifest_round_trips_runs_and_fault_digests(tmp_path: Path) -> None:
    spec = spec_for(faults=FaultPlan.build("json", True, 0.3))
    logs = []
    for index in range(3):
        device = device_for(spec, index)
        log = DeviceLog(device, device_topic(spec, device))
        for message in device_messages(spec, device, 20):
            log.sent(message)
        logs.append(log)
    part = tmp_path / "m.part-0"
    write_device_lines(part, (log.to_record() for log in logs))
    header = ManifestHeader(
        seed=spec.seed,
        format="json",
        qos=1,
        topic_template=DEFAULT_TEMPLATE,
        device_id_pattern="dev-{n:05d}",
        profile="default",
        devices=3,
        started_at="2026-11-25T11:00:00.000Z",
        finished_at="2026-11-25T11:00:01.000Z",
        messages_sent=sum(log.messages for log in logs),
        readings_sent=60,
    )
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, header, parts=[part])
    assert read_header(manifest).keyed_by == "seq"
    records = list(iter_devices(manifest))
    assert [r.device_id for r in records] == ["dev-00000", "dev-00001", "dev-00002"]
    assert all(r.seq == ((0, 19),) for r in records)
    faults = [f for r in records for f in r.faults]
    assert faults
    sent = {
        payload_digest(m.payload): m
        for i in range(3)
        for m in device_messages(spec, device_for(spec, i), 20)
        if m.fault
    }
    for fault in faults:
        assert sent[fault.digest].fault == fault.kind
        assert len(sent[fault.digest].payload) == fault.bytes
