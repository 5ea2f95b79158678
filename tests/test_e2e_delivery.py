"""End to end through a real Mosquitto: everything published lands once, intact, and counted."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from gateway import Gateway
from harness.broker import Broker
from harness.poll import eventually
from harness.scrape import get, scrape, total, value
from tests.support.gateway import (
    fleet,
    make_config,
    read_dead_letters,
    read_lines,
    reading_payload,
    running,
    topic,
)
from tests.support.publish import publish


async def test_twenty_thousand_readings_from_500_devices_all_land_once_intact(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(broker, tmp_path, unique)
    messages = list(fleet(unique, devices=500, per_device=40))
    assert len(messages) == 20_000
    gateway = Gateway(config)
    async with running(gateway):
        await publish(broker.host, broker.port, messages, qos=1)
        await eventually(
            lambda: gateway.metrics.sample("gateway_readings_written_total") >= 20_000,
            timeout_s=120,
            message="20k written",
        )
        samples = await scrape(gateway.http_url)
    rows = read_lines(config.files.data_dir)
    seen = Counter((r["device_id"], r["seq"]) for r in rows)
    assert len(seen) == 20_000, "every (device, seq) is stored"
    assert max(seen.values()) == 1, "none twice on a clean run"
    order: dict[str, list[int]] = {}
    for row in rows:  # files are read in name order, lines in write order
        order.setdefault(row["device_id"], []).append(row["seq"])
    assert all(seqs == sorted(seqs) for seqs in order.values()), "each device keeps its order"
    sent = {(json.loads(p)["device_id"], json.loads(p)["seq"]): json.loads(p) for _, p in messages}
    for row in rows[::997]:
        original = sent[(row["device_id"], row["seq"])]
        assert row["metrics"] == original["metrics"]
        assert row["ts"] == original["ts"]
        assert row["tags"] == {"site": "site-a"}
    assert value(samples, "gateway_messages_received_total") == 20_000
    assert value(samples, "gateway_readings_written_total") == 20_000
    assert value(samples, "gateway_unacked_messages") == 0


BAD_PAYLOADS = {
    "invalid_json": (b"{not json", "dev-1"),
    "missing_field": (b'{"device_id": "dev-1", "ts": 1764068400}', "dev-1"),
    "invalid_schema": (b'{"device_id": "dev-1", "ts": 1764068400, "metrics": "hot"}', "dev-1"),
    "device_id_mismatch": (reading_payload("dev-2", 1), "dev-1"),
    "invalid_device_id": (reading_payload("../../etc/passwd", 1), "dev-1"),
    "ts_out_of_range": (reading_payload("dev-1", 1, ts=1.0e9), "dev-1"),
    "payload_too_large": (b'{"pad": "' + b"x" * 70_000 + b'"}', "dev-1"),
    "invalid_value": (
        b'{"device_id": "dev-1", "ts": 1764068400, "metrics": {"t": 1e999}}',
        "dev-1",
    ),
}


async def test_each_bad_payload_is_dead_lettered_with_its_reason_and_counted(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    template = f"{unique}/{{site}}/{{device_id}}/telemetry"
    config = make_config(
        broker,
        tmp_path,
        unique,
        mqtt={"subscriptions": [{"filter": f"{unique}/#", "template": template}]},
    )
    gateway = Gateway(config)
    good = [(topic(unique, "dev-1"), reading_payload("dev-1", n)) for n in range(5)]
    bad = [(topic(unique, device), payload) for payload, device in BAD_PAYLOADS.values()]
    bad.append((f"{unique}/only-two-levels", reading_payload("dev-1", 9)))
    async with running(gateway):
        await publish(broker.host, broker.port, good + bad, qos=1)
        await eventually(
            lambda: (
                gateway.metrics.sample("gateway_readings_in_flight") == 0
                and gateway.metrics.sample("gateway_messages_received_total")
                == len(good) + len(bad)
            ),
            message="all settled",
        )
        samples = await scrape(gateway.http_url)
    dead = read_dead_letters(config.files.data_dir)
    by_reason = Counter(d["reason"] for d in dead)
    expected = Counter(BAD_PAYLOADS.keys()) + Counter({"topic_mismatch": 1})
    assert by_reason == expected
    for reason in expected:
        assert value(samples, "gateway_readings_rejected_total", reason=reason) == expected[reason]
    for record in dead:
        assert record["topic"].startswith(unique)
        assert record["detail"]
        assert record["payload_encoding"] == "utf-8"
    assert len(read_lines(config.files.data_dir)) == len(good)


async def test_metrics_over_http_agree_with_the_files_and_add_up(
    broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    config = make_config(
        broker,
        tmp_path,
        unique,
        mqtt={"protocol": protocol},
        steps=[
            {"kind": "drop_duplicates"},  # an older config: accepted, [dedupe] does the work
            {"kind": "check_range", "metric": "temperature", "min": -50, "max": 100},
        ],
    )
    gateway = Gateway(config)
    messages = list(fleet(unique, devices=20, per_device=10))
    messages += messages[:15]  # duplicates
    messages += [(topic(unique, "dev-9999"), reading_payload("dev-9999", 0, {"temperature": 1e6}))]
    messages += [(topic(unique, "dev-9999"), b"garbage")]
    async with running(gateway):
        await publish(broker.host, broker.port, messages, qos=1)
        await eventually(
            lambda: (
                gateway.metrics.sample("gateway_messages_received_total") == len(messages)
                and gateway.metrics.sample("gateway_readings_in_flight") == 0
            ),
            message="all settled",
        )
        samples = await scrape(gateway.http_url)
        status, body = await get(f"{gateway.http_url}/readyz")
        assert status == 200, body
        status, _ = await get(f"{gateway.http_url}/healthz")
        assert status == 200
    written = read_lines(config.files.data_dir)
    dead = read_dead_letters(config.files.data_dir)
    received = value(samples, "gateway_readings_received_total")
    rejected = total(samples, "gateway_readings_rejected_total")
    dropped = total(samples, "gateway_readings_dropped_total")
    in_flight = value(samples, "gateway_readings_in_flight")
    assert value(samples, "gateway_readings_written_total") == len(written) == 200
    assert rejected == len(dead) == 2
    assert value(samples, "gateway_readings_dropped_total", reason="duplicate") == 15
    assert received == len(written) + rejected + dropped + in_flight
    assert value(samples, "gateway_devices_seen") == 21
    assert value(samples, "gateway_mqtt_connected") == 1
    assert value(samples, "gateway_build_info", version="0.1.0") == 1
    assert value(samples, "gateway_channel_capacity", channel="store") > 0
