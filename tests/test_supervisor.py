"""`gateway run --processes N`: workers on a shared subscription, supervised, metrics merged."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.request
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

import pytest_asyncio

from gateway.layout import HOUR_GLOB, OPEN_SUFFIX
from gateway.metrics import MergedWorkers, Registry
from harness.broker import Broker
from harness.gateway import GatewayProcess
from harness.poll import eventually
from harness.scrape import get, scrape, value
from tests.support.children import is_alive
from tests.support.gateway import fleet, read_lines
from tests.support.publish import publish


@pytest_asyncio.fixture
async def supervised(broker: Broker, tmp_path: Path, unique: str):  # type: ignore[no-untyped-def]
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique)
    try:
        yield gw
    finally:
        gw.cleanup()


async def _written(gw: GatewayProcess) -> float:
    return value(await scrape(gw.url), "gateway_readings_written_total")


async def test_two_workers_share_the_load_restart_when_killed_and_lose_nothing(
    broker: Broker, supervised: GatewayProcess, unique: str
) -> None:
    gw = supervised
    gw.start("--processes", "2")
    await gw.ready(timeout_s=60)
    first = list(fleet(unique, devices=50, per_device=20))
    await publish(broker.host, broker.port, first)
    await eventually(lambda: _at_least(gw, 1000), timeout_s=60, message="1000 written")
    samples = await scrape(gw.url)
    assert value(samples, "gateway_workers") == 2
    assert value(samples, "gateway_mqtt_connected") == 2, "both workers connected"
    assert value(samples, "gateway_messages_received_total") == 1000

    pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)", gw.log)]
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    await eventually(
        lambda: "restarting in" in gw.log, timeout_s=30, message="the supervisor notices"
    )
    second = list(fleet(unique, devices=50, per_device=40))[1000:]
    await publish(broker.host, broker.port, second)
    await gw.ready(timeout_s=60)
    await eventually(
        lambda: _restarted(gw), timeout_s=60, message="the dead worker is back and counted"
    )
    # The killed worker's unacked messages wait in its session until it is back.
    await eventually(lambda: _stored_at_least(gw, 2000), timeout_s=60, message="all stored")
    assert await gw.terminate() == 0
    rows = read_lines(gw.data_dir)
    keys = Counter((r["device_id"], r["seq"]) for r in rows)
    assert len(keys) == 2000, "nothing missing"
    writers = {p.name.rsplit("-", 1)[0] for p in gw.data_dir.glob("date=*/hour=*/*.jsonl")}
    assert writers == {f"gw-{unique}-w0", f"gw-{unique}-w1"}
    assert not list(gw.data_dir.glob("**/*.open"))


async def _at_least(gw: GatewayProcess, count: int) -> bool:
    return await _written(gw) >= count


async def _restarted(gw: GatewayProcess) -> bool:
    samples = await scrape(gw.url)
    return value(samples, "gateway_worker_restarts_total") >= 1 and (
        value(samples, "gateway_workers") == 2
    )


async def _stored_at_least(gw: GatewayProcess, count: int) -> bool:
    # Metrics restart with a worker, so count what is on disk (open segments included).
    rows = read_lines(gw.data_dir, include_open=True)
    return len({(r["device_id"], r["seq"]) for r in rows}) >= count


async def test_readyz_of_the_supervisor_names_each_worker(
    supervised: GatewayProcess,
) -> None:
    supervised.start("--processes", "2")
    await supervised.ready(timeout_s=60)
    status, body = await get(f"{supervised.url}/readyz")
    assert status == 200
    assert '"worker_0_ready": true' in body
    assert '"worker_1_ready": true' in body


async def test_merged_metrics_are_fetched_from_the_workers_at_each_scrape(
    broker: Broker, supervised: GatewayProcess, unique: str
) -> None:
    """A scrape of the supervisor shows what the workers show now, not a copy from its last
    poll (up to a second old)."""
    gw = supervised
    gw.start("--processes", "2")
    await gw.ready(timeout_s=60)
    workers = re.findall(r"worker \d started \(pid \d+, (http://[^)]+)\)", gw.log)
    assert len(workers) == 2

    async def workers_written() -> float:
        return sum([await _written_at(url) for url in workers])

    await publish(broker.host, broker.port, list(fleet(unique, devices=20, per_device=25)))
    await eventually(lambda: _equals(workers_written(), 500), timeout_s=60, message="500 written")
    assert await _written(gw) == 500  # one scrape, no waiting for the supervisor's poll

    # POST /seal to the supervisor reaches every worker: nothing stays in an open segment.
    still_open = len(list(gw.data_dir.glob(f"{HOUR_GLOB}/*{OPEN_SUFFIX}")))
    assert still_open >= 1
    request = urllib.request.Request(f"{gw.url}/seal", method="POST", data=b"")
    body = await asyncio.to_thread(_read, request)
    assert json.loads(body) == {"sealed": {"files": still_open, "dead_letter": 0}}
    assert not list(gw.data_dir.glob("**/*.open"))
    assert len(read_lines(gw.data_dir)) == 500


async def _written_at(url: str) -> float:
    return value(await scrape(url), "gateway_readings_written_total")


async def _equals(total: Awaitable[float], expected: float) -> bool:
    return await total == expected


def _read(request: urllib.request.Request) -> bytes:
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def _worker_pids(gw: GatewayProcess) -> list[int]:
    return [int(p) for p in re.findall(r"worker \d started \(pid (\d+)", gw.log)]


async def test_workers_stop_when_their_supervisor_is_killed_and_a_new_one_starts_cleanly(
    broker: Broker, supervised: GatewayProcess, tmp_path: Path, unique: str
) -> None:
    """Issue 11, problem 3: SIGKILL of the supervisor used to leave its workers running, and a
    new supervisor started twins of them (same client ids) that fought them."""
    gw = supervised
    gw.start("--processes", "2")
    await gw.ready(timeout_s=60)
    await publish(broker.host, broker.port, list(fleet(unique, devices=10, per_device=10)))
    await eventually(lambda: _at_least(gw, 100), timeout_s=60, message="100 written")
    pids = _worker_pids(gw)
    assert len(pids) == 2
    gw.kill()
    await eventually(
        lambda: not any(is_alive(pid) for pid in pids),
        timeout_s=60,
        message="the workers stop with their supervisor",
    )
    assert not list(gw.data_dir.glob("**/*.open")), "each worker drained and sealed (SIGTERM)"

    gw.start("--processes", "2")
    await gw.ready(timeout_s=60)
    await publish(broker.host, broker.port, list(fleet(unique, devices=10, per_device=20))[100:])
    await eventually(lambda: _stored_at_least(gw, 200), timeout_s=60, message="all stored")
    assert await gw.terminate() == 0, gw.log[-3000:]


async def test_a_supervisor_waits_for_a_live_worker_of_an_earlier_run_instead_of_a_twin(
    broker: Broker, supervised: GatewayProcess, tmp_path: Path, unique: str
) -> None:
    """A worker that outlived its supervisor (here: a gateway holding worker 0's client id and
    data directory) is named, and waited for, before any worker starts."""
    gw = supervised
    earlier = GatewayProcess.subscribed_to(
        broker, tmp_path / "earlier", f"{unique}-w0", data_dir=gw.data_dir
    )
    try:
        earlier.start()
        await earlier.ready()
        gw.start("--processes", "2")
        assert earlier.proc is not None
        message = (
            f"client id gw-{unique}-w0 is still in use in {gw.data_dir} by pid "
            f"{earlier.proc.pid}, a worker of an earlier run"
        )
        await eventually(lambda: message in gw.log, timeout_s=30, message="it says so")
        assert "started (pid" not in gw.log, "no worker started beside it"
        status, _ = await get(f"{gw.url}/readyz")
        assert status == 503
        assert await earlier.terminate() == 0
    finally:
        earlier.cleanup()
    await gw.ready(timeout_s=60)
    assert len(_worker_pids(gw)) == 2


async def test_a_second_supervisor_on_the_same_directory_and_client_id_refuses_to_start(
    broker: Broker, supervised: GatewayProcess, tmp_path: Path, unique: str
) -> None:
    gw = supervised
    gw.start("--processes", "2")
    await gw.ready(timeout_s=60)
    second = GatewayProcess.subscribed_to(broker, tmp_path / "second", unique, data_dir=gw.data_dir)
    try:
        second.start("--processes", "2")
        assert await second.exited() == 1
    finally:
        second.cleanup()
    assert gw.proc is not None
    assert f"data directory {gw.data_dir} is in use" in second.log
    assert f"pid {gw.proc.pid}" in second.log
    assert "started (pid" not in second.log


def test_merged_metrics_sum_counters_but_take_the_least_silence_of_a_subscription() -> None:
    """A shared subscription one worker hears from is not silent: the merge is the least."""
    merged = MergedWorkers()
    for worker, silence, written in (("w0", 400.0, 10), ("w1", 2.0, 5)):
        merged.update(
            worker,
            "# TYPE gateway_subscription_silence_seconds gauge\n"
            f'gateway_subscription_silence_seconds{{subscription="0"}} {silence}\n'
            "# TYPE gateway_readings_written_total counter\n"
            f"gateway_readings_written_total {written}\n",
        )
    registry = Registry()
    registry.register(merged)
    silence = registry.get_sample_value(
        "gateway_subscription_silence_seconds", {"subscription": "0"}
    )
    assert silence == 2.0
    assert registry.get_sample_value("gateway_readings_written_total") == 15
