"""The opt-in sensor-value exporter: latest value per series, a cap, expiry; process metrics."""

from __future__ import annotations

from pathlib import Path

from gateway import Gateway
from gateway.config import SensorValuesConfig
from gateway.model import Reading
from gateway.sensor_values import MAX_LABEL_VALUE_LENGTH, SensorValues
from harness.broker import Broker
from harness.poll import eventually
from harness.scrape import Scrape, scrape, total, value
from tests.support.gateway import make_config, reading_payload, running, topic
from tests.support.publish import publish

SENSOR_VALUE = "gateway_sensor_value"


def _series(samples: Scrape) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(ls.items())): v for ls, v in samples.samples.get(SENSOR_VALUE, [])}


def _written(gateway: Gateway, count: int) -> bool:
    return gateway.metrics.sample("gateway_readings_written_total") >= count


# -- against the session broker, scraped over HTTP ------------------------------------------------


async def test_enabled_exports_the_latest_value_per_device_and_metric_with_site(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(broker, tmp_path, unique, sensor_values={"enabled": True})
    messages = [
        (topic(unique, "dev-1", "site-a"), reading_payload("dev-1", 0, {"temp": 20.0, "rh": 40.0})),
        (topic(unique, "dev-1", "site-a"), reading_payload("dev-1", 1, {"temp": 21.5, "rh": 41.0})),
        (topic(unique, "dev-2", "site-b"), reading_payload("dev-2", 0, {"temp": -3.25})),
        (topic(unique, "dev-1", "site-a"), reading_payload("dev-1", 2, {"temp": 22.75})),
    ]
    gateway = Gateway(config)
    async with running(gateway):
        await publish(broker.host, broker.port, messages)
        await eventually(lambda: _written(gateway, 4), message="4 written")
        samples = await scrape(gateway.http_url)
    assert _series(samples) == {
        (("device_id", "dev-1"), ("metric", "rh"), ("site", "site-a")): 41.0,
        (("device_id", "dev-1"), ("metric", "temp"), ("site", "site-a")): 22.75,
        (("device_id", "dev-2"), ("metric", "temp"), ("site", "site-b")): -3.25,
    }
    assert value(samples, "gateway_sensor_series") == 3
    assert value(samples, "gateway_sensor_series_refused_total") == 0


async def test_disabled_by_default_exports_no_device_series(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(broker, tmp_path, unique)
    assert not config.sensor_values.enabled
    gateway = Gateway(config)
    async with running(gateway):
        await publish(
            broker.host, broker.port, [(topic(unique, "dev-1"), reading_payload("dev-1", 0))]
        )
        await eventually(lambda: _written(gateway, 1), message="written")
        samples = await scrape(gateway.http_url)
    assert gateway.sensor_values is None
    assert not [name for name in samples.samples if name.startswith("gateway_sensor_")]
    assert not any("device_id" in ls for rows in samples.samples.values() for ls, _ in rows)


async def test_the_cap_refuses_new_series_and_counts_them_while_known_ones_update(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(broker, tmp_path, unique, sensor_values={"enabled": True, "max_series": 3})
    gateway = Gateway(config)
    async with running(gateway):
        # One at a time: devices go to different workers, so the sink may see them in any order.
        for n, (device, metrics) in enumerate(
            [("dev-1", {"a": 1.0, "b": 2.0}), ("dev-2", {"a": 3.0, "b": 4.0})], start=1
        ):
            await publish(
                broker.host,
                broker.port,
                [(topic(unique, device), reading_payload(device, 0, metrics))],
            )
            await eventually(lambda n=n: _written(gateway, n), message=f"{n} written")
        then = [
            (topic(unique, "dev-1"), reading_payload("dev-1", 1, {"a": 10.0, "b": 20.0})),
            (topic(unique, "dev-3"), reading_payload("dev-3", 0, {"a": 5.0})),
        ]
        await publish(broker.host, broker.port, then)
        await eventually(lambda: _written(gateway, 4), message="4 written")
        samples = await scrape(gateway.http_url)
    series = _series(samples)
    assert len(series) == 3
    assert series[(("device_id", "dev-1"), ("metric", "a"), ("site", "site-a"))] == 10.0
    assert series[(("device_id", "dev-1"), ("metric", "b"), ("site", "site-a"))] == 20.0
    assert series[(("device_id", "dev-2"), ("metric", "a"), ("site", "site-a"))] == 3.0
    assert value(samples, "gateway_sensor_series") == 3
    # dev-2's b, then dev-3's a: every refused value counts. The readings are stored regardless.
    assert value(samples, "gateway_sensor_series_refused_total") == 2
    assert value(samples, "gateway_readings_written_total") == 4


async def test_expiry_removes_the_series_of_a_silent_device_only(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(broker, tmp_path, unique, sensor_values={"enabled": True, "expiry_s": 1.0})
    quiet = (("device_id", "dev-quiet"), ("metric", "temperature"), ("site", "site-a"))
    chatty = (("device_id", "dev-chatty"), ("metric", "temperature"), ("site", "site-a"))
    gateway = Gateway(config)
    sent = 0

    async def send(*devices: str) -> None:
        nonlocal sent
        await publish(
            broker.host,
            broker.port,
            [(topic(unique, d), reading_payload(d, sent)) for d in devices],
        )
        sent += len(devices)

    async with running(gateway):
        await send("dev-quiet", "dev-chatty")
        await eventually(lambda: _written(gateway, 2), message="2 written")
        assert set(_series(await scrape(gateway.http_url))) == {quiet, chatty}

        async def quiet_gone() -> bool:
            await send("dev-chatty")  # keeps talking, so it must stay
            return quiet not in _series(await scrape(gateway.http_url))

        await eventually(quiet_gone, timeout_s=15, interval_s=0.2, message="silent series expired")
        await eventually(lambda: _written(gateway, sent), message="all written")
        samples = await scrape(gateway.http_url)
    assert set(_series(samples)) == {chatty}
    assert value(samples, "gateway_sensor_series") == 1


async def test_process_metrics_are_on_each_gateways_registry(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    gateway = Gateway(make_config(broker, tmp_path, unique))
    async with running(gateway):
        samples = await scrape(gateway.http_url)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert total(samples, name) > 0, name


# -- the store itself, with a clock we move -------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _batch(*readings: tuple[str, dict[str, float], dict[str, str]]) -> list[Reading]:
    return [
        Reading(device, 0.0, 0.0, dict(metrics), tags=dict(tags))
        for device, metrics, tags in readings
    ]


def test_expiry_frees_room_for_new_series_under_the_cap() -> None:
    clock = _Clock()
    values = SensorValues(SensorValuesConfig(max_series=2, expiry_s=10), clock)
    values.observe(_batch(("d1", {"a": 1.0, "b": 2.0}, {"site": "s"})))
    values.observe(_batch(("d2", {"a": 3.0}, {"site": "s"})))
    assert (values.series, values.refused) == (2, 1)
    clock.now += 11  # d1 silent past expiry: the next refusal sweeps first
    values.observe(_batch(("d2", {"a": 4.0}, {"site": "s"}), ("d3", {"a": 5.0}, {"site": "s"})))
    assert sorted((d, m, v) for d, m, _, v in values.items()) == [
        ("d2", "a", 4.0),
        ("d3", "a", 5.0),
    ]
    assert (values.series, values.refused) == (2, 1)


def test_a_refused_device_is_not_remembered_and_tags_are_capped() -> None:
    values = SensorValues(SensorValuesConfig(max_series=1, tags=("site", "zone")), _Clock())
    long_site = "s" * (MAX_LABEL_VALUE_LENGTH + 50)
    values.observe(_batch(("d1", {"a": 1.0}, {"site": long_site})))
    values.observe(_batch(("d1", {"a": 2.0}, {"site": long_site})))
    values.observe(_batch(*((f"flood-{n}", {"a": 0.0}, {}) for n in range(1000))))
    assert [(d, m, tags, v) for d, m, tags, v in values.items()] == [
        ("d1", "a", ("s" * MAX_LABEL_VALUE_LENGTH, None), 2.0)
    ]
    assert values.refused == 1000
    assert len(values._devices) == 1
