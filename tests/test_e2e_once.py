"""Stored once (issue 16), end to end: a device restarting its seq loses nothing, and a batch
claimed by the dedupe window but never written is written after a SIGKILL. Gateway SIGKILLs and
broker restarts under load, 0 lost and 0 duplicated, are cases of the reliability matrix
(tests/test_faults_crashes.py, `make faults`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Gateway
from harness.broker import Broker
from harness.gateway import GatewayProcess
from harness.poll import eventually
from tests.support.gateway import make_config, read_lines, running
from tests.support.ledger import accounting, holds_all, keys_of, readings, stored
from tests.support.publish import publish
from tests.test_e2e_faults import NOT_A_DIRECTORY, block_partition, sample, this_hour

pytestmark = pytest.mark.slow


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
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique)
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
