"""Reliability matrix, hostile input: 100,000 fuzzed payloads, a flood of 4 MiB payloads on each
protocol, 1,100 idle connections on the metrics port, 1,000,000 device ids, a filter the
broker's ACL denies, and a frozen broker. Each records a row (`make faults`)."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import REJECT_REASONS
from gateway.layout import DEAD_LETTER_DIR
from gateway.model import format_ts
from gateway.topics import filter_matches
from harness.broker import Broker, acl_broker
from harness.gateway import GatewayProcess
from harness.poll import eventually
from harness.scrape import get
from simulators.payloads import broken_json
from tests.support.gateway import read_dead_letters, read_lines, reading_payload, topic
from tests.support.idle_flood import IdleFlood, time_scrapes_while
from tests.support.ledger import Key, accounting, holds_all, keys_of, readings, stored
from tests.support.publish import Stream, publish
from tests.support.reliability import Matrix, Row, stored_and_stopped

pytestmark = [pytest.mark.faults, pytest.mark.slow]

MB = 1_000_000
RSS_TARGET_BYTES = 150 * MB


async def status_of(url: str) -> tuple[int, dict[str, Any]]:
    status, body = await get(url)
    return status, json.loads(body)


# -- 100,000 fuzzed payloads ------------------------------------------------------------------

BROKEN_KINDS = ("malformed_json", "missing_field", "wrong_type", "clock_skew", "path_traversal")


def fuzzed(prefix: str, count: int, seed: int) -> tuple[list[tuple[str, bytes]], set[Key]]:
    """Valid readings (the keys returned), the simulators' broken payloads, random bytes,
    mutated readings, wrong topics and a few oversized payloads, interleaved."""
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    valid: set[Key] = set()
    now_ms = int(time.time() * 1000)
    for n in range(count):
        device = f"dev-{n % 500:04d}"
        where = topic(prefix, device)
        draw = rng.random()
        if draw < 0.4:
            payload = reading_payload(device, n)
            valid.add((device, n))
        elif draw < 0.6:
            kind = "oversized" if rng.random() < 0.02 else rng.choice(BROKEN_KINDS)
            payload = broken_json(
                kind,
                device_id=device,
                ts_ms=now_ms,
                seq=n,
                metrics={"temperature": 21.5},
                units={},
                batch=rng.random() < 0.3,
            )
        elif draw < 0.75:
            payload = rng.randbytes(rng.randrange(0, 300))
        elif draw < 0.95:
            # Another id scheme: a mutated reading can never pass for a valid one's key.
            fuzzed_device = f"fz-{n % 500:04d}"
            where = topic(prefix, fuzzed_device)
            payload = bytearray(reading_payload(fuzzed_device, n))
            for _ in range(rng.randrange(1, 4)):
                payload[rng.randrange(len(payload))] = rng.randrange(256)
            payload = bytes(payload)
        else:
            where = f"{prefix}/{rng.choice(['x', '', 'a/b', 'x y'])}/telemetry"
            payload = reading_payload(device, n)
        messages.append((where, payload))
    return messages, valid


async def test_100k_fuzzed_payloads_each_stored_or_dead_lettered_and_the_counts_add_up(
    broker: Broker, tmp_path: Path, unique: str, reliability: Matrix
) -> None:
    messages, valid = fuzzed(unique, 100_000, seed=10)
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique)
    gw.start()
    try:
        await gw.ready()
        started = time.monotonic()
        await publish(broker.host, broker.port, messages)

        # Topics with a level too many or too few match no filter: the broker keeps them.
        delivered = sum(filter_matches(f"{unique}/+/+/telemetry", t) for t, _ in messages)

        async def settled() -> bool:
            return (
                await gw.metric("gateway_messages_received_total") == delivered
                and await gw.metric("gateway_readings_in_flight") == 0
            )

        await eventually(settled, timeout_s=120, interval_s=0.2, message="all handled")
        drained = time.monotonic() - started
        counts = {
            name: await gw.metric(f"gateway_readings_{name}_total")
            for name in ("received", "written")
        }
        rejected = sum(
            [
                await gw.metric("gateway_readings_rejected_total", reason=reason)
                for reason in REJECT_REASONS
            ]
        )
        internal = await gw.metric("gateway_readings_rejected_total", reason="internal_error")
        peak = gw.peak_rss_bytes
        assert await gw.terminate() == 0
    finally:
        gw.cleanup()
    lines = read_lines(gw.data_dir)
    dead = read_dead_letters(gw.data_dir)
    missing, _, summary = accounting(stored(gw.data_dir), valid)
    per_key = Counter((r["device_id"], r.get("seq")) for r in lines)
    duplicates = sum(n - 1 for key, n in per_key.items() if key in valid and n > 1)
    reliability.record(
        Row(
            "100,000 fuzzed payloads (QoS 1)",
            1,
            len(messages),
            len(missing),
            duplicates,
            [drained],
            "publish to all handled",
            peak,
            f"{len(valid):,} valid: all stored; {len(lines):,} lines, {len(dead):,} "
            "dead letters; received = written + rejected",
        )
    )
    assert not missing, summary
    assert counts["received"] == counts["written"] + rejected, (counts, rejected)
    assert len(lines) == counts["written"]
    assert len(dead) == rejected
    assert internal == 0, "no decoder raised anything but a DecodeError"
    assert "Traceback" not in gw.log


# -- the oversized flood ----------------------------------------------------------------------

BIG = 300
BIG_BYTES = 4 * 1024 * 1024
GOOD_PER_BIG = 10


def flood(prefix: str) -> Iterator[tuple[str, bytes]]:
    """300 payloads of 4 MiB, each followed by 10 good readings (3,000 with a seq)."""
    big = b"x" * BIG_BYTES
    seq = 0
    for _ in range(BIG):
        yield topic(prefix, "dev-big"), big
        for _ in range(GOOD_PER_BIG):
            device = f"dev-{seq % 10}"
            yield topic(prefix, device), reading_payload(device, seq)
            seq += 1


def good_keys() -> set[Key]:
    return {(f"dev-{seq % 10}", seq) for seq in range(BIG * GOOD_PER_BIG)}


@dataclass
class FloodRun:
    peak: int
    missing: set[Key]
    duplicated: int
    summary: str
    recovery_s: float
    big_arrived: int
    dead_letter_bytes: int


async def flood_once(
    broker: Broker,
    tmp_path: Path,
    prefix: str,
    protocol: str,
    qos: int,
    max_packet_bytes: int | None,
) -> FloodRun:
    gw = GatewayProcess.subscribed_to(broker, tmp_path, prefix, protocol=protocol, qos=qos)
    if max_packet_bytes is not None:
        gw.configure("mqtt", f"max_packet_bytes = {max_packet_bytes}\n")
    gw.start()
    try:
        await gw.ready()
        await publish(broker.host, broker.port, flood(prefix), qos, timeout_s=120, window=40)
        flooded_at = time.monotonic()
        await eventually(holds_all(gw.data_dir, good_keys()), timeout_s=120, interval_s=0.2)

        async def settled() -> bool:
            return await gw.metric("gateway_readings_in_flight") == 0

        await eventually(settled, timeout_s=60, interval_s=0.1)
        recovery = time.monotonic() - flooded_at
        big = await gw.metric("gateway_readings_rejected_total", reason="payload_too_large")
        peak = gw.peak_rss_bytes
        assert await gw.terminate() == 0
    finally:
        gw.cleanup()
    dead_letter = gw.data_dir / DEAD_LETTER_DIR
    missing, duplicated, summary = accounting(stored(gw.data_dir), good_keys())
    return FloodRun(
        peak,
        missing,
        duplicated,
        summary,
        recovery,
        int(big),
        sum(p.stat().st_size for p in dead_letter.rglob("*") if p.is_file()),
    )


@pytest.mark.parametrize(
    ("protocol", "max_packet_bytes"),
    [("5", None), ("5", 8 * 1024 * 1024), ("3.1.1", None)],
    ids=["mqtt5-default", "mqtt5-8MiB-packets", "mqtt311"],
)
async def test_a_flood_of_4_mib_payloads_keeps_memory_bounded_and_loses_nothing(
    broker: Broker,
    tmp_path: Path,
    unique: str,
    protocol: str,
    max_packet_bytes: int | None,
    reliability: Matrix,
) -> None:
    """The broker's message_size_limit at its default (Mosquitto: 256 MiB), QoS 0 and 1."""
    runs = [
        await flood_once(
            broker, tmp_path / f"q{qos}", f"{unique}q{qos}", protocol, qos, max_packet_bytes
        )
        for qos in (1, 0)
    ]
    peak = max(r.peak for r in runs)
    lost = sum(len(r.missing) for r in runs)
    duplicated = sum(r.duplicated for r in runs)
    big_arrived = sum(r.big_arrived for r in runs)
    dead_letter_bytes = sum(r.dead_letter_bytes for r in runs)
    where = {
        "5": "MQTT 5, max_packet_bytes 1 MiB (default)"
        if max_packet_bytes is None
        else "MQTT 5, max_packet_bytes 8 MiB",
        "3.1.1": "MQTT 3.1.1 (no packet limit)",
    }[protocol]
    if big_arrived:
        fate = (
            f"{big_arrived} of {2 * BIG} arrived, all dead-lettered "
            f"(4 KiB + size + SHA-256 each: {dead_letter_bytes / MB:.1f} MB in all)"
        )
    else:
        fate = f"the broker dropped all {2 * BIG} (larger than our Maximum Packet Size)"
    reliability.record(
        Row(
            f"300 × 4 MiB payloads + 3,000 readings, QoS 1 and 0, {where}",
            2,
            2 * BIG * (1 + GOOD_PER_BIG),
            lost,
            duplicated,
            [r.recovery_s for r in runs],
            "flood end to all stored",
            peak,
            fate,
        )
    )
    assert not lost, [r.summary for r in runs]
    assert peak <= RSS_TARGET_BYTES, f"peak RSS {peak / MB:.0f} MB"


