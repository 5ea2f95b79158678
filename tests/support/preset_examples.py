"""Example messages of each preset, in the shapes each project documents, and what the gateway
must make of them. Every example names where its shape comes from; values from the docs are
kept as written, and where a doc describes fields without a full example, the message is built
from exactly those fields (said so in `note`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Example:
    """One documented message; `metrics` None means nothing is stored (see `outcome`)."""

    name: str
    preset: str
    source: str  # the page (and repository path) the shape is taken from
    topic: str
    payload: Any  # JSON-able, or bytes as sent
    received_at: float
    device_id: str | None = None
    metrics: dict[str, float] | None = None
    units: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    ts: float | None = None  # None: the receipt time
    seq: int | None = None
    outcome: str = "stored"  # stored | dropped | <reject reason>
    detail: str | None = None  # the rejection's detail, when it matters
    note: str = ""

    @property
    def raw(self) -> bytes:
        import json  # noqa: PLC0415

        return (
            self.payload if isinstance(self.payload, bytes) else json.dumps(self.payload).encode()
        )


Z2M = (
    "https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html "
    "(Koenkk/zigbee2mqtt.io docs/guide/usage/mqtt_topics_and_messages.md)"
)
Z2M_DEVICE = (
    "https://www.zigbee2mqtt.io/devices/WSDCGQ11LM.html "
    "(Koenkk/zigbee2mqtt.io docs/devices/WSDCGQ11LM.md, section Exposes)"
)
Z2M_OTA = (
    "https://www.zigbee2mqtt.io/guide/usage/ota_updates.html "
    "(Koenkk/zigbee2mqtt.io docs/guide/usage/ota_updates.md)"
)
TASMOTA_BME280 = "https://tasmota.github.io/docs/BME280/ (tasmota/docs docs/BME280.md)"
TASMOTA_AM2301 = "https://tasmota.github.io/docs/AM2301/ (tasmota/docs docs/AM2301.md)"
TASMOTA_MQTT = "https://tasmota.github.io/docs/MQTT/ (tasmota/docs docs/MQTT.md)"
TASMOTA_STATUS = (
    "https://tasmota.github.io/docs/JSON-Status-Responses/ "
    "(tasmota/docs docs/JSON-Status-Responses.md, StatusSNS: what SENSOR holds)"
)
SHELLY_NOTIFY = (
    "https://shelly-api-docs.shelly.cloud/gen2/General/Notifications (NotifyStatus, Examples 1-2)"
)
SHELLY_SWITCH = (
    "https://shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Switch (Status, example)"
)
SHELLY_MQTT = (
    "https://shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Mqtt "
    "(status_ntf: <topic_prefix>/status/<component:id>)"
)
HA = (
    "https://www.home-assistant.io/integrations/mqtt_statestream/ and "
    "home-assistant/core homeassistant/components/mqtt_statestream/__init__.py "
    "(payload = new_state.state, published as is)"
)
TTS = (
    "https://www.thethingsindustries.com/docs/integrations/data-formats/ "
    "(TheThingsIndustries/lorawan-stack-docs doc/content/integrations/data-formats/_index.md, "
    "Uplink message example); topic: .../integrations/other-integrations/mqtt/"
)

T0 = epoch("2026-11-25T11:00:00")

EXAMPLES: tuple[Example, ...] = (
    # -- zigbee2mqtt -----------------------------------------------------------------------
    Example(
        "zigbee2mqtt WSDCGQ01LM temperature and humidity",
        "zigbee2mqtt",
        Z2M,
        "zigbee2mqtt/living_room",
        {"temperature": 27.34, "humidity": 44.72},
        T0,
        "living_room",
        {"temperature": 27.34, "humidity": 44.72},
        {"temperature": "Cel", "humidity": "%RH"},
    ),
    Example(
        "zigbee2mqtt RTCGQ01LM occupancy (a boolean)",
        "zigbee2mqtt",
        Z2M,
        "zigbee2mqtt/hall_motion",
        {"occupancy": True},
        T0,
        "hall_motion",
        {"occupancy": 1.0},
    ),
    Example(
        "zigbee2mqtt LED1545G12 bulb (an ON/OFF string)",
        "zigbee2mqtt",
        Z2M,
        "zigbee2mqtt/0x90fd9ffffe6494fc",
        {"state": "ON", "brightness": 215, "color_temp": 325},
        T0,
        "0x90fd9ffffe6494fc",
        {"state": 1.0, "brightness": 215.0, "color_temp": 325.0},
    ),
    Example(
        "zigbee2mqtt set-style colour: a nested object",
        "zigbee2mqtt",
        Z2M,
        "zigbee2mqtt/my_bulb",
        {"state": "OFF", "brightness": 255, "color": {"x": 0.123, "y": 0.123}},
        T0,
        "my_bulb",
        {"state": 0.0, "brightness": 255.0, "color.x": 0.123, "color.y": 0.123},
        note="the shape of the documented /set payload, which the bulb's state echoes",
    ),
    Example(
        "zigbee2mqtt WXKG01LM button: an action alone is an event, dropped",
        "zigbee2mqtt",
        Z2M,
        "zigbee2mqtt/wireless_switch",
        {"action": "single"},
        T0,
        outcome="dropped",
    ),
    Example(
        "zigbee2mqtt WSDCGQ11LM with last_seen, an OTA update object and a null",
        "zigbee2mqtt",
        f"{Z2M_DEVICE}; {Z2M_OTA}",
        "zigbee2mqtt/0x00158d00036c1821",
        {
            "battery": 86,
            "humidity": 55.43,
            "linkquality": 97,
            "pressure": 1000.6,
            "temperature": 22.75,
            "voltage": 2995,
            "battery_low": None,
            "last_seen": "2026-11-25T10:59:58.000Z",
            "update": {"state": "idle", "installed_version": 23, "latest_version": 23},
        },
        T0,
        "0x00158d00036c1821",
        {
            "battery": 86.0,
            "humidity": 55.43,
            "linkquality": 97.0,
            "pressure": 1000.6,
            "temperature": 22.75,
            "voltage": 2995.0,
        },
        {
            "battery": "%",
            "humidity": "%RH",
            "linkquality": "lqi",
            "pressure": "hPa",
            "temperature": "Cel",
            "voltage": "mV",
        },
        note="fields and units of the device page's Exposes section; the values are made up",
    ),
    Example(
        "zigbee2mqtt OTA progress alone: dropped",
        "zigbee2mqtt",
        Z2M_OTA,
        "zigbee2mqtt/my_remote",
        {"update": {"state": "updating", "progress": 13.37, "remaining": 219}},
        T0,
        outcome="dropped",
    ),
    Example(
        "zigbee2mqtt friendly name with a space",
        "zigbee2mqtt",
        Z2M,
        "zigbee2mqtt/Living Room",
        {"temperature": 21.0},
        T0,
        outcome="invalid_device_id",
    ),
    # -- Tasmota ---------------------------------------------------------------------------
    Example(
        "Tasmota BME280: nested sensor, units in TempUnit and PressureUnit",
        "tasmota",
        TASMOTA_BME280,
        "tele/tasmota_0A1B2C/SENSOR",
        {
            "Time": "2019-11-03T19:34:28",
            "BME280": {"Temperature": 21.7, "Humidity": 66.6, "Pressure": 988.6},
            "PressureUnit": "hPa",
            "TempUnit": "C",
        },
        T0,
        "tasmota_0A1B2C",
        {"BME280.Temperature": 21.7, "BME280.Humidity": 66.6, "BME280.Pressure": 988.6},
        {"BME280.Temperature": "Cel", "BME280.Humidity": "%RH", "BME280.Pressure": "hPa"},
    ),
    Example(
        "Tasmota AM2301 in Fahrenheit",
        "tasmota",
        TASMOTA_AM2301,
        "tele/sonoff_th/SENSOR",
        {
            "Time": "2019-01-01T00:00:00",
            "AM2301": {"Temperature": 76.3, "Humidity": 58.2},
            "TempUnit": "F",
        },
        T0,
        "sonoff_th",
        {"AM2301.Temperature": 76.3, "AM2301.Humidity": 58.2},
        {"AM2301.Temperature": "degF", "AM2301.Humidity": "%RH"},
        note="the documented message with TempUnit F (SetOption8 1) and the value converted",
    ),
    Example(
        "Tasmota DS18B20 without TempUnit",
        "tasmota",
        TASMOTA_MQTT,
        "tele/tasmota/SENSOR",
        {"Time": "2017-02-16T10:13:52", "DS18B20": {"Temperature": 20.6}},
        T0,
        "tasmota",
        {"DS18B20.Temperature": 20.6},
    ),
    Example(
        "Tasmota switch state as an ON/OFF string",
        "tasmota",
        TASMOTA_STATUS,
        "tele/sonoff/SENSOR",
        {"Time": "2018.02.15 01:00:50", "Switch1": "OFF"},
        T0,
        "sonoff",
        {"Switch1": 0.0},
        note="Time as this older doc prints it: not ISO 8601, and ignored (receipt time)",
    ),
    Example(
        "Tasmota message with only its time",
        "tasmota",
        TASMOTA_MQTT,
        "tele/tasmota/SENSOR",
        {"Time": "2017-02-16T10:13:52"},
        T0,
        outcome="missing_field",
        detail="no metrics: nothing number-like",
    ),
    # -- Shelly Gen2+ ----------------------------------------------------------------------
    Example(
        "Shelly NotifyStatus: a button switched switch:0 on",
        "shelly",
        SHELLY_NOTIFY,
        "shellypro4pm-f008d1d8b8b8/events/rpc",
        {
            "src": "shellypro4pm-f008d1d8b8b8",
            "dst": "user_1",
            "method": "NotifyStatus",
            "params": {
                "ts": 1631186545.04,
                "switch:0": {"id": 0, "output": True, "source": "button"},
            },
        },
        1631186546.0,
        "shellypro4pm-f008d1d8b8b8",
        {"switch:0.output": 1.0},
        ts=1631186545.04,
    ),
    Example(
        "Shelly NotifyStatus: lost the cloud",
        "shelly",
        SHELLY_NOTIFY,
        "shellypro4pm-f008d1d8b8b8/events/rpc",
        {
            "src": "shellypro4pm-f008d1d8b8b8",
            "dst": "user_1",
            "method": "NotifyStatus",
            "params": {"ts": 1624348482.25, "cloud": {"connected": False}},
        },
        1624348483.0,
        "shellypro4pm-f008d1d8b8b8",
        {"cloud.connected": 0.0},
        ts=1624348482.25,
    ),
    Example(
        "Shelly NotifyStatus: power metering, a vanished temperature as null",
        "shelly",
        f"{SHELLY_NOTIFY} (keys that disappear come as null); {SHELLY_SWITCH}",
        "shellyplus1pm-a8032abe54dc/events/rpc",
        {
            "src": "shellyplus1pm-a8032abe54dc",
            "dst": "shellyplus1pm-a8032abe54dc/events",
            "method": "NotifyStatus",
            "params": {
                "ts": 1626942402.52,
                "switch:0": {
                    "id": 0,
                    "apower": 42.5,
                    "voltage": 237.571,
                    "current": 0.179,
                    "aenergy": {
                        "total": 14.093,
                        "by_minute": [703.3, 703.3, 703.3],
                        "minute_ts": 1626942402,
                    },
                    "temperature": {"tC": None, "tF": None},
                },
            },
        },
        1626942403.0,
        "shellyplus1pm-a8032abe54dc",
        {
            "switch:0.apower": 42.5,
            "switch:0.voltage": 237.571,
            "switch:0.current": 0.179,
            "switch:0.aenergy.total": 14.093,
        },
        {
            "switch:0.apower": "W",
            "switch:0.voltage": "V",
            "switch:0.current": "A",
            "switch:0.aenergy.total": "Wh",
        },
        ts=1626942402.52,
        note="the Switch status fields, as a NotifyStatus carries them",
    ),
    Example(
        "Shelly NotifyEvent (a button push): nothing to store, dropped",
        "shelly",
        SHELLY_NOTIFY,
        "shellyplus1-a8032abe54dc/events/rpc",
        {
            "src": "shellyplus1-a8032abe54dc",
            "dst": "user_1",
            "method": "NotifyEvent",
            "params": {
                "ts": 1631266595.44,
                "events": [
                    {"component": "input:0", "id": 0, "event": "single_push", "ts": 1631266595.44}
                ],
            },
        },
        1631266596.0,
        outcome="dropped",
    ),
    Example(
        "Shelly status topic: the Switch status object",
        "shelly_status",
        f"{SHELLY_SWITCH}; {SHELLY_MQTT}",
        "shellyplus1pm-a8032abe54dc/status/switch:0",
        {
            "id": 0,
            "source": "timer",
            "output": False,
            "timer_started_at": 1626942399.36,
            "timer_duration": 60,
            "apower": 0,
            "voltage": 237.571,
            "aenergy": {"total": 14.093, "by_minute": [0, 0, 0], "minute_ts": 1626942402},
            "temperature": {"tC": 41.7, "tF": 107.1},
        },
        T0,
        "shellyplus1pm-a8032abe54dc",
        {
            "switch:0.output": 0.0,
            "switch:0.timer_duration": 60.0,
            "switch:0.apower": 0.0,
            "switch:0.voltage": 237.571,
            "switch:0.aenergy.total": 14.093,
            "switch:0.temperature.tC": 41.7,
            "switch:0.temperature.tF": 107.1,
        },
        {
            "switch:0.apower": "W",
            "switch:0.voltage": "V",
            "switch:0.aenergy.total": "Wh",
            "switch:0.temperature.tC": "Cel",
            "switch:0.temperature.tF": "degF",
        },
    ),
    # -- Home Assistant MQTT Statestream ---------------------------------------------------
    Example(
        "Home Assistant light turned on: a bare word",
        "ha_statestream",
        HA,
        "homeassistant/light/master_bedroom_dimmer/state",
        b"on",
        T0,
        "master_bedroom_dimmer",
        {"state": 1.0},
        tags={"domain": "light"},
    ),
    Example(
        "Home Assistant sensor state: a number as text",
        "ha_statestream",
        HA,
        "homeassistant/sensor/outside_temperature/state",
        b"21.5",
        T0,
        "outside_temperature",
        {"state": 21.5},
        tags={"domain": "sensor"},
    ),
    Example(
        "Home Assistant cover closed",
        "ha_statestream",
        HA,
        "homeassistant/cover/garage_door/state",
        b"closed",
        T0,
        "garage_door",
        {"state": 0.0},
        tags={"domain": "cover"},
    ),
    Example(
        "Home Assistant entity unavailable: dropped",
        "ha_statestream",
        HA,
        "homeassistant/sensor/outside_temperature/state",
        b"unavailable",
        T0,
        outcome="dropped",
    ),
    # -- The Things Stack v3 ---------------------------------------------------------------
    Example(
        "The Things Stack uplink message example",
        "ttn_v3",
        TTS,
        "v3/app1@ttn/devices/dev1/up",
        {
            "end_device_ids": {
                "device_id": "dev1",
                "application_ids": {"application_id": "app1"},
                "dev_eui": "0004A30B001C0530",
                "join_eui": "800000000000000C",
                "dev_addr": "00BCB929",
            },
            "correlation_ids": ["as:up:01E0WZGT6Y7657CPFPE5WEYDSQ"],
            "received_at": "2020-02-12T15:15:46.014773143Z",
            "uplink_message": {
                "session_key_id": "AXA50tHUGUucuzS/bCGMNw==",
                "f_cnt": 1,
                "frm_payload": "gkHe",
                "decoded_payload": {"temperature": 1.0, "luminosity": 0.64},
                "rx_metadata": [
                    {
                        "gateway_ids": {"gateway_id": "gtw1", "eui": "9C5C8E00001A05C4"},
                        "time": "2020-02-12T15:15:45.787Z",
                        "timestamp": 2463457000,
                        "rssi": -35,
                        "channel_rssi": -35,
                        "snr": 5,
                        "uplink_token": "ChIKEAoEZ3R3MRIInFyOAAAaBcQQ6L3Vlgk=",
                        "channel_index": 2,
                    }
                ],
                "settings": {
                    "data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}},
                    "data_rate_index": 5,
                    "coding_rate": "4/6",
                    "frequency": "868300000",
                    "timestamp": 2463457000,
                    "time": "2020-02-12T15:15:45.787Z",
                },
                "consumed_airtime": "0.056576s",
                "received_at": "2020-02-12T15:15:45.789585559Z",
            },
        },
        epoch("2020-02-12T15:15:46.100"),
        "dev1",
        {"temperature": 1.0, "luminosity": 0.64},
        tags={"application": "app1", "dev_eui": "0004A30B001C0530"},
        ts=epoch("2020-02-12T15:15:46.014773"),
        seq=1,
    ),
    Example(
        "The Things Stack uplink with f_cnt 0 (omitted) and strings in decoded_payload",
        "ttn_v3",
        f"{TTS} (empty fields are omitted: f_cnt 0 is not sent)",
        "v3/weather@ttn/devices/eui-70b3d57ed005b89a/up",
        {
            "end_device_ids": {
                "device_id": "eui-70b3d57ed005b89a",
                "application_ids": {"application_id": "weather"},
                "dev_eui": "70B3D57ED005B89A",
            },
            "received_at": "2026-11-25T10:59:59.512Z",
            "uplink_message": {
                "f_port": 2,
                "decoded_payload": {"temperature_c": 29.9, "battery_v": "3.62", "status": "ok"},
            },
        },
        T0,
        "eui-70b3d57ed005b89a",
        {"temperature_c": 29.9, "battery_v": 3.62},
        tags={"application": "weather", "dev_eui": "70B3D57ED005B89A"},
        ts=epoch("2026-11-25T10:59:59.512"),
    ),
    Example(
        "The Things Stack uplink without a payload formatter",
        "ttn_v3",
        TTS,
        "v3/app1@ttn/devices/dev1/up",
        {
            "end_device_ids": {"device_id": "dev1", "application_ids": {"application_id": "app1"}},
            "received_at": "2026-11-25T10:59:59.512Z",
            "uplink_message": {"f_cnt": 7, "frm_payload": "gkHe"},
        },
        T0,
        outcome="missing_field",
        detail="the payload has no uplink_message.decoded_payload",
    ),
    # -- flat_json -------------------------------------------------------------------------
    Example(
        "flat JSON with numbers, a numeric string, a boolean and a time field",
        "flat_json",
        "(this gateway's convention)",
        "home/kitchen/thermo-1",
        {"temperature": 21.5, "humidity": "45", "heating": True, "ts": 1795604399000},
        T0,
        "thermo-1",
        {"temperature": 21.5, "humidity": 45.0, "heating": 1.0},
        ts=1795604399.0,
    ),
)
