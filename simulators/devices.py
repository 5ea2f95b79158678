"""Device models: sensors whose values are pure functions of (seed, device, seq, time)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from simulators.draws import SALT_MODEL, SALT_PARAMS, SALT_SAMPLE, SALT_WINDOW, Draw, derive, unit

if TYPE_CHECKING:
    from simulators.profile import ModelSpec, Profile

_TAU = 2.0 * math.pi
_M_PER_DEG_LAT = 111_320.0


class Sensor:
    """One or more metrics of a device. Parameters are drawn once per device from `defaults`
    (overridable per profile); `sample` then depends only on (time, seq, draw)."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    units: ClassVar[dict[str, str]]
    defaults: ClassVar[dict[str, float]]

    def __init__(self, params: Mapping[str, float], draw: Draw, key: int, start_s: float) -> None:
        self.p = {**self.defaults, **params}
        self.key = key
        self.start_s = start_s
        self.setup(draw)

    def setup(self, draw: Draw) -> None:
        """Draw this device's own parameters (its base value, phase, ...)."""

    def sample(self, t_s: float, seq: int, draw: Draw, out: dict[str, float]) -> None:
        raise NotImplementedError

    def window_unit(self, window: int) -> float:
        """A draw that stays the same for a run of readings (a burst, a door left open)."""
        return unit(derive(self.key, SALT_WINDOW, window))


class Temperature(Sensor):
    """Daily cycle + noise + slow drift, in °C."""

    name = "temperature"
    metrics = ("temperature",)
    units: ClassVar[dict[str, str]] = {"temperature": "Cel"}
    defaults: ClassVar[dict[str, float]] = {
        "base": 21.0,
        "spread": 2.0,
        "daily_amplitude": 2.5,
        "peak_hour": 15.0,
        "noise": 0.15,
        "drift_per_day": 0.3,
    }

    def setup(self, draw: Draw) -> None:
        p = self.p
        self.base = p["base"] + p["spread"] * (2 * draw.uniform() - 1)
        self.amplitude = p["daily_amplitude"] * draw.between(0.7, 1.3)
        self.peak_hour = p["peak_hour"] + draw.between(-1.0, 1.0)
        self.drift = p["drift_per_day"] * (2 * draw.uniform() - 1)

    def value(self, t_s: float, draw: Draw) -> float:
        hour = (t_s / 3600.0) % 24.0
        cycle = self.amplitude * math.cos(_TAU * (hour - self.peak_hour) / 24.0)
        drift = self.drift * (t_s - self.start_s) / 86400.0
        return self.base + cycle + drift + self.p["noise"] * draw.normal()

    def sample(self, t_s: float, seq: int, draw: Draw, out: dict[str, float]) -> None:
        out["temperature"] = round(self.value(t_s, draw), 2)


class Humidity(Sensor):
    """Relative humidity, falling as the temperature rises (same air, more capacity), in %RH."""

    name = "humidity"
    metrics = ("humidity",)
    units: ClassVar[dict[str, str]] = {"humidity": "%RH"}
    defaults: ClassVar[dict[str, float]] = {
        "base": 45.0,
        "spread": 8.0,
        "reference": 21.0,
        "per_degree": -1.8,
        "noise": 0.6,
    }

    def setup(self, draw: Draw) -> None:
        self.base = self.p["base"] + self.p["spread"] * (2 * draw.uniform() - 1)
        # Used when the device has no temperature sensor of its own.
        self.air = Temperature({"base": self.p["reference"]}, draw, self.key, self.start_s)

    def sample(self, t_s: float, seq: int, draw: Draw, out: dict[str, float]) -> None:
        temperature = out.get("temperature")
        if temperature is None:
            temperature = self.air.value(t_s, draw)
        rh = self.base + self.p["per_degree"] * (temperature - self.p["reference"])
        rh += self.p["noise"] * draw.normal()
        out["humidity"] = round(min(100.0, max(0.0, rh)), 1)