# -- the metrics port under 1,100 idle connections ------------------------------------------


async def test_idle_connections_on_the_metrics_port_stop_neither_metrics_nor_storage(
    broker: Broker, tmp_path: Path, unique: str, reliability: Matrix
) -> None:
    """1,100 connections held open (each reopened a second after the gateway closes it) against
    a gateway whose file limit is 1024, soft and hard. It is first stopped twice for 1.5 s (a
    busy host): the connections queued meanwhile arrive in one burst, which must not take the
    descriptors either. Then every /metrics answers (each within the scrape's 5 s timeout; the
    slowest goes in the matrix), nothing fails to open, every reading published is stored."""
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique)
    messages = readings(unique, devices=30, seqs=range(100))  # 3,000
    gw.start(max_open_files=1024)
    idle: IdleFlood | None = None
    opened = 0
    try:
        await gw.ready()
        idle = IdleFlood(int(gw.url.rsplit(":", 1)[1]), 1100)
        await idle.wait_all_open()
        for _ in range(2):
            await gw.pause(1.5)
        await gw.ready()  # a scraper whose SYN the full queue dropped while it was stopped retries
        scrapes = await time_scrapes_while(gw.url, publish(broker.host, broker.port, messages))
        opened = idle.stop()
        assert await gw.metric("gateway_http_rejected_total", reason="max_connections") > 0
        peak = await stored_and_stopped(gw, keys_of(messages))
    finally:
        if idle is not None:
            idle.stop()
        gw.cleanup()
    missing, duplicates, summary = accounting(stored(gw.data_dir), keys_of(messages))
    reliability.record(
        Row(
            "1,100 idle connections on the metrics port, 1024-file limit, the gateway stopped "
            "twice for 1.5 s first",
            1,
            len(messages),
            len(missing),
            duplicates,
            [max(scrapes)],
            f"slowest of {len(scrapes)} /metrics",
            peak,
            f"{opened:,} connections opened (each reopened 1 s after the gateway closed it); "
            "no EMFILE, no traceback",
        )
    )
    assert not missing, summary
    assert opened >= 1100
    log = gw.log
    assert "Too many open files" not in log
    assert "out of system resource" not in log
    assert "Traceback" not in log


