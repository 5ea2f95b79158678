"""Faults end to end: a killed gateway, a restarted broker, SIGTERM mid-stream, a disk that fails.

Each test publishes QoS 1 readings through a real Mosquitto and proves from the files that none
was lost. Duplicates are allowed wherever the README allows them (after a crash or a reconnect);
they are counted and shown in the assertion messages.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from gateway import Gateway
from gateway.errors import DrainError
from gateway.hangups import PARENT_DEATH_SIGNAL
from gateway.layout import hour_partition
from harness.broker import Broker
from harness.gateway import GatewayProcess
from harness.poll import eventually
from harness.scrape import get, scrape, value
from tests.support.gateway import make_config, read_lines, running
from tests.support.ledger import accounting, holds_all, keys_of, open_segments, readings, stored
from tests.support.publish import Stream, publish

# -- the gateway as a process, as operators run it ----------------------------------------------


@pytest_asyncio.fixture
async def gateway_process(
    broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique, protocol=protocol)
    try:
        yield gw
    finally:
        gw.cleanup()


def written_at_least(gw: GatewayProcess, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await gw.metric("gateway_readings_written_total") >= count

    return check


# -- 1. SIGKILL ------------------------------------------------------------------------------


async def test_a_gateway_killed_mid_stream_loses_nothing_once_restarted(
    broker: Broker, gateway_process: GatewayProcess, unique: str
) -> None:
    gw = gateway_process
    streamed = readings(unique, devices=100, seqs=range(60))  # 6,000
    while_down = readings(unique, devices=100, seqs=range(60, 70))  # 1,000
    sent = keys_of(streamed) | keys_of(while_down)
    gw.start()
    await gw.ready()
    stream = Stream(broker, streamed, per_round=100, pause_s=0.06).start()
    try:
        await eventually(
            written_at_least(gw, 600), timeout_s=60, interval_s=0.05, message="600 written"
        )
        gw.kill()
        assert not stream.published.is_set(), "the kill came after the stream ended"
        left_open = open_segments(gw.data_dir)
        assert left_open, "a killed gateway leaves its segment open"
        await publish(broker.host, broker.port, while_down)
        await stream.wait_all_acked()
    finally:
        stream.close()

    gw.start()
    await gw.ready()
    # Recovery ran before the gateway subscribed: the crash-left segments are sealed.
    assert not any(path.exists() for path in left_open), "recovery sealed the crash-left segments"
    assert all(path.with_suffix("").exists() for path in left_open)
    samples = await scrape(gw.url)
    torn = samples.samples.get("gateway_torn_lines_recovered_total", [])
    assert any(ls == {"sink": "files"} for ls, _ in torn), "the torn-lines counter is exported"
    assert value(samples, "gateway_segments_sealed_total", sink="files") >= len(left_open)
    await eventually(
        holds_all(gw.data_dir, sent), timeout_s=60, interval_s=0.2, message="all on disk"
    )
    assert await gw.terminate() == 0

    assert not open_segments(gw.data_dir), "a clean stop seals every segment"
    missing, _, summary = accounting(stored(gw.data_dir), sent)
    assert not missing, f"readings lost across SIGKILL ({torn:.0f} torn lines cut): {summary}"


# -- 2. broker restart --------------------------------------------------------------------------


async def test_a_broker_restart_mid_stream_loses_nothing_and_the_gateway_reconnects(
    own_broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    config = make_config(own_broker, tmp_path, unique, mqtt={"protocol": protocol})
    data_dir = config.files.data_dir
    before = readings(unique, devices=50, seqs=range(20))  # 1,000
    during = readings(unique, devices=50, seqs=range(20, 80))  # 3,000 over ~3 s
    after = readings(unique, devices=50, seqs=range(80, 100))  # 1,000
    sent = keys_of(before) | keys_of(during) | keys_of(after)
    async with running(Gateway(config)) as gateway:
        await publish(own_broker.host, own_broker.port, before)
        stream = Stream(own_broker, during, per_round=50, pause_s=0.05).start()
        try:
            await eventually(lambda: stream.acked >= 500, message="the stream flows")
            await asyncio.to_thread(own_broker.restart)
            assert not stream.published.is_set(), "the restart came after the stream ended"

            async def back() -> bool:
                samples = await scrape(gateway.http_url)
                status, _ = await get(f"{gateway.http_url}/readyz")
                return value(samples, "gateway_mqtt_reconnects_total") > 0 and status == 200

            await eventually(back, timeout_s=30, interval_s=0.1, message="reconnected and ready")
            await stream.wait_all_acked()
        finally:
            stream.close()
        await publish(own_broker.host, own_broker.port, after)
        await eventually(
            holds_all(data_dir, sent), timeout_s=60, interval_s=0.2, message="all on disk"
        )
        samples = await scrape(gateway.http_url)
    assert value(samples, "gateway_mqtt_reconnects_total") >= 1
    missing, _, summary = accounting(stored(data_dir), sent)
    assert not missing, f"readings lost across a broker restart: {summary}"


# -- 3. SIGTERM -------------------------------------------------------------------------------


async def test_sigterm_mid_stream_drains_seals_exits_0_and_leaves_the_rest_at_the_broker(
    broker: Broker, gateway_process: GatewayProcess, unique: str
) -> None:
    gw = gateway_process
    streamed = readings(unique, devices=100, seqs=range(40))  # 4,000
    sent = keys_of(streamed)
    gw.start()
    await gw.ready()
    stream = Stream(broker, streamed, per_round=100, pause_s=0.06).start()
    try:
        await eventually(
            written_at_least(gw, 500), timeout_s=60, interval_s=0.05, message="500 written"
        )
        code = await gw.terminate()
        assert not stream.published.is_set(), "SIGTERM came after the stream ended"
        # The broker keeps accepting: what the gateway did not take is queued for its session.
        await stream.wait_all_acked()
    finally:
        stream.close()
    assert code == 0, gw.log[-3000:]
    assert not open_segments(gw.data_dir), "segments are sealed on SIGTERM"
    assert "drained: everything received is stored and acked" in gw.log, gw.log[-3000:]
    first_run = stored(gw.data_dir)
    assert 0 < len(first_run) < len(sent)

    gw.start()
    await gw.ready()
    await eventually(
        holds_all(gw.data_dir, sent), timeout_s=60, interval_s=0.2, message="all on disk"
    )
    assert await gw.terminate() == 0
    assert not open_segments(gw.data_dir)
    missing, duplicates, summary = accounting(stored(gw.data_dir), sent)
    assert not missing, f"readings lost across SIGTERM: {summary}"
    # A drained stop acked everything it stored, so the broker had nothing of it to redeliver.
    assert duplicates == 0, f"a clean stop redelivered stored readings: {summary}"


async def test_the_parent_death_signal_drains_once_however_often_it_comes(
    gateway_process: GatewayProcess,
) -> None:
    """PARENT_DEATH_SIGNAL is what a worker gets when its supervisor dies, once per thread of
    the dying supervisor: the first drains, the rest must not cut the drain."""
    gw = gateway_process
    gw.start()
    await gw.ready()
    assert gw.proc is not None
    for _ in range(3):
        gw.proc.send_signal(PARENT_DEATH_SIGNAL)
    assert await gw.exited() == 0, gw.log[-3000:]
    assert gw.log.count("the supervisor is gone: draining") == 1
    assert "stopped cleanly" in gw.log


# -- 4. and 5. a partition the sink cannot create -------------------------------------------


NOT_A_DIRECTORY = {"sink": "files", "reason": "not_a_directory"}


def sample(gateway: Gateway, name: str, **labels: str) -> float:
    """A sample of an in-process gateway's registry; 0 when absent."""
    return gateway.registry.get_sample_value(name, labels) or 0.0


