"""Payload makers for the gateway's presets: what zigbee2mqtt, Tasmota, Shelly Gen2+, Home
Assistant Statestream and The Things Stack publish, valid and deliberately broken.

The shapes follow each project's documentation (the same sources as the gateway's presets and
tests/support/preset_examples.py), awkward parts included: nested objects, strings that are no
metric, nulls, units in separate fields, fields the gateway must skip. `stored_metrics` says
which metric names the gateway's preset makes of a device's messages, for the manifest (the audit
compares the number of values stored per device with it). Pure functions: the same reading
always gives the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from gateway.presets import PRESETS
from simulators.devices import Device
from simulators.payloads import CLOCK_SKEW_MS, OUT_OF_RANGE_VALUE, OVERSIZED_BYTES, format_ts

Values = Mapping[str, float]
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode

PRESET_FORMATS: tuple[str, ...] = tuple(PRESETS)
# The topic each preset's messages arrive on, with the simulator's fields ({metric} is the
# Shelly component of a status topic).
PRESET_TEMPLATES = {
    "flat_json": "sensors/{site}/{device_id}/telemetry",
    "zigbee2mqtt": "zigbee2mqtt/{device_id}",
    "tasmota": "tele/{device_id}/SENSOR",
    "shelly": "{device_id}/events/rpc",
    "shelly_status": "{device_id}/status/{metric}",
    "ha_statestream": "homeassistant/sensor/{device_id}/state",
    "ttn_v3": "v3/{site}@ttn/devices/{device_id}/up",
}
# What each fault kind becomes in each shape, and the reason the gateway gives it; kinds a
# preset cannot show are left out (z2m, Shelly and Home Assistant drop a message with nothing
# to store instead of rejecting it; only some shapes carry a time; the check_range step of the
# tests watches a metric named `temperature`).
_REASONS = {
    "malformed_json": "invalid_json",
    "missing_field": "missing_field",
    "wrong_type": "unsupported_value",
    "out_of_range": "out_of_range",
    "clock_skew": "ts_out_of_range",
    "oversized": "payload_too_large",
    "path_traversal": "invalid_device_id",
}


def _kinds(*kinds: str) -> dict[str, str]:
    return {kind: _REASONS[kind] for kind in kinds}


PRESET_REASONS: dict[str, dict[str, str]] = {
    "flat_json": dict(_REASONS),
    "zigbee2mqtt": _kinds("malformed_json", "out_of_range", "oversized", "path_traversal"),
    "tasmota": _kinds(
        "malformed_json", "missing_field", "wrong_type", "oversized", "path_traversal"
    ),
    "shelly": _kinds("malformed_json", "clock_skew", "oversized", "path_traversal"),
    "shelly_status": _kinds("malformed_json", "oversized", "path_traversal"),
    "ha_statestream": _kinds("oversized", "path_traversal"),
    "ttn_v3": dict(_REASONS),
}
OUT_OF_RANGE_METRIC = "temperature"
NOT_A_NUMBER = "n/a"

# Shelly components for the simulator's sensors; the others become virtual number components.
_SHELLY = {
    "temperature": ("temperature:0", ("tC", "tF")),
    "humidity": ("humidity:0", ("rh",)),
    "battery": ("devicepower:0", ("battery.V", "battery.percent", "external.present")),
    "door": ("input:0", ("state",)),
}
_TASMOTA_CLIMATE = {"temperature": "Temperature", "humidity": "Humidity", "pressure": "Pressure"}


def _shelly_components(device: Device) -> list[tuple[str, str]]:
    """(metric, component) for each of the device's metrics, in its order."""
    found, number = [], 200
    for metric in device.metrics:
        if metric in _SHELLY:
            found.append((metric, _SHELLY[metric][0]))
        else:
            found.append((metric, f"number:{number}"))
            number += 1
    return found


