"""Build configs for a test and run a Gateway in this event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from gateway import Gateway, GatewayConfig
from gateway.layout import DEAD_LETTER_DIR, segment_files
from gateway.model import format_ts
from gateway.segment_reader import complete_lines, open_segment_file
from harness.broker import Broker
from harness.poll import eventually


def make_config(
    broker: Broker, tmp_path: Path, prefix: str, **sections: dict[str, Any]
) -> GatewayConfig:
    """A config isolated by client id and topic prefix; any section can be overridden."""
    mqtt: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": f"gw-{prefix}",
        "keepalive_s": 10,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 1.0,
        "subscriptions": [{"template": f"{prefix}/{{site}}/{{device_id}}/telemetry"}],
    }
    mqtt.update(sections.pop("mqtt", {}))
    files: dict[str, Any] = {"data_dir": tmp_path / "data", "retry_min_s": 0.05, "retry_max_s": 0.5}
    files.update(sections.pop("files", {}))
    http: dict[str, Any] = {"port": 0}
    http.update(sections.pop("http", {}))
    return GatewayConfig.model_validate(
        {"mqtt": mqtt, "files": files, "http": http, "shutdown_grace_s": 20, **sections}
    )


@contextlib.asynccontextmanager
async def running(gateway: Gateway, connected: bool = True) -> AsyncIterator[Gateway]:
    """Run the gateway as a task; stop it (drain) on exit and surface its errors."""
    task = asyncio.create_task(gateway.run(), name="gateway")
    try:
        await eventually(lambda: gateway.started.is_set() or task.done(), message="started")
        if task.done():
            task.result()
        if connected:
            await eventually(
                lambda: gateway.checks()["broker_connected"] or task.done(), message="connected"
            )
        yield gateway
    finally:
        gateway.stop()
        try:
            async with asyncio.timeout(60):
                await task
        except TimeoutError:
            task.cancel()
            raise


async def settled(gateway: Gateway, messages: int, timeout_s: float = 60) -> None:
    """Wait until `gateway` has received `messages` MQTT messages and has none in flight."""
    m = gateway.metrics
    await eventually(
        lambda: (
            m.sample("gateway_messages_received_total") >= messages
            and m.sample("gateway_readings_in_flight") == 0
        ),
        timeout_s=timeout_s,
        message=f"all {messages} messages settled",
    )


def reading_payload(
    device_id: str, seq: int, metrics: dict[str, float] | None = None, ts: float | None = None
) -> bytes:
    return json.dumps(
        {
            "device_id": device_id,
            "ts": format_ts(time.time() if ts is None else ts),
            "seq": seq,
            "metrics": metrics if metrics is not None else {"temperature": 20.0 + seq % 10},
        }
    ).encode()


def topic(prefix: str, device_id: str, site: str = "site-a") -> str:
    return f"{prefix}/{site}/{device_id}/telemetry"


def fleet(prefix: str, devices: int, per_device: int) -> Iterator[tuple[str, bytes]]:
    """Readings interleaved across devices, seq 0..per_device-1 each."""
    for seq in range(per_device):
        for d in range(devices):
            device = f"dev-{d:04d}"
            yield topic(prefix, device), reading_payload(device, seq)


def read_lines(root: Path, include_open: bool = False) -> list[dict[str, Any]]:
    """Every JSON line of the segments under root, plain or gzipped (dead-letter excluded).

    Sealed segments only, unless include_open: then the complete lines of open ones too.
    """
    rows = []
    for path in segment_files(root, include_open=include_open):
        if DEAD_LETTER_DIR in path.relative_to(root).parts:
            continue
        with open_segment_file(path) as source:
            rows.extend(json.loads(line) for line in complete_lines(source))
    return rows


def read_dead_letters(data_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in segment_files(data_dir / DEAD_LETTER_DIR):
        with open_segment_file(path) as source:
            rows.extend(json.loads(line) for line in complete_lines(source))
    return rows
