"""Stored once (issue 16): readings with a seq are written exactly once across gateway SIGKILLs,
broker restarts (SIGTERM and SIGKILL) and redeliveries, and none is lost.

Each scenario publishes QoS 1 readings at a steady rate through a real Mosquitto (the Stream of
test_e2e_faults.py, which rides out broker restarts), injects its fault ten times under that
load, and then counts from the files: every (device_id, seq) sent must be there once. Run them
alone with `make faults-once` (`pytest -m once -rP`, which also prints each scenario's counts:
sent, stored, missing, duplicated, redelivered, repeats dropped); they are part of the full
suite too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway import Gateway
from gateway.errors import REJECT_REASONS
from tests.support.broker import Broker
from tests.support.gateway import make_config, read_lines, running
from tests.support.poll import eventually
from tests.support.process import GatewayProcess
from tests.support.publish import publish
from tests.test_e2e_faults import (
    NOT_A_DIRECTORY,
    Key,
    Stream,
    accounting,
    block_partition,
    holds_all,
    keys_of,
    open_segments,
    readings,
    sample,
    stored,
    this_hour,
    written_at_least,
)

pytestmark = [pytest.mark.once, pytest.mark.slow]

FAULTS = 10
# ~2,000 QoS 1 messages a second: 100 devices, one reading each per round of 50 ms.
DEVICES = 100
PAUSE_S = 0.05


def seeded_counts(log: str) -> list[int]:
    """What each start of a gateway process seeded its dedupe window with (from its log)."""
    return [int(n) for n in re.findall(r"dedupe window seeded with (\d+) identities", log)]


# -- gateway SIGKILL ×10 -------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["always", "interval"])
async def test_ten_gateway_sigkills_under_load_lose_nothing_and_store_nothing_twice(
    broker: Broker, tmp_path: Path, unique: str, protocol: str, fsync: str
) -> None:
    """fsync = always: a kill leaves written-but-unacked readings only when it falls between a
    commit's write and its PUBACKs (some runs none). fsync = interval (0.5 s): acks wait for the
    periodic fsync, while the lines are already in the file, so every kill leaves up to half a
    second of written, unacked readings for the restarted gateway to recognise."""
    gw = GatewayProcess(broker, tmp_path, unique, protocol=protocol)
    if fsync == "interval":
        text = gw.config_path.read_text(encoding="utf-8")
        files = 'retry_max_s = 0.5\nfsync = "interval"\nfsync_interval_s = 0.5\n'
        gw.config_path.write_text(text.replace("retry_max_s = 0.5\n", files), encoding="utf-8")
    messages = readings(unique, devices=DEVICES, seqs=range(400))  # 40,000 over ~20 s
    sent = keys_of(messages)
    redelivered = repeats = 0.0
    try:
        gw.start()
        await gw.ready()
        stream = Stream(broker, messages, per_round=DEVICES, pause_s=PAUSE_S).start()
        try:
            for _ in range(FAULTS):
                # Under load: this process has written some, the stream still runs.
                await eventually(
                    written_at_least(gw, 1000), timeout_s=60, interval_s=0.02, message="writing"
                )
                redelivered += await gw.metric("gateway_mqtt_redeliveries_total")
                repeats += await gw.metric("gateway_readings_dropped_total", reason="duplicate")
                gw.kill()
                assert not stream.published.is_set(), "the kill came after the stream ended"
                gw.start()
                await gw.ready()
            await stream.wait_all_acked(timeout_s=120)
        finally:
            stream.close()
        await eventually(
            holds_all(gw.data_dir, sent), timeout_s=60, interval_s=0.2, message="all on disk"
        )
        redelivered += await gw.metric("gateway_mqtt_redeliveries_total")
        repeats += await gw.metric("gateway_readings_dropped_total", reason="duplicate")
        assert await gw.terminate() == 0, gw.log[-3000:]
    finally:
        gw.cleanup()
    assert not open_segments(gw.data_dir)
    missing, duplicates, summary = accounting(stored(gw.data_dir), sent)
    seeded = seeded_counts(gw.log)
    context = (
        f"{summary}; {redelivered:.0f} redelivered, {repeats:.0f} repeats dropped; seeded {seeded}"
    )
    print(f"gateway SIGKILL x{FAULTS} under load, MQTT {protocol}, fsync {fsync}: {context}")
    assert not missing, f"readings lost across {FAULTS} SIGKILLs: {context}"
    assert duplicates == 0, f"readings stored twice across {FAULTS} SIGKILLs: {context}"
    assert len(seeded) == FAULTS, "each restart seeds its window from the files"
    if fsync == "interval":
        assert repeats > 0, f"written, unacked readings came back and were recognised: {context}"


# -- broker SIGTERM ×10 and SIGKILL ×10 ----------------------------------------------------------


def restart_broker(broker: Broker, how: signal.Signals) -> None:
    """Stop the broker with `how` (SIGTERM: it saves its state; SIGKILL: it cannot), start it."""
    if how == signal.SIGTERM:
        broker.restart()
        return
    assert broker.proc is not None
    broker.proc.kill()
    broker.proc.wait(timeout=10)
    if broker.proc.stderr is not None:
        broker.proc.stderr.close()
    broker.proc = None
    broker.start()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_ten_broker_restarts_under_load_lose_nothing_and_store_nothing_twice(
    tmp_path: Path, unique: str, protocol: str, how: signal.Signals
) -> None:
    """SIGTERM: Mosquitto saves its state (sessions, queued and in-flight messages) and restores
    it; everything sent must be stored once. SIGKILL: it restores what it saved last, here at
    every change (its default is every 30 min). Saving is not synchronous with its PUBACK, so a
    message it acked to the publisher just before the kill, while our session was offline, can
    be lost *at the broker*; the gateway's counters then prove it never received that message
    (every reading it received is written or a repeat of one written), and the test reports it
    apart. Saving that often slows Mosquitto to a few hundred messages a second: a shorter
    stream for SIGKILL."""
    killed = how == signal.SIGKILL
    saves = "autosave_interval 1\nautosave_on_changes true\n" if killed else ""
    broker = Broker(tmp_path / "mosquitto", extra_config=saves).start()
    try:
        config = make_config(broker, tmp_path, unique, mqtt={"protocol": protocol})
        # 30,000 over ~15 s; 10,000 (as fast as the broker takes them) when killed.
        messages = readings(unique, devices=DEVICES, seqs=range(100 if killed else 300))
        sent = keys_of(messages)
        gateway = Gateway(config)
        async with running(gateway):
            subscribed = time.time()
            stream = Stream(broker, messages, per_round=DEVICES, pause_s=PAUSE_S).start()
            try:
                if killed:
                    # Our session must be in the broker's saved state before the first SIGKILL.
                    db = broker.workdir / "mosquitto.db"
                    await eventually(
                        lambda: db.exists() and db.stat().st_mtime > subscribed + 0.1,
                        timeout_s=10,
                        message="the broker saved our session",
                    )
                for n in range(FAULTS):
                    # Spread over the stream: the last one comes well before its end.
                    await eventually(
                        lambda n=n: stream.acked >= (n + 1) * len(messages) // (FAULTS + 3),
                        timeout_s=60,
                        message="the stream flows",
                    )
                    reconnects = sample(gateway, "gateway_mqtt_reconnects_total")
                    await asyncio.to_thread(restart_broker, broker, how)
                    assert not stream.done, "a restart came after the broker acked everything"
                    await eventually(
                        lambda r=reconnects: (
                            sample(gateway, "gateway_mqtt_reconnects_total") > r
                            and gateway.checks()["broker_connected"]
                        ),
                        timeout_s=30,
                        message="reconnected",
                    )
                await stream.wait_all_acked(timeout_s=120)
            finally:
                stream.close()
            with contextlib.suppress(AssertionError):  # the assertions below say what is not
                await eventually(settled(gateway, config.files.data_dir, sent), timeout_s=60)
            counts = {
                name: sample(gateway, f"gateway_{name}_total")
                for name in ("messages_received", "readings_received", "readings_written")
            }
            repeats = sample(gateway, "gateway_readings_dropped_total", reason="duplicate")
            rejected = sum(
                sample(gateway, "gateway_readings_rejected_total", reason=reason)
                for reason in REJECT_REASONS
            )
            redelivered = sample(gateway, "gateway_mqtt_redeliveries_total")
            lost_sessions = sample(gateway, "gateway_mqtt_sessions_lost_total")
    finally:
        broker.stop()
    missing, duplicates, summary = accounting(stored(config.files.data_dir), sent)
    context = (
        f"{summary}; {redelivered:.0f} redelivered, {repeats:.0f} repeats dropped, "
        f"{lost_sessions:.0f} sessions lost"
    )
    accounted = (
        counts["messages_received"] == counts["readings_received"]
        and counts["readings_received"] == counts["readings_written"] + repeats
        and rejected == 0
    )
    if missing and accounted:
        context += "; every missing reading never reached the gateway: lost at the broker"
    print(f"broker {how.name} x{FAULTS} under load, MQTT {protocol}: {context}")
    assert lost_sessions == 0, f"the broker kept our session: {context}"
    assert duplicates == 0, f"readings stored twice across {FAULTS} broker restarts: {context}"
    # Every message the gateway received is accounted for: written, or a repeat of one written.
    assert accounted, f"{counts}, {rejected:.0f} rejected; {context}"
    if killed:
        # So a missing reading never reached the gateway: the broker acked it, then lost it.
        assert len(missing) <= DEVICES, f"more than the broker's loss window: {context}"
    else:
        assert not missing, f"readings lost across {FAULTS} broker restarts: {context}"


def settled(gateway: Gateway, data_dir: Path, sent: set[Key]) -> Callable[[], bool]:
    """Every message received is through the pipeline, and every key is on disk or (a broker
    lost some) nothing has arrived for 2 s."""
    on_disk = holds_all(data_dir, sent)
    last: dict[str, float] = {"count": -1.0, "since": time.monotonic()}

    def check() -> bool:
        count = sample(gateway, "gateway_messages_received_total")
        if count != last["count"]:
            last.update(count=count, since=time.monotonic())
        through = (
            sample(gateway, "gateway_readings_in_flight") == 0
            and sample(gateway, "gateway_readings_received_total") == count
        )
        return through and (on_disk() or time.monotonic() - last["since"] > 2.0)

    return check


# -- a device that restarts its seq ---------------------------------------------------------------


async def test_a_device_that_restarts_its_seq_from_1_loses_nothing(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    """The ts is part of the identity: seq 1, 2, 3 again after a reboot are new readings."""
    config = make_config(broker, tmp_path, unique)
    before = readings(unique, devices=3, seqs=range(1, 51), ts=this_hour() + 1.0)
    after = readings(unique, devices=3, seqs=range(1, 51), ts=this_hour() + 2.0)
    async with running(Gateway(config)) as gateway:
        await publish(broker.host, broker.port, before)
        await publish(broker.host, broker.port, after + before[:30])  # + 30 true repeats
        await eventually(
            lambda: sample(gateway, "gateway_readings_received_total") == 330, message="all in"
        )
        await eventually(lambda: sample(gateway, "gateway_readings_in_flight") == 0)
        assert sample(gateway, "gateway_readings_written_total") == 300
        assert sample(gateway, "gateway_readings_dropped_total", reason="duplicate") == 30
    lines = read_lines(config.files.data_dir)
    identities = [(r["device_id"], r["seq"], r["ts"]) for r in lines]
    assert len(identities) == len(set(identities)) == 300


# -- a crash between claim and write ----------------------------------------------------------


async def test_readings_claimed_but_not_written_before_a_sigkill_are_written_after_it(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    """The window is claimed when a batch is encoded, before it is written. Here every write
    fails (the partition cannot be created), the gateway is SIGKILLed with the batch claimed and
    unwritten, and the disk is repaired: the redeliveries must be written, not taken for
    repeats, and each exactly once."""
    gw = GatewayProcess(broker, tmp_path, unique)
    ts = this_hour()
    blocker = block_partition(gw.data_dir, ts)
    messages = readings(unique, devices=20, seqs=range(10), ts=ts)  # 200
    sent = keys_of(messages)
    try:
        gw.start()
        await gw.ready()
        await publish(broker.host, broker.port, messages)

        async def claimed_not_written() -> bool:
            # The sink retries its first batch for ever: that batch is claimed, nothing written.
            return (
                await gw.metric("gateway_dedupe_identities") > 0
                and await gw.metric("gateway_write_errors_total", **NOT_A_DIRECTORY) > 0
            )

        await eventually(claimed_not_written, message="claimed, failing to write")
        assert await gw.metric("gateway_readings_written_total") == 0
        gw.kill()
        blocker.unlink()
        gw.start()
        await gw.ready()
        await eventually(holds_all(gw.data_dir, sent), message="redelivered and written")
        assert await gw.metric("gateway_readings_dropped_total", reason="duplicate") == 0
        assert await gw.terminate() == 0
    finally:
        gw.cleanup()
    missing, duplicates, summary = accounting(stored(gw.data_dir), sent)
    assert not missing, summary
    assert duplicates == 0, summary