def stored_metrics(fmt: str, device: Device) -> tuple[str, ...]:
    """The metric names the gateway's preset stores for each reading of `device`."""
    if fmt in ("flat_json", "ttn_v3"):
        return device.metrics
    if fmt == "zigbee2mqtt":
        return (*("contact" if m == "door" else m for m in device.metrics), "linkquality")
    if fmt == "tasmota":
        return tuple(_tasmota_name(m) for m in device.metrics)
    if fmt in ("shelly", "shelly_status"):
        names: list[str] = []
        for metric, component in _shelly_components(device):
            fields = _SHELLY[metric][1] if metric in _SHELLY else ("value",)
            names.extend(f"{component}.{field}" for field in fields)
        return tuple(names)
    if fmt == "ha_statestream":
        return ("state",)
    raise ValueError(f"{fmt!r} is not a preset format")


def shelly_status_components(device: Device) -> list[str]:
    """The status topics' last level, one per message of a reading (shelly_status)."""
    return [component for _, component in _shelly_components(device)]


def _tasmota_name(metric: str) -> str:
    if metric in _TASMOTA_CLIMATE:
        return f"BME280.{_TASMOTA_CLIMATE[metric]}"
    if metric == "door":
        return "Switch1"
    return f"ANALOG.{metric.capitalize()}"


def _local_time(ts_ms: int) -> str:
    # Tasmota's Time: local time without an offset (the simulated devices run on UTC).
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms // 1000))


def _objects(
    fmt: str, device: Device, seq: int, ts_ms: int, values: Values
) -> list[tuple[str, object]]:
    """(component or "", payload object) of each message of one valid reading."""
    d = device
    if fmt == "flat_json":
        return [("", {"ts": format_ts(ts_ms), **values})]
    if fmt == "zigbee2mqtt":
        obj: dict[str, object] = {}
        for metric, value in values.items():
            if metric == "door":
                obj["contact"] = not value  # zigbee2mqtt: contact true = closed
            else:
                obj[metric] = value
        obj["linkquality"] = 40 + (d.index * 7 + seq) % 200
        obj["last_seen"] = format_ts(ts_ms)
        obj["update"] = {"state": "idle", "installed_version": 23, "latest_version": 23}
        obj["battery_low"] = None
        return [("", obj)]
    if fmt == "tasmota":
        sensor: dict[str, object] = {}
        analog: dict[str, object] = {}
        obj = {"Time": _local_time(ts_ms)}
        for metric, value in values.items():
            if isinstance(value, str):  # a broken reading's value: sent as it is
                shown: object = value
            elif metric == "pressure":
                shown = round(value / 100, 2)  # Tasmota sends hPa; the simulated sensor, Pa
            elif metric == "door":
                shown = "ON" if value else "OFF"
            else:
                shown = value
            if metric in _TASMOTA_CLIMATE:
                sensor[_TASMOTA_CLIMATE[metric]] = shown
            elif metric == "door":
                obj["Switch1"] = shown
            else:
                analog[metric.capitalize()] = shown
        if sensor:
            obj["BME280"] = sensor
        if analog:
            obj["ANALOG"] = analog
        if "temperature" in values:
            obj["TempUnit"] = "C"
        if "pressure" in values:
            obj["PressureUnit"] = "hPa"
        return [("", obj)]
    if fmt in ("shelly", "shelly_status"):
        components = {c: _shelly_status(m, values[m]) for m, c in _shelly_components(d)}
        if fmt == "shelly_status":
            return list(components.items())
        params: dict[str, object] = {"ts": ts_ms / 1000, **components}
        return [
            (
                "",
                {
                    "src": d.device_id,
                    "dst": f"{d.device_id}/events",
                    "method": "NotifyStatus",
                    "params": params,
                },
            )
        ]
    if fmt == "ttn_v3":
        return [("", _uplink(d, seq, ts_ms, dict(values)))]
    raise ValueError(f"{fmt!r} is not an object-shaped preset")