# -- 1,000,000 device ids ----------------------------------------------------------------------

IDS = 1_000_000
PER_MESSAGE = 500


def many_devices(prefix: str) -> Iterator[tuple[str, bytes]]:
    """1,000,000 readings, each of its own device, 500 to a message (a JSON array)."""
    ts = format_ts(time.time())
    where = f"{prefix}-batch/site-a"
    for start in range(0, IDS, PER_MESSAGE):
        batch = [
            {"device_id": f"id-{n:07d}", "ts": ts, "seq": 1, "metrics": {"t": 1.0}}
            for n in range(start, start + PER_MESSAGE)
        ]
        yield where, json.dumps(batch, separators=(",", ":")).encode()


async def test_a_million_device_ids_cost_a_bounded_count_and_lose_nothing(
    broker: Broker, tmp_path: Path, unique: str, reliability: Matrix
) -> None:
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique)
    gw.configure(
        "[mqtt.subscriptions]",
        f'filter = "{unique}-batch/#"\ntemplate = "{unique}-batch/{{site}}"\n',
    )
    gw.start()
    try:
        await gw.ready()
        idle_rss = gw.peak_rss_bytes
        started = time.monotonic()
        await publish(broker.host, broker.port, many_devices(unique), 1, timeout_s=120, window=200)

        async def all_written() -> bool:
            return await gw.metric("gateway_readings_written_total") >= IDS

        await eventually(all_written, timeout_s=180, interval_s=0.5, message="1M written")
        drained = time.monotonic() - started
        seen = await gw.metric("gateway_devices_seen")
        peak = gw.peak_rss_bytes
        assert await gw.terminate() == 0
    finally:
        gw.cleanup()
    devices: set[str] = set()
    lines = 0
    for path in gw.data_dir.glob("date=*/hour=*/*.jsonl"):
        with path.open("rb") as f:
            for line in f:
                lines += 1
                devices.add(json.loads(line)["device_id"])
    error = (seen - IDS) / IDS
    reliability.record(
        Row(
            "1,000,000 device ids (1M readings in 2,000 QoS 1 messages of 500)",
            1,
            IDS // PER_MESSAGE,
            IDS - len(devices),
            lines - len(devices),
            [drained],
            "publish to all written",
            peak,
            f"devices_seen {seen:,.0f} ({error:+.2%}); "
            f"peak RSS {(peak - idle_rss) / MB:+.0f} MB over the idle gateway",
        )
    )
    assert len(devices) == IDS
    assert abs(error) < 0.03, "within four standard errors of the 16 KiB sketch"
    assert peak - idle_rss < 60 * MB


