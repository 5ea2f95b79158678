"""One process's share of the fleet: connect, send, drain, and record what was sent."""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.manifest import write_device_lines
from simulators.hub import Hub
from simulators.publisher import ConnectError
from simulators.record import DeviceLog
from simulators.sender import Sender
from simulators.spec import RunSpec
from simulators.stream import Message, device_for, device_messages

PROGRESS_EVERY_S = 0.5
# File descriptors a process needs beyond its connections (stdio, epoll, pipes, threads).
FD_HEADROOM = 256


@dataclass
class Progress:
    """A live snapshot, sent from each process to the one printing the status line."""

    sent: int = 0
    errors: int = 0
    connections: int = 0
    reconnects: int = 0

    def __add__(self, other: Progress) -> Progress:
        return Progress(
            self.sent + other.sent,
            self.errors + other.errors,
            self.connections + other.connections,
            self.reconnects + other.reconnects,
        )


@dataclass
class WorkerResult:
    """What one process did."""

    process: int
    devices: int
    messages_sent: int = 0
    readings_sent: int = 0
    errors: int = 0
    reconnects: int = 0
    connections: int = 0
    unacked: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    first_at: float | None = None  # epoch s of the first publish
    last_at: float | None = None  # epoch s when the last message was written to its socket
    # --transport raw: epoch s when the broker had it all (acked, or read to EOF), and this
    # process's CPU seconds from its first send until then.
    done_at: float | None = None
    cpu_s: float = 0.0
    part: str | None = None
    error: str | None = None


def raise_fd_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit for `needed` sockets; ConnectError when the hard one is
    too low (one connection per device for thousands of devices needs it)."""
    want = needed + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want or soft == resource.RLIM_INFINITY:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:
        raise ConnectError(
            f"{needed} connections need {want} file descriptors, the limit is {hard}: "
            "use --connections pool, more --processes, or raise `ulimit -n`"
        )


async def run_worker(
    spec: RunSpec,
    *,
    process: int,
    first: int,
    stop_index: int,
    report: Callable[[Progress], None],
    part: Path | None,
    stopped_early: Callable[[], bool] = lambda: False,
) -> WorkerResult:
    """Publish for devices first..stop_index-1 of the fleet; write their manifest lines to
    `part`. Stops early on SIGINT/SIGTERM, still draining and recording what was sent."""
    result = WorkerResult(process=process, devices=stop_index - first)
    devices = [device_for(spec, i) for i in range(first, stop_index)]
    logs = [DeviceLog.of(spec, d) for d in devices]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if stopped_early():  # a stop that came before these handlers were in place
        stop.set()
    hub = Hub(spec.broker, spec.qos)
    sender: Sender | None = None

    def snapshot() -> Progress:
        sent = sender.sent if sender else 0
        errors = sender.errors if sender else 0
        return Progress(sent, errors, hub.connected, hub.reconnects)

    async def progress() -> None:
        while True:
            report(snapshot())
            await asyncio.sleep(PROGRESS_EVERY_S)

    background = [
        asyncio.create_task(hub.keepalive(), name="sim.keepalive"),
        asyncio.create_task(progress(), name="sim.progress"),
    ]
    try:
        if spec.connections == "per-device":
            raise_fd_limit(len(devices))
            conns = await hub.open([f"{spec.client_id_prefix}{d.device_id}" for d in devices])
        else:
            size = min(spec.pool_size, len(devices))
            raise_fd_limit(size)
            pool = await hub.open(
                [f"{spec.client_id_prefix}pool-{process}-{k}" for k in range(size)]
            )
            conns = [pool[i % size] for i in range(len(devices))]
        result.connections = len(hub.publishers)
        count = spec.count
        if count is None and spec.prebuilt and spec.duration_s and spec.rate_hz > 0:
            count = math.ceil(spec.duration_s * spec.rate_hz) + 1
        plans: list[Iterator[Message]] = [device_messages(spec, d, count) for d in devices]
        if spec.prebuilt:
            # Built before the clock starts, so a benchmark times publishing alone.
            plans = [iter(list(plan)) for plan in plans]
        sender = Sender(spec=spec, logs=logs, conns=conns, plans=plans, hub=hub, stop=stop)
        if spec.rate_hz > 0:
            await sender.paced()
        else:
            await sender.blast()
        # A broker that stopped reading must not hang the run: what is unwritten by then
        # shows as unacknowledged (QoS 1) or is simply lost (QoS 0).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(spec.drain_timeout_s):
                await hub.written()
        result.last_at = time.time()
        if spec.qos == 1:
            await hub.drain(spec.drain_timeout_s)
            result.unacked = hub.unacked
        if spec.linger_s:
            await asyncio.sleep(spec.linger_s)
    except ConnectError as exc:
        result.error = str(exc)
    finally:
        for task in background:
            task.cancel()
        await hub.close()
    if sender is not None:
        result.messages_sent = sender.sent
        result.errors = sender.errors
        result.first_at = sender.first_at
    result.reconnects = hub.reconnects
    result.readings_sent = sum(log.seqs.count() for log in logs)
    faults: Counter[str] = Counter()
    for log in logs:
        faults.update(f.kind for f in log.faults)
    result.faults = dict(faults)
    report(snapshot())
    if part is not None:
        write_device_lines(part, (log.to_record() for log in logs))
        result.part = str(part)
    return result
