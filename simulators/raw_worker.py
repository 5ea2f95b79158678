"""One process's share of a `--transport raw` run: build, encode, connect, send flat out.

Everything costly happens before the clock starts: the stream builds the messages (the same
bytes the MQTT transport sends), raw_packets.py (amqtt's codec) encodes them into one buffer per
connection in the order the MQTT transport's blast sends them (every device in turn, so each
device's messages stay in order on its one connection). Publishing is then non-blocking
`send()`s of large slices, PUBACKs read in bulk and checked against the exact bytes expected:
near zero CPU, so the broker, not this process, is the bottleneck.
"""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from gateway.manifest import write_device_lines
from simulators import raw_packets as wire
from simulators.raw_connection import Connection, RawConnectionError
from simulators.record import DeviceLog
from simulators.spec import RunSpec
from simulators.stream import device_for, device_messages
from simulators.worker import WorkerResult

FINISH_TIMEOUT_S = 10.0
RECV_BYTES = 256 * 1024


def build(
    spec: RunSpec, *, process: int, first: int, stop: int, connections: int, window: int
) -> tuple[list[DeviceLog], list[Connection]]:
    """The messages of devices first..stop-1, in gateway-sim's blast order (every device in
    turn; device i on connection i % connections), encoded per connection."""
    devices = [device_for(spec, i) for i in range(first, stop)]
    logs = [DeviceLog.of(spec, d) for d in devices]
    size = min(connections, len(devices))
    conns = [
        Connection(f"{spec.client_id_prefix}pool-{process}-{k}", spec.qos, window)
        for k in range(size)
    ]
    plans = [list(device_messages(spec, d, spec.count)) for d in devices]
    longest = max((len(p) for p in plans), default=0)
    for round_ in range(longest):
        for i, plan in enumerate(plans):
            if round_ < len(plan):
                conns[i % size].add(logs[i], plan[round_])
    for conn in conns:
        conn.seal()
    return logs, conns


def blast(conns: list[Connection], timeout_s: float) -> tuple[float, float]:
    """Send everything, reading PUBACKs as they come; (first send, last write) in epoch s.
    RawConnectionError on a failed connection; TimeoutError when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    first_at = time.time()
    for conn in conns:  # connection 0 first: it carries the process's first device
        conn.write()
        conn.batch_acks()
    written_at = first_at
    with selectors.DefaultSelector() as sel:
        interest: dict[Connection, int] = {}

        def watch(conn: Connection) -> None:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.wants_write else 0)
            if interest.get(conn) != want:
                assert conn.sock is not None
                if conn in interest:
                    sel.modify(conn.sock, want, conn)
                else:
                    sel.register(conn.sock, want, conn)
                interest[conn] = want

        for conn in conns:
            watch(conn)
        pending = sum(1 for c in conns if not c.done)
        unwritten = sum(1 for c in conns if c.offset < len(c.buffer))
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"blast not done within {timeout_s:g} s")
            for key, mask in sel.select(min(left, 1.0)):
                conn = key.data
                was_done, was_written = conn.done, conn.offset == len(conn.buffer)
                if mask & selectors.EVENT_READ:
                    conn.read()
                if mask & selectors.EVENT_WRITE:
                    conn.write()
                conn.batch_acks()
                if not was_written and conn.offset == len(conn.buffer):
                    unwritten -= 1
                    if not unwritten:
                        written_at = time.time()
                if not was_done and conn.done:
                    pending -= 1
                watch(conn)
    return first_at, written_at


def finish(conns: list[Connection]) -> None:
    """DISCONNECT, half-close, then read until the broker's EOF: once it closes, it has read
    every PUBLISH before the DISCONNECT (§3.14), which is how QoS 0 knows it all arrived."""
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    for conn in conns:
        assert conn.sock is not None
        conn.sock.setblocking(True)
        conn.sock.sendall(wire.DISCONNECT)
        conn.sock.shutdown(socket.SHUT_WR)
    for conn in conns:
        assert conn.sock is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RawConnectionError(
                    f"{conn.client_id}: no EOF from the broker after DISCONNECT"
                )
            conn.sock.settimeout(left)
            try:
                data = conn.sock.recv(RECV_BYTES)
            except OSError as exc:
                raise RawConnectionError(f"{conn.client_id}: after DISCONNECT: {exc}") from exc
            if not data:
                conn.finished = True
                break


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def record(result: WorkerResult, logs: list[DeviceLog], conns: list[Connection]) -> None:
    """Count what went out (after the clock: DeviceLog.sent costs a little per message)."""
    for conn in conns:
        written = conn.written
        for log, message in conn.sent[:written]:
            log.sent(message)
        result.messages_sent += written
        if conn.qos:
            result.unacked += written - conn.acked
    result.readings_sent = sum(log.seqs.count() for log in logs)
    faults: Counter[str] = Counter()
    for log in logs:
        faults.update(f.kind for f in log.faults)
    result.faults = dict(faults)


def timeout_for(spec: RunSpec) -> float:
    """How long the blast may take: a minute, plus a second per 10,000 messages."""
    return 60 + spec.devices * (spec.count or 0) / 10_000


def run_raw_worker(
    spec: RunSpec,
    *,
    process: int,
    first: int,
    stop_index: int,
    part: Path | None,
    ready: Callable[[], object] | None = None,
) -> WorkerResult:
    """Build, connect, wait at `ready` (a callable, e.g. a barrier's wait) so that every process
    starts together, then blast; the manifest lines of these devices go to `part`."""
    result = WorkerResult(process=process, devices=stop_index - first)
    logs, conns = build(
        spec,
        process=process,
        first=first,
        stop=stop_index,
        connections=spec.pool_size,
        window=spec.broker.inflight,
    )
    result.connections = len(conns)
    try:
        for conn in conns:
            conn.connect(spec.broker.host, spec.broker.port, spec.broker.keepalive_s)
        if ready is not None:
            ready()
        cpu_from = _cpu_s()
        result.first_at, result.last_at = blast(conns, timeout_for(spec))
        finish(conns)
        result.done_at = time.time()
        result.cpu_s = _cpu_s() - cpu_from
    except (RawConnectionError, TimeoutError, OSError) as exc:
        result.error = str(exc)
    finally:
        for conn in conns:
            conn.close()
    record(result, logs, conns)
    if part is not None:
        write_device_lines(part, (log.to_record() for log in logs))
        result.part = str(part)
    return result