# -- a filter the ACL denies, a frozen broker ------------------------------------------------

STALL_S = 2.0


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_filter_denied_by_acl_is_named_within_the_threshold(
    tmp_path: Path, unique: str, protocol: str, reliability: Matrix
) -> None:
    broker = acl_broker(tmp_path / "mosquitto", f"{unique}/#").start()
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique, protocol=protocol)
    gw.configure("mqtt", f"stall_timeout_s = {STALL_S}\n")
    gw.configure(
        "[mqtt.subscriptions]",
        f'filter = "secret-{unique}/#"\ntemplate = "secret-{unique}/{{site}}/{{device_id}}"\n'
        'name = "secret"\n',
    )
    messages = readings(unique, devices=10, seqs=range(100))  # 1,000 on the allowed filter
    stream: Stream | None = None
    gw.start()
    try:
        await gw.ready()
        subscribed_at = time.monotonic()
        stream = Stream(broker, messages, per_round=10, pause_s=0.05).start()

        async def named() -> bool:
            status, body = await status_of(f"{gw.url}/readyz")
            silent = body.get("silent_subscriptions") or []
            return status == 503 and [s["subscription"] for s in silent] == ["secret"]

        await eventually(named, timeout_s=30, interval_s=0.1, message="secret named")
        detected = time.monotonic() - subscribed_at
        peak = await stored_and_stopped(gw, keys_of(messages), stream)
    finally:
        if stream is not None:
            stream.close()
        gw.cleanup()
        broker.stop()
    missing, duplicates, summary = accounting(stored(gw.data_dir), keys_of(messages))
    reliability.record(
        Row(
            f"a filter the broker's ACL denies (granted, then silent), MQTT {protocol}",
            1,
            len(messages),
            len(missing),
            duplicates,
            [detected],
            "subscribed to named by /readyz",
            peak,
            f"mqtt.stall_timeout_s = {STALL_S:g} here (300 s by default); the allowed "
            "filter's readings all stored meanwhile",
        )
    )
    assert detected <= STALL_S + 2.0
    assert not missing, summary


