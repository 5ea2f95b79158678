"""Presets: mappings for what common firmware publishes, as data (the engine: decode/mapping.py).

Each preset is a topic template plus the fields of a `MappingConfig` (see subscriptions.py);
`format = "<preset>"` uses both, and a `[mqtt.subscriptions.mapping]` table beside it overrides
single fields. The shapes come from each project's own documentation, cited here and in the
fixtures of tests/test_presets.py, which parse the documented examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A mapping for one kind of firmware, and the topic its messages arrive on."""

    summary: str
    template: str | None  # None: the subscription's own (flat_json fits any topic)
    mapping: Mapping[str, Any]
    source: str  # where the payload shape is documented
    notes: tuple[str, ...] = field(default=())


def _frozen(**fields: Any) -> Mapping[str, Any]:
    return MappingProxyType(fields)


# zigbee2mqtt units, from the "Exposes" sections of its device pages (e.g. WSDCGQ11LM: °C, %,
# hPa, mV, lqi), spelled as our unit names are: printable ASCII ("°C" -> "Cel", as SenML).
_ZIGBEE2MQTT_UNITS = {
    "temperature": "Cel",
    "local_temperature": "Cel",
    "humidity": "%RH",
    "pressure": "hPa",
    "battery": "%",
    "voltage": "mV",
    "linkquality": "lqi",
    "illuminance_lux": "lx",
    "power": "W",
    "energy": "kWh",
    "current": "A",
    "co2": "ppm",
}

# Shelly Gen2 component status units (Switch: apower W, voltage V, current A, aenergy.total Wh;
# Temperature: tC/tF; Humidity: rh %), matched against the stored name (`switch:0.apower`).
_SHELLY_UNITS = {
    "*.apower": "W",
    "*.voltage": "V",
    "*.current": "A",
    "*.aenergy.total": "Wh",
    "*.tC": "Cel",
    "*.tF": "degF",
    "*.rh": "%RH",
}
# Per-component bookkeeping that is not a measurement: instance ids, the last command's
# source, error lists, the per-minute energy array and its timestamp.
_SHELLY_EXCLUDE = (
    *("id", "source", "errors", "timer_started_at"),
    *("*.id", "*.source", "*.errors", "*.by_minute", "*.minute_ts", "*.timer_started_at"),
)

# What both Shelly presets share: the device is the topic's first level; a message with nothing
# number-like in it (a button event; a change of a string field alone) is dropped.
_SHELLY = {"device_id": "topic", "units": _SHELLY_UNITS, "no_metrics": "drop"}

PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "flat_json": Preset(
            summary="a flat (or nested) JSON object: every number is a metric; the device is "
            "the topic's {device_id} (or its last level); a ts/time/timestamp field is the time",
            template=None,
            mapping=_frozen(
                device_id="topic",
                ts="payload:ts|payload:time|payload:timestamp|received",
            ),
            source="(this gateway's own convention)",
        ),
        "zigbee2mqtt": Preset(
            summary="zigbee2mqtt/<friendly_name>: the device's exposed state, one JSON object",
            template="zigbee2mqtt/{device_id}",
            mapping=_frozen(
                device_id="topic",
                ts="received",
                # last_seen/elapsed describe the bridge's view, update/device are metadata.
                exclude=("last_seen", "elapsed", "update", "update_available", "device"),
                units=_ZIGBEE2MQTT_UNITS,
                # A button's {"action": "single"} or an OTA {"update": ...} alone: an event,
                # not telemetry; dropped (counted), not dead-lettered.
                no_metrics="drop",
            ),
            source="https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html",
            notes=(
                "Friendly names must be safe ids (A-Z a-z 0-9 . _ -); one with a space or a "
                "'/' is dead-lettered as invalid_device_id (or topic_mismatch): rename it.",
            ),
        ),
        "tasmota": Preset(
            summary="tele/<topic>/SENSOR: Tasmota telemetry, sensors as nested objects "
            "(BME280.Temperature), units in TempUnit/PressureUnit",
            template="tele/{device_id}/SENSOR",
            mapping=_frozen(
                device_id="topic",
                # `Time` is the device's local time without an offset: receipt time instead.
                ts="received",
                exclude=("Time", "*TotalStartTime"),
                unit_fields={
                    "*Temperature": "TempUnit",
                    "*DewPoint": "TempUnit",
                    "*Pressure": "PressureUnit",
                    "*SeaPressure": "PressureUnit",
                },
                unit_names={"C": "Cel", "F": "degF"},
                units={
                    "*Humidity": "%RH",
                    "ENERGY.Power": "W",
                    "ENERGY.Voltage": "V",
                    "ENERGY.Current": "A",
                    "ENERGY.Total": "kWh",
                    "ENERGY.Today": "kWh",
                    "ENERGY.Yesterday": "kWh",
                },
            ),
            source="https://tasmota.github.io/docs/MQTT/ and sensor pages (BME280, AM2301)",
            notes=(
                "Time is ignored: Tasmota sends local time without an offset. With "
                'SetOption52 1 it carries one; then override ts = "payload:Time".',
            ),
        ),
        "shelly": Preset(
            summary="<id>/events/rpc: Shelly Gen2+ NotifyStatus (and NotifyFullStatus) "
            "notifications; metrics named <component>:<n>.<field>",
            template="{device_id}/events/rpc",
            mapping=_frozen(
                **_SHELLY,
                root="params",
                ts="payload:params.ts",
                # NotifyEvent (button presses) carries events, no status: nothing to store.
                exclude=(*_SHELLY_EXCLUDE, "events"),
            ),
            source="https://shelly-api-docs.shelly.cloud/gen2/General/Notifications",
        ),
        "shelly_status": Preset(
            summary="<id>/status/<component>:<n>: Shelly Gen2+ status updates (status_ntf), "
            "one component per message; metrics named as for shelly",
            template="{device_id}/status/+",
            mapping=_frozen(
                **_SHELLY, ts="received", metric_prefix="topic:-1", exclude=_SHELLY_EXCLUDE
            ),
            source="https://shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Mqtt",
        ),
        "ha_statestream": Preset(
            summary="homeassistant/<domain>/<entity>/state: Home Assistant MQTT Statestream, "
            "a bare state per message; the entity is the device, the state metric `state`",
            template="homeassistant/{domain}/{device_id}/state",
            mapping=_frozen(
                shape="value",
                value_name="state",
                device_id="topic",
                ts="received",
                enums={
                    "on": 1.0,
                    "off": 0.0,
                    "open": 1.0,
                    "closed": 0.0,
                    "home": 1.0,
                    "not_home": 0.0,
                    "locked": 1.0,
                    "unlocked": 0.0,
                },
                # `unavailable` and `unknown` are states too: dropped (counted), not errors.
                no_metrics="drop",
            ),
            source="https://www.home-assistant.io/integrations/mqtt_statestream/",
        ),
        "ttn_v3": Preset(
            summary="v3/<app>@<tenant>/devices/<device>/up: The Things Stack v3 uplinks; "
            "metrics from uplink_message.decoded_payload, seq from f_cnt",
            template="v3/+/devices/{device_id}/up",
            mapping=_frozen(
                device_id="topic",
                root="uplink_message.decoded_payload",
                ts="payload:received_at",
                # Empty fields are omitted by The Things Stack: f_cnt 0 arrives as no f_cnt.
                seq="payload:uplink_message.f_cnt",
                tag_fields={
                    "application": "end_device_ids.application_ids.application_id",
                    "dev_eui": "end_device_ids.dev_eui",
                },
            ),
            source="https://www.thethingsindustries.com/docs/integrations/data-formats/",
            notes=(
                "decoded_payload exists only when a payload formatter is set for the device; "
                "uplinks without one are dead-lettered as missing_field.",
            ),
        ),
    }
)
