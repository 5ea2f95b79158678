"""Reliability matrix, crashes: the gateway SIGKILLed ten times under load, the broker stopped
(SIGTERM) and killed (SIGKILL) ten times each with persistence, and two gateways fighting over
one client id. Each case publishes QoS 1 readings with a seq, proves from the files that none
was lost and (but for two gateways on two data directories) none stored twice, and records a row
(`make faults`; tests/support/reliability.py).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from harness.broker import Broker
from harness.gateway import GatewayProcess
from harness.poll import eventually
from harness.scrape import scrape, total, value
from tests.support.ledger import Key, accounting, holds_all, keys_of, readings, stored
from tests.support.publish import Stream
from tests.support.reliability import Matrix, Row, stored_and_stopped

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KILLS = 10


def median_of(counts: list[int]) -> int:
    """The middle count; 0 for none (the assertion on the count then says what went wrong)."""
    return sorted(counts)[len(counts) // 2] if counts else 0


def seeded_counts(log: str) -> list[int]:
    """What each start of a gateway process seeded its dedupe window with (from its log)."""
    return [int(n) for n in re.findall(r"dedupe window seeded with (\d+) identities", log)]


@pytest.mark.parametrize(
    ("fsync", "protocol"),
    [("always", "5"), ("interval", "5"), ("interval", "3.1.1")],
    ids=["always-5", "interval-5", "interval-3.1.1"],
)
async def test_gateway_sigkill_x10_under_load_loses_nothing_and_stores_nothing_twice(
    broker: Broker, tmp_path: Path, unique: str, reliability: Matrix, fsync: str, protocol: str
) -> None:
    """fsync = always: a kill leaves written-but-unacked readings only when it falls between a
    commit's write and its PUBACKs. fsync = interval (0.5 s): acks wait for the periodic fsync
    while the lines are already in the file, so every kill leaves up to half a second of written,
    unacked readings, which the restarted gateway must recognise (its window seeded from the
    files) when the broker redelivers them."""
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique, protocol=protocol)
    if fsync == "interval":
        gw.configure("files", 'fsync = "interval"\nfsync_interval_s = 0.5\n')
    # 80,000 at ~3,000/s: ~27 s, where ten kills and restarts take ~12-19 s (3.1.1 the slowest)
    messages = readings(unique, devices=100, seqs=range(800))
    sent = keys_of(messages)
    recoveries: list[float] = []
    repeats = 0.0
    peak = 0
    gw.start()
    stream: Stream | None = None
    try:
        await gw.ready()
        stream = Stream(broker, messages, per_round=150, pause_s=0.05).start()
        for _ in range(KILLS):

            async def working() -> bool:
                return await gw.metric("gateway_readings_written_total") >= 300

            await eventually(working, timeout_s=60, interval_s=0.05, message="writing")
            peak = max(peak, gw.peak_rss_bytes)
            repeats += await gw.metric("gateway_readings_dropped_total", reason="duplicate")
            gw.kill()
            killed_at = time.monotonic()
            gw.start()
            await gw.ready(timeout_s=60, interval_s=0.05)
            recoveries.append(time.monotonic() - killed_at)
        under_load = not stream.published.is_set()
        await stream.wait_all_acked(timeout_s=120)
        await eventually(holds_all(gw.data_dir, sent), timeout_s=120, interval_s=0.1)
        repeats += await gw.metric("gateway_readings_dropped_total", reason="duplicate")
        peak = max(peak, await stored_and_stopped(gw, sent))
    finally:
        if stream is not None:
            stream.close()
        gw.cleanup()
    missing, duplicates, summary = accounting(stored(gw.data_dir), sent)
    seeded = seeded_counts(gw.log)
    reliability.record(
        Row(
            f"gateway SIGKILL ×10 under load (QoS 1, ~3k msg/s, MQTT {protocol}, "
            f'`fsync = "{fsync}"`)',
            KILLS,
            len(messages),
            len(missing),
            duplicates,
            recoveries,
            "kill to ready",
            peak,
            "restarted at once; a crash-left segment is recovered, then the dedupe window "
            f"seeded from the files (median {median_of(seeded):,} identities), "
            f"before subscribing; {repeats:,.0f} redelivered readings recognised as written",
        )
    )
    assert under_load, "the kills came while the stream was still publishing"
    assert not missing, summary
    assert duplicates == 0, f"stored twice: {summary}; {repeats:.0f} repeats recognised"
    assert len(seeded) == KILLS, "every restart seeds its window from the files"
    if fsync == "interval":
        assert repeats > 0, "written, unacked readings came back and were recognised"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_broker_restart_x10_with_persistence_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, unique: str, how: str, reliability: Matrix
) -> None:
    """Mosquitto with persistence and a save every second (SIGTERM saves on the way out;
    SIGKILL loses what it accepted since its last save — it has no write-ahead log — and sends
    again what was acked since, which the dedupe window recognises). A message the broker acked
    to its publisher after its last save and had not yet sent us is lost *at the broker*: the
    gateway's counters then prove it never received it (every message received is written or a
    repeat of one written), and the row says so."""
    broker = Broker(tmp_path / "mosquitto", extra_config="autosave_interval 1\n").start()
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique)
    messages = readings(unique, devices=100, seqs=range(600))  # 60,000 at ~2,000/s
    sent = keys_of(messages)
    recoveries: list[float] = []
    gw.start()
    stream: Stream | None = None
    try:
        await gw.ready()
        subscribed_at = time.time()
        stream = Stream(broker, messages, per_round=100, pause_s=0.05).start()
        # Not before the broker has saved our session once: a broker killed before that
        # forgets the subscription, and what is published until we resubscribe (broker-side).
        saved = broker.workdir / "mosquitto.db"
        await eventually(lambda: saved.exists() and saved.stat().st_mtime > subscribed_at)
        for _ in range(KILLS):
            # Steady load between restarts: a second of it stored, not just the backlog the
            # broker sends on a reconnect.
            floor = await gw.metric("gateway_readings_written_total") + 1500

            async def flowing(floor: float = floor) -> bool:
                return await gw.metric("gateway_readings_written_total") >= floor

            await eventually(flowing, timeout_s=60, interval_s=0.05, message="the stream flows")
            assert broker.proc is not None
            if how == "SIGKILL":
                broker.proc.kill()
                broker.proc.wait()
            broker.stop()
            broker.start()
            restarted_at = time.monotonic()
            await gw.ready(timeout_s=60, interval_s=0.05)
            recoveries.append(time.monotonic() - restarted_at)
        under_load = not stream.published.is_set()
        await stream.wait_all_acked(timeout_s=120)
        if how == "SIGTERM":
            await eventually(holds_all(gw.data_dir, sent), timeout_s=120, interval_s=0.1)
        else:  # what the broker lost never comes: wait until all it sent is through
            await eventually(through(gw, sent), timeout_s=120, interval_s=0.2)
        samples = await scrape(gw.url)
        counts = {
            name: value(samples, f"gateway_{name}_total")
            for name in ("messages_received", "readings_received", "readings_written")
        }
        repeats = value(samples, "gateway_readings_dropped_total", reason="duplicate")
        rejected = total(samples, "gateway_readings_rejected_total")
        lost_sessions = value(samples, "gateway_mqtt_sessions_lost_total")
        peak = gw.peak_rss_bytes
        assert await gw.terminate() == 0, gw.log[-3000:]
    finally:
        if stream is not None:
            stream.close()
        gw.cleanup()
        broker.stop()
    missing, duplicates, summary = accounting(stored(gw.data_dir), sent)
    # Every message the gateway received is accounted for: written, or a repeat of one written.
    accounted = (
        counts["messages_received"] == counts["readings_received"]
        and counts["readings_received"] == counts["readings_written"] + repeats
        and rejected == 0
    )
    note = (
        f"Mosquitto 2.0.11, `autosave_interval 1`; {repeats:,.0f} redelivered readings "
        "recognised as written"
    )
    if how == "SIGKILL":
        note += (
            "; after a SIGKILL it restores its last save, up to 1 s old, and sends again what "
            "was acked since"
        )
    if missing:
        note += (
            f"; {len(missing)} acked to their publisher and lost at the broker (the gateway's "
            "counters show it never received them)"
        )
    reliability.record(
        Row(
            f"broker {how} ×10 with persistence (QoS 1, ~2k msg/s)",
            KILLS,
            len(messages),
            len(missing),
            duplicates,
            recoveries,
            "broker up to gateway ready",
            peak,
            note,
        )
    )
    assert under_load, "the restarts came while the stream was still publishing"
    assert lost_sessions == 0, "the broker kept our session"
    assert duplicates == 0, f"stored twice: {summary}; {repeats:.0f} repeats recognised"
    assert accounted, f"{counts}, {rejected:.0f} rejected, {repeats:.0f} repeats; {summary}"
    if how == "SIGTERM":
        assert not missing, summary
    else:  # at most what the broker accepted in its last second, in one of the ten kills
        assert len(missing) <= 2000, summary


def through(gw: GatewayProcess, sent: set[Key]) -> Callable[[], Awaitable[bool]]:
    """For `eventually`: every key on disk, or (the broker lost some) nothing received for 2 s
    and nothing in flight."""
    last = {"received": -1.0, "since": time.monotonic()}

    async def check() -> bool:
        if holds_all(gw.data_dir, sent)():
            return True
        samples = await scrape(gw.url)
        received = value(samples, "gateway_messages_received_total")
        if received != last["received"]:
            last.update(received=received, since=time.monotonic())
            return False
        quiet = time.monotonic() - last["since"] > 2.0
        return quiet and value(samples, "gateway_readings_in_flight") == 0

    return check


async def test_two_gateways_with_one_client_id_lose_nothing(
    broker: Broker, tmp_path: Path, unique: str, reliability: Matrix
) -> None:
    """Each connect takes the session from the other; they back off (capped exponential
    backoff with jitter) and each stores what it received before losing the session. Once one
    stops, the other gets the session and everything unacked."""
    one = GatewayProcess.subscribed_to(broker, tmp_path / "a", unique)
    two = GatewayProcess.subscribed_to(broker, tmp_path / "b", unique)
    messages = readings(unique, devices=50, seqs=range(300))  # 15,000 at ~1,000/s
    sent = keys_of(messages)
    stream: Stream | None = None
    one.start()
    try:
        await one.ready()
        two.start()
        stream = Stream(broker, messages, per_round=50, pause_s=0.05).start()
        await stream.wait_all_acked(timeout_s=120)
        takeovers = sum(
            [
                await g.metric(
                    "gateway_mqtt_connection_failures_total", reason="session_taken_over"
                )
                for g in (one, two)
            ]
        )
        peak = max(one.peak_rss_bytes, two.peak_rss_bytes)
        assert await two.terminate() == 0
        stopped_at = time.monotonic()

        def union() -> Counter[Key]:
            return stored(one.data_dir, include_open=True) + stored(two.data_dir)

        await eventually(lambda: sent <= union().keys(), timeout_s=120, interval_s=0.2)
        recovery = time.monotonic() - stopped_at
        assert await one.terminate() == 0
    finally:
        if stream is not None:
            stream.close()
        one.cleanup()
        two.cleanup()
    missing, duplicates, summary = accounting(stored(one.data_dir) + stored(two.data_dir), sent)
    reliability.record(
        Row(
            "two gateways with one client id (QoS 1, ~1k msg/s)",
            1,
            len(messages),
            len(missing),
            duplicates,
            [recovery],
            "one stopped to all stored",
            peak,
            f"{takeovers:.0f} takeovers while both ran, backing off; two data directories, "
            "so two dedupe windows: copies are possible (README: Stored once, its limits)",
        )
    )
    assert takeovers >= 2, "they did fight over the session"
    assert not missing, summary


def test_the_matrix_counts_what_it_should() -> None:
    """The ledger: a key stored twice is one duplicate; a key never stored is lost."""
    counts = Counter({("d", 1): 2, ("d", 2): 1})
    missing, duplicates, _ = accounting(counts, {("d", 1), ("d", 2), ("d", 3)})
    assert (missing, duplicates) == ({("d", 3)}, 1)