class Pressure(Sensor):
    """Barometric pressure: slow weather waves + noise, in Pa."""

    name = "pressure"
    metrics = ("pressure",)
    units: ClassVar[dict[str, str]] = {"pressure": "Pa"}
    defaults: ClassVar[dict[str, float]] = {
        "base": 101_325.0,
        "spread": 600.0,
        "weather_amplitude": 900.0,
        "weather_period_h": 72.0,
        "noise": 12.0,
    }

    def setup(self, draw: Draw) -> None:
        self.base = self.p["base"] + self.p["spread"] * (2 * draw.uniform() - 1)
        self.phase = _TAU * draw.uniform()

    def sample(self, t_s: float, seq: int, draw: Draw, out: dict[str, float]) -> None:
        period_s = self.p["weather_period_h"] * 3600.0
        wave = self.p["weather_amplitude"] * math.sin(_TAU * t_s / period_s + self.phase)
        out["pressure"] = round(self.base + wave + self.p["noise"] * draw.normal(), 1)


class Vibration(Sensor):
    """RMS acceleration of a machine: a steady hum with bursts, in m/s²."""

    name = "vibration"
    metrics = ("vibration",)
    units: ClassVar[dict[str, str]] = {"vibration": "m/s2"}
    defaults: ClassVar[dict[str, float]] = {
        "base": 0.3,
        "spread": 0.1,
        "noise": 0.04,
        "burst_probability": 0.05,
        "burst_gain": 8.0,
        "burst_length": 20.0,
    }

    def setup(self, draw: Draw) -> None:
        self.base = self.p["base"] + self.p["spread"] * (2 * draw.uniform() - 1)
        self.burst_length = max(1, int(self.p["burst_length"]))

    def sample(self, t_s: float, seq: int, draw: Draw, out: dict[str, float]) -> None:
        burst = self.window_unit(seq // self.burst_length)
        gain = 1.0
        if burst < self.p["burst_probability"]:
            gain = self.p["burst_gain"] * (0.8 + 0.4 * burst / self.p["burst_probability"])
        out["vibration"] = round(abs(self.base + self.p["noise"] * draw.normal()) * gain, 3)


class Battery(Sensor):
    """Remaining charge, draining with every report, in %EL."""

    name = "battery"
    metrics = ("battery",)
    units: ClassVar[dict[str, str]] = {"battery": "%EL"}
    defaults: ClassVar[dict[str, float]] = {
        "start_min": 60.0,
        "start_max": 100.0,
        "drain_per_reading": 0.002,
    }

    def setup(self, draw: Draw) -> None:
        self.start = draw.between(self.p["start_min"], self.p["start_max"])

    def sample(self, t_s: float, seq: int, draw: Draw, out: dict[str, float]) -> None:
        out["battery"] = round(max(0.0, self.start - self.p["drain_per_reading"] * seq), 3)


class GpsTrack(Sensor):
    """A mobile asset going round a loop, slowing and speeding up: lat/lon (deg) and m/s."""

    name = "gps"
    metrics = ("lat", "lon", "speed")
    units: ClassVar[dict[str, str]] = {"lat": "lat", "lon": "lon", "speed": "m/s"}
    defaults: ClassVar[dict[str, float]] = {
        "lat": 59.33,
        "lon": 18.07,
        "spread_km": 20.0,
        "radius_min_m": 300.0,
        "radius_max_m": 3000.0,
        "speed_min": 5.0,
        "speed_max": 20.0,
        "stop_period_s": 600.0,
        "noise_m": 3.0,
    }

    def setup(self, draw: Draw) -> None:
        p = self.p
        spread_deg = p["spread_km"] * 1000.0 / _M_PER_DEG_LAT
        self.lat0 = p["lat"] + spread_deg * (2 * draw.uniform() - 1)
        self.lon0 = p["lon"] + spread_deg * (2 * draw.uniform() - 1)
        self.radius = draw.between(p["radius_min_m"], p["radius_max_m"])
        self.speed = draw.between(p["speed_min"], p["speed_max"])
        self.offset_s = draw.uniform() * p["stop_period_s"]
        self.m_per_deg_lon = _M_PER_DEG_LAT * math.cos(math.radians(self.lat0))

    def sample(self, t_s: float, seq: int, draw: Draw, out: dict[str, float]) -> None:
        period = self.p["stop_period_s"]
        tau = t_s - self.start_s + self.offset_s
        # speed(t) = v (1 + 0.8 cos(2πt/P)) is never negative; distance is its integral.
        distance = self.speed * (tau + 0.8 * period / _TAU * math.sin(_TAU * tau / period))
        speed = self.speed * (1.0 + 0.8 * math.cos(_TAU * tau / period))
        angle = distance / self.radius
        noise = self.p["noise_m"]
        north = self.radius * math.cos(angle) + noise * draw.normal()
        east = self.radius * math.sin(angle) + noise * draw.normal()
        out["lat"] = round(self.lat0 + north / _M_PER_DEG_LAT, 6)
        out["lon"] = round(self.lon0 + east / self.m_per_deg_lon, 6)
        out["speed"] = round(max(0.0, speed + 0.1 * draw.normal()), 2)


class Door(Sensor):
    """A door contact: 1 open, 0 closed; it stays one way for a few reports."""

    name = "door"
    metrics = ("door",)
    units: ClassVar[dict[str, str]] = {}
    defaults: ClassVar[dict[str, float]] = {"open_probability": 0.3, "hold_min": 3, "hold_max": 12}

    def setup(self, draw: Draw) -> None:
        self.hold = max(1, int(draw.between(self.p["hold_min"], self.p["hold_max"] + 1)))

    def sample(self, t_s: float, seq: int, draw: Draw, out: dict[str, float]) -> None:
        is_open = self.window_unit(seq // self.hold) < self.p["open_probability"]
        out["door"] = 1 if is_open else 0


# Order matters: humidity reads the temperature sampled before it.
SENSORS: dict[str, type[Sensor]] = {
    cls.name: cls for cls in (Temperature, Humidity, Pressure, Vibration, Battery, GpsTrack, Door)
}
_ORDER = {name: i for i, name in enumerate(SENSORS)}


@dataclass(frozen=True, slots=True)
class Device:
    """One simulated device; everything about it follows from (seed, index, profile)."""

    index: int
    device_id: str
    site: str
    model: str
    sensors: tuple[Sensor, ...]
    metrics: tuple[str, ...]
    units: dict[str, str]
    key: int

    def sample(self, seq: int, t_s: float) -> dict[str, float]:
        """Metric values of reading `seq`, taken at device time `t_s`."""
        draw = Draw(derive(self.key, SALT_SAMPLE, seq))
        out: dict[str, float] = {}
        for sensor in self.sensors:
            sensor.sample(t_s, seq, draw, out)
        return out


def pick_model(profile: Profile, seed: int, index: int) -> ModelSpec:
    """The model of device `index`: a weighted draw, so small fleets get a mix too."""
    total = sum(m.share for m in profile.models)
    point = unit(derive(seed, index, SALT_MODEL)) * total
    for model in profile.models:
        point -= model.share
        if point < 0:
            return model
    return profile.models[-1]


def make_device(
    seed: int,
    index: int,
    *,
    profile: Profile,
    sites: tuple[str, ...],
    device_id_pattern: str,
    start_s: float,
) -> Device:
    """Device `index` of a fleet: a pure function of its arguments."""
    model = pick_model(profile, seed, index)
    site = sites[index % len(sites)]
    key = derive(seed, index)
    draw = Draw(derive(key, SALT_PARAMS))
    names = sorted(model.sensors, key=_ORDER.__getitem__)
    sensors = tuple(SENSORS[n](model.params.get(n, {}), draw, key, start_s) for n in names)
    units: dict[str, str] = {}
    for sensor in sensors:
        units.update(sensor.units)
    return Device(
        index=index,
        device_id=device_id_pattern.format(n=index, site=site, model=model.name),
        site=site,
        model=model.name,
        sensors=sensors,
        metrics=tuple(m for s in sensors for m in s.metrics),
        units=units,
        key=key,
    )
