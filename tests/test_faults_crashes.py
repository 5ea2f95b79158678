"""Reliability matrix, crashes: the gateway SIGKILLed ten times under load, the broker stopped
(SIGTERM) and killed (SIGKILL) ten times each with persistence, and two gateways fighting over
one client id. Each case publishes QoS 1 readings with a seq, proves from the files that none
was lost, counts the duplicates, and records a row (`make faults`; tests/support/reliability.py).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.ledger import Key, accounting, keys_of, readings, stored
from tests.support.poll import eventually
from tests.support.process import GatewayProcess
from tests.support.publish import Stream
from tests.support.reliability import Matrix, Row, stored_and_stopped
from tests.support.scrape import get

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KILLS = 10


async def ready(url: str) -> bool:
    try:
        status, _ = await get(f"{url}/readyz")
    except OSError:
        return False
    return status == 200


async def test_gateway_sigkill_x10_under_load_loses_nothing(
    broker: Broker, tmp_path: Path, unique: str, reliability: Matrix
) -> None:
    gw = GatewayProcess(broker, tmp_path, unique)
    messages = readings(unique, devices=100, seqs=range(500))  # 50,000 at ~3,000/s
    sent = keys_of(messages)
    recoveries: list[float] = []
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
            gw.kill()
            killed_at = time.monotonic()
            gw.start()
            await gw.ready(timeout_s=60)
            recoveries.append(time.monotonic() - killed_at)
        under_load = not stream.published.is_set()
        peak = max(peak, await stored_and_stopped(gw, sent, stream))
    finally:
        if stream is not None:
            stream.close()
        gw.cleanup()
    missing, duplicates, summary = accounting(stored(gw.data_dir), sent)
    reliability.record(
        Row(
            "gateway SIGKILL ×10 under load (QoS 1, ~3k msg/s)",
            KILLS,
            len(messages),
            len(missing),
            duplicates,
            recoveries,
            "kill to ready",
            peak,
            "restarted at once; a crash-left segment is recovered before subscribing",
        )
    )
    assert under_load, "the kills came while the stream was still publishing"
    assert not missing, summary


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_broker_restart_x10_with_persistence_loses_nothing(
    tmp_path: Path, unique: str, how: str, reliability: Matrix
) -> None:
    """Mosquitto with persistence and a save every second (SIGTERM saves on the way out;
    SIGKILL loses what it accepted since its last save — it has no write-ahead log)."""
    broker = Broker(tmp_path / "mosquitto", extra_config="autosave_interval 1\n").start()
    gw = GatewayProcess(broker, tmp_path, unique)
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
            await eventually(lambda: ready(gw.url), timeout_s=60, interval_s=0.05)
            recoveries.append(time.monotonic() - restarted_at)
        under_load = not stream.published.is_set()
        peak = await stored_and_stopped(gw, sent, stream)
    finally:
        if stream is not None:
            stream.close()
        gw.cleanup()
        broker.stop()
    missing, duplicates, summary = accounting(stored(gw.data_dir), sent)
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
            "Mosquitto 2.0.11, `autosave_interval 1`"
            + (
                "; after a SIGKILL it restores its last save, up to 1 s old, and sends again "
                "what was acked since: the duplicates vary from run to run"
                if how == "SIGKILL"
                else ""
            ),
        )
    )
    assert under_load, "the restarts came while the stream was still publishing"
    assert not missing, summary


async def test_two_gateways_with_one_client_id_lose_nothing(
    broker: Broker, tmp_path: Path, unique: str, reliability: Matrix
) -> None:
    """Each connect takes the session from the other; they back off (capped exponential
    backoff with jitter) and each stores what it received before losing the session. Once one
    stops, the other gets the session and everything unacked."""
    one = GatewayProcess(broker, tmp_path / "a", unique)
    two = GatewayProcess(broker, tmp_path / "b", unique)
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
            f"{takeovers:.0f} takeovers while both ran, backing off",
        )
    )
    assert takeovers >= 2, "they did fight over the session"
    assert not missing, summary


def test_the_matrix_counts_what_it_should() -> None:
    """The ledger: a key stored twice is one duplicate; a key never stored is lost."""
    counts = Counter({("d", 1): 2, ("d", 2): 1})
    missing, duplicates, _ = accounting(counts, {("d", 1), ("d", 2), ("d", 3)})
    assert (missing, duplicates) == ({("d", 3)}, 1)