def block_partition(data_dir: Path, ts: float) -> Path:
    """Put a regular file where the readings' hour directory must go (mkdir fails: EEXIST)."""
    blocker = data_dir / hour_partition(ts)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory\n", encoding="utf-8")
    return blocker


def this_hour() -> float:
    """The start of the current UTC hour: readings stamped with it share one partition."""
    return float(int(time.time() // 3600) * 3600)


async def test_a_write_failure_acks_nothing_fails_readyz_and_recovers_exactly_once(
    broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    config = make_config(broker, tmp_path, unique, mqtt={"protocol": protocol})
    ts = this_hour()
    blocker = block_partition(config.files.data_dir, ts)
    messages = readings(unique, devices=100, seqs=range(5), ts=ts)  # 500
    sent = keys_of(messages)
    async with running(Gateway(config)) as gateway:
        url = gateway.http_url
        await publish(broker.host, broker.port, messages)

        async def refused() -> bool:
            samples = await scrape(url)
            status, body = await get(f"{url}/readyz")
            return (
                status == 503
                and json.loads(body)["checks"]["sink_writable"] is False
                and value(samples, "gateway_write_errors_total", **NOT_A_DIRECTORY) > 0
                and value(samples, "gateway_unacked_messages") > 0
            )

        await eventually(refused, message="503, not_a_directory counted, messages unacked")
        samples = await scrape(url)
        assert value(samples, "gateway_readings_written_total") == 0
        assert value(samples, "gateway_sink_writable", sink="files") == 0

        blocker.unlink()

        async def recovered() -> bool:
            samples = await scrape(url)
            status, _ = await get(f"{url}/readyz")
            return (
                value(samples, "gateway_readings_written_total") == len(sent)
                and value(samples, "gateway_unacked_messages") == 0
                and status == 200
            )

        await eventually(recovered, message="all written, all acked, ready")
        samples = await scrape(url)
    assert value(samples, "gateway_mqtt_redeliveries_total") == 0
    counts = stored(config.files.data_dir)
    missing, duplicates, summary = accounting(counts, sent)
    assert not missing, summary
    assert duplicates == 0, f"written exactly once: {summary}"


async def test_acks_wait_for_the_disk_so_a_stop_while_writes_fail_loses_nothing(
    own_broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    config = make_config(own_broker, tmp_path, unique, mqtt={"protocol": protocol})
    config = config.model_copy(update={"shutdown_grace_s": 2})
    ts = this_hour()
    blocker = block_partition(config.files.data_dir, ts)
    messages = readings(unique, devices=100, seqs=range(5), ts=ts)  # 500
    sent = keys_of(messages)
    first = Gateway(config)

    async def stop_while_stuck() -> None:
        async with running(first):
            await publish(own_broker.host, own_broker.port, messages)
            await eventually(
                lambda: (
                    sample(first, "gateway_unacked_messages") > 0
                    and sample(first, "gateway_write_errors_total", **NOT_A_DIRECTORY) > 0
                ),
                message="received, failing to write, unacked",
            )
            # Leaving the block stops it: the drain cannot finish within 2 s and gives up.

    with pytest.raises(DrainError, match=r"within 2s: \d+ messages left unacked"):
        await stop_while_stuck()
    assert sample(first, "gateway_readings_written_total") == 0
    assert not read_lines(config.files.data_dir, include_open=True)

    blocker.unlink()
    second = Gateway(config)
    async with running(second):
        await eventually(
            lambda: sample(second, "gateway_readings_written_total") >= len(sent),
            message="every reading redelivered and written",
        )
    redelivered = sample(second, "gateway_mqtt_redeliveries_total")
    assert redelivered > 0, "the unacked in-flight messages came back flagged DUP"
    missing, _, summary = accounting(stored(config.files.data_dir), sent)
    assert not missing, f"readings lost though never acked: {summary}"


async def test_a_stop_whose_drain_fails_exits_non_zero_saying_what_is_left_unacked(
    broker: Broker, gateway_process: GatewayProcess, unique: str
) -> None:
    """Issue 11, problem 4: it used to log "stopped cleanly" and exit 0."""
    gw = gateway_process
    text = gw.config_path.read_text(encoding="utf-8")
    gw.config_path.write_text(text.replace("shutdown_grace_s = 20", "shutdown_grace_s = 2"))
    ts = this_hour()
    blocker = block_partition(gw.data_dir, ts)
    messages = readings(unique, devices=20, seqs=range(5), ts=ts)  # 100
    gw.start()
    await gw.ready()
    await publish(broker.host, broker.port, messages)

    async def stuck() -> bool:
        return await gw.metric("gateway_unacked_messages") > 0 and (
            await gw.metric("gateway_write_errors_total", **NOT_A_DIRECTORY) > 0
        )

    await eventually(stuck, message="received, failing to write, unacked")
    assert await gw.terminate() == 1, gw.log[-3000:]
    assert re.search(
        r"stopped without draining: the drain did not finish within 2s: \d+ messages left "
        r"unacked; the broker redelivers them on the next start",
        gw.log,
    ), gw.log[-3000:]
    assert "stopped cleanly" not in gw.log

    blocker.unlink()
    gw.start()
    await gw.ready()
    await eventually(
        holds_all(gw.data_dir, keys_of(messages)), message="redelivered on the next start"
    )
    assert await gw.terminate() == 0