def _shelly_status(metric: str, value: float) -> dict[str, object]:
    if metric == "temperature":
        return {"id": 0, "tC": value, "tF": round(value * 9 / 5 + 32, 2)}
    if metric == "humidity":
        return {"id": 0, "rh": value}
    if metric == "battery":
        return {
            "id": 0,
            "battery": {"V": round(3.0 + value / 100, 3), "percent": value},
            "external": {"present": False},
        }
    if metric == "door":
        return {"id": 0, "state": bool(value)}
    return {"id": 0, "value": value, "source": "sim"}


def _uplink(device: Device, seq: int, ts_ms: int, decoded: dict[str, object]) -> dict[str, object]:
    """A The Things Stack v3 uplink; f_cnt 0 is omitted, as The Things Stack omits empty
    fields."""
    uplink: dict[str, object] = {
        "session_key_id": "AXA50tHUGUucuzS/bCGMNw==",
        "f_port": 1,
        "frm_payload": "gkHe",
        "decoded_payload": decoded,
        "rx_metadata": [
            {
                "gateway_ids": {"gateway_id": "gtw1", "eui": "9C5C8E00001A05C4"},
                "time": format_ts(ts_ms),
                "rssi": -60 - (device.index + seq) % 40,
                "snr": 7.5,
            }
        ],
        "settings": {"data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}}},
        "received_at": format_ts(ts_ms),
    }
    if seq:
        uplink = {"f_cnt": seq, **uplink}
    return {
        "end_device_ids": {
            "device_id": device.device_id,
            "application_ids": {"application_id": device.site},
            "dev_eui": f"{device.key & 0xFFFFFFFFFFFFFFFF:016X}",
        },
        "received_at": format_ts(ts_ms),
        "uplink_message": uplink,
    }


def preset_messages(
    fmt: str, device: Device, seq: int, ts_ms: int, values: Values
) -> list[tuple[str, bytes]]:
    """(component or "", payload) of each message of one valid reading."""
    if fmt == "ha_statestream":
        metric = device.metrics[0]
        value = values[metric]
        text = ("on" if value else "off") if metric == "door" else repr(float(value))
        return [("", text.encode())]
    return [(part, _dumps(obj).encode()) for part, obj in _objects(fmt, device, seq, ts_ms, values)]


def broken_preset(
    fmt: str, kind: str, device: Device, *, seq: int, ts_ms: int, values: Values
) -> tuple[str, bytes]:
    """(component or "", payload) of a reading broken as `kind` (path_traversal breaks the
    topic instead: the caller puts ".." where the device id goes)."""
    if kind == "oversized":
        part, payload = preset_messages(fmt, device, seq, ts_ms, values)[0]
        return part, payload + b" " * (OVERSIZED_BYTES - len(payload))
    if kind == "path_traversal":
        return preset_messages(fmt, device, seq, ts_ms, values)[0]
    if kind == "malformed_json":
        part, payload = preset_messages(fmt, device, seq, ts_ms, values)[0]
        return part, payload[: max(1, len(payload) // 2)]
    if kind == "out_of_range":
        return preset_messages(fmt, device, seq, ts_ms, {OUT_OF_RANGE_METRIC: OUT_OF_RANGE_VALUE})[
            0
        ]
    if kind == "clock_skew":
        return preset_messages(fmt, device, seq, ts_ms + CLOCK_SKEW_MS, values)[0]
    if kind == "wrong_type":
        return preset_messages(fmt, device, seq, ts_ms, dict.fromkeys(values, NOT_A_NUMBER))[0]  # type: ignore[arg-type]
    if kind == "missing_field":
        if fmt == "ttn_v3":
            uplink = _uplink(device, seq, ts_ms, {})
            del uplink["uplink_message"]["decoded_payload"]  # type: ignore[attr-defined]
            return "", _dumps(uplink).encode()
        # Nothing number-like: only the time (Tasmota) or nothing at all (flat JSON).
        return "", _dumps({"Time": _local_time(ts_ms)} if fmt == "tasmota" else {}).encode()
    raise ValueError(f"{kind!r} does not break a {fmt} message")