async def test_a_frozen_broker_is_named_by_readyz_and_nothing_is_lost(
    own_broker: Broker, tmp_path: Path, unique: str, reliability: Matrix
) -> None:
    """SIGSTOP for 8 s: the connection stays open and silent (keepalive 10 s here: the broker
    would be dropped only after ~15 s); /readyz fails at the threshold."""
    gw = GatewayProcess.subscribed_to(own_broker, tmp_path, unique)
    gw.configure("mqtt", f"stall_timeout_s = {STALL_S}\n")
    before = readings(unique, devices=10, seqs=range(50))
    after = readings(unique, devices=10, seqs=range(50, 100))
    sent = keys_of(before) | keys_of(after)
    gw.start()
    assert own_broker.proc is not None
    try:
        await gw.ready()
        await publish(own_broker.host, own_broker.port, before)
        await eventually(holds_all(gw.data_dir, keys_of(before)))
        os.kill(own_broker.proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:

            async def silent() -> bool:
                status, body = await status_of(f"{gw.url}/readyz")
                return status == 503 and bool(body.get("silent_subscriptions"))

            await eventually(silent, timeout_s=30, interval_s=0.1, message="named silent")
            detected = time.monotonic() - frozen_at
            await eventually(lambda: time.monotonic() - frozen_at > 8, interval_s=0.1)
        finally:
            os.kill(own_broker.proc.pid, signal.SIGCONT)
        thawed_at = time.monotonic()
        await publish(own_broker.host, own_broker.port, after)

        async def ready_again() -> bool:
            status, _ = await get(f"{gw.url}/readyz")
            return status == 200

        await eventually(ready_again, timeout_s=30, interval_s=0.05)
        recovery = time.monotonic() - thawed_at
        peak = await stored_and_stopped(gw, sent)
    finally:
        gw.cleanup()
    missing, duplicates, summary = accounting(stored(gw.data_dir), sent)
    reliability.record(
        Row(
            "a frozen broker (SIGSTOP 8 s)",
            1,
            len(before) + len(after),
            len(missing),
            duplicates,
            [recovery],
            "SIGCONT to ready",
            peak,
            f"/readyz named the silence {detected:.1f} s after the freeze "
            f"(mqtt.stall_timeout_s = {STALL_S:g} here)",
        )
    )
    assert detected <= STALL_S + 2.0
    assert not missing, summary
