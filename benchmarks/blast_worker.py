"""One load-publisher process: build its devices' messages, encode them, connect, send flat out.

Everything costly happens before the clock starts: the simulators' own code builds the
messages (the same bytes gateway-sim sends), wire.py encodes them into one buffer per
connection in the order gateway-sim's blast sends them (every device in turn, so each device's
messages stay in order on its one connection). Publishing is then non-blocking `send()`s of
large slices, PUBACKs read in bulk and checked against the exact bytes expected: near zero CPU,
so the broker, not this process, is the bottleneck.
"""

from __future__ import annotations

import bisect
import resource
import selectors
import socket
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import wire
from gateway.manifest import write_device_lines
from simulators.record import DeviceLog
from simulators.spec import RunSpec
from simulators.stream import Message, device_for, device_messages, device_topic

# One send() call at most; big enough that a syscall carries ~1,500 messages.
SEND_BYTES = 256 * 1024
RECV_BYTES = 256 * 1024
CONNECT_TIMEOUT_S = 10.0
FINISH_TIMEOUT_S = 10.0


class BlastError(Exception):
    """Raised when a connection fails: refused, closed, timed out, or an unexpected packet."""


@dataclass
class BlastResult:
    """What one process did (sent = fully written to its socket; QoS 1: acked or unacked)."""

    process: int
    devices: int
    connections: int = 0
    messages_sent: int = 0
    readings_sent: int = 0
    unacked: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    first_at: float | None = None  # epoch s of the first byte sent
    written_at: float | None = None  # epoch s when the last message was in a socket
    done_at: float | None = None  # epoch s when the broker had it all (acked, or read to EOF)
    cpu_s: float = 0.0  # this process's CPU seconds from the first send until done
    part: str | None = None
    error: str | None = None


class Connection:
    """One MQTT connection and everything it will send, pre-encoded."""

    def __init__(self, client_id: str, qos: int, window: int) -> None:
        if qos and not 0 < window < wire.MAX_PACKET_ID:
            raise ValueError(f"window {window}: 1..{wire.MAX_PACKET_ID - 1} for unique packet ids")
        self.client_id = client_id
        self.qos = qos
        self.window = window
        self.sent: list[tuple[DeviceLog, Message]] = []  # in send order
        self._packets: list[bytes] = []
        self.ends = array("q")  # end offset of each packet in the buffer
        self.buffer = memoryview(b"")
        self.expected_acks = b""
        self.sock: socket.socket | None = None
        self.offset = 0  # bytes written
        self.ack_bytes = 0  # PUBACK bytes read (and matched)
        self.finished = False  # DISCONNECT written and the broker's EOF read
        self._lowat = 1

    def add(self, log: DeviceLog, topic: bytes, message: Message) -> None:
        self._packets.append(
            wire.publish_packet(topic, message.payload, self.qos, len(self._packets))
        )
        self.sent.append((log, message))

    def seal(self) -> None:
        """Join the packets into the one buffer that is sent."""
        end = 0
        for packet in self._packets:
            end += len(packet)
            self.ends.append(end)
        self.buffer = memoryview(b"".join(self._packets))
        if self.qos:
            self.expected_acks = b"".join(wire.puback_packet(i) for i in range(len(self._packets)))
        self._packets = []

    @property
    def count(self) -> int:
        return len(self.ends)

    @property
    def acked(self) -> int:
        return self.ack_bytes // wire.PUBACK_BYTES

    @property
    def written(self) -> int:
        """Messages wholly written to the socket."""
        return bisect.bisect_right(self.ends, self.offset)

    @property
    def limit(self) -> int:
        """Bytes that may be written now: all (QoS 0), or up to `window` unacked (QoS 1)."""
        if not self.qos:
            return len(self.buffer)
        allowed = min(self.count, self.acked + self.window)
        return self.ends[allowed - 1] if allowed else 0

    @property
    def wants_write(self) -> bool:
        """QoS 1: only once half the window is free, so each send() carries many messages
        rather than one per PUBACK read."""
        if not self.qos:
            return self.offset < len(self.buffer)
        written = self.written
        return written < self.count and written - self.acked <= self.window // 2

    @property
    def done(self) -> bool:
        if self.offset < len(self.buffer):
            return False
        return not self.qos or self.acked == self.count

    def connect(self, host: str, port: int, keepalive_s: int) -> None:
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(wire.connect_packet(self.client_id, keepalive_s))
            connack = _recv_exactly(sock, len(wire.CONNACK_ACCEPTED))
        except OSError as exc:
            raise BlastError(f"{self.client_id}: cannot connect to {host}:{port}: {exc}") from exc
        if connack != wire.CONNACK_ACCEPTED:
            sock.close()
            raise BlastError(f"{self.client_id}: broker refused: CONNACK {connack.hex()}")
        sock.setblocking(False)
        self.sock = sock

    def write(self) -> None:
        assert self.sock is not None
        stop = min(self.limit, self.offset + SEND_BYTES)
        try:
            self.offset += self.sock.send(self.buffer[self.offset : stop])
        except BlockingIOError:
            pass
        except OSError as exc:
            raise BlastError(f"{self.client_id}: send failed: {exc}") from exc

    def read(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            raise BlastError(f"{self.client_id}: receive failed: {exc}") from exc
        if not data:
            raise BlastError(f"{self.client_id}: the broker closed the connection")
        start = self.ack_bytes
        if data != self.expected_acks[start : start + len(data)]:
            # Mosquitto answers each QoS 1 PUBLISH with its PUBACK at once, in order; anything
            # else (a QoS 0 reply, a missing or reordered id) means we cannot account for it.
            raise BlastError(f"{self.client_id}: unexpected bytes after {self.acked} PUBACKs")
        self.ack_bytes += len(data)

    def batch_acks(self) -> None:
        """Be woken only once a quarter window of PUBACKs is waiting (SO_RCVLOWAT, which
        Linux honours in poll/epoll), fewer at the end: Mosquitto writes each PUBACK on its
        own, and a wake-up per handful would cost more CPU than all the sending."""
        if not self.qos or self.sock is None:
            return
        outstanding = self.written - self.acked
        lowat = max(1, min(self.window // 4, outstanding)) * wire.PUBACK_BYTES
        if lowat != self._lowat:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            self._lowat = lowat

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def build(
    spec: RunSpec, *, process: int, first: int, stop: int, connections: int, window: int
) -> tuple[list[DeviceLog], list[Connection]]:
    """The messages of devices first..stop-1, in gateway-sim's blast order (every device in
    turn; device i on connection i % connections), encoded per connection."""
    devices = [device_for(spec, i) for i in range(first, stop)]
    logs = [DeviceLog(d, device_topic(spec, d)) for d in devices]
    size = min(connections, len(devices))
    conns = [
        Connection(f"{spec.client_id_prefix}pool-{process}-{k}", spec.qos, window)
        for k in range(size)
    ]
    plans = [list(device_messages(spec, d, spec.count)) for d in devices]
    topics: dict[str, bytes] = {}
    longest = max((len(p) for p in plans), default=0)
    for round_ in range(longest):
        for i, plan in enumerate(plans):
            if round_ < len(plan):
                message = plan[round_]
                topic = topics.get(message.topic)
                if topic is None:
                    topic = topics[message.topic] = wire.utf8_field(message.topic)
                conns[i % size].add(logs[i], topic, message)
    for conn in conns:
        conn.seal()
    return logs, conns


def blast(conns: list[Connection], timeout_s: float) -> tuple[float, float]:
    """Send everything, reading PUBACKs as they come; (first send, last write) in epoch s.
    BlastError on a failed connection; TimeoutError when `timeout_s` passes first."""
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
                raise BlastError(f"{conn.client_id}: no EOF from the broker after DISCONNECT")
            conn.sock.settimeout(left)
            try:
                data = conn.sock.recv(RECV_BYTES)
            except OSError as exc:
                raise BlastError(f"{conn.client_id}: after DISCONNECT: {exc}") from exc
            if not data:
                conn.finished = True
                break


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def record(result: BlastResult, logs: list[DeviceLog], conns: list[Connection]) -> None:
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


def run_share(
    spec: RunSpec,
    *,
    process: int,
    first: int,
    stop: int,
    connections: int,
    window: int,
    timeout_s: float,
    part: Path | None,
    ready: Callable[[], object] | None = None,
) -> BlastResult:
    """Build, connect, wait at `ready` (a callable, e.g. a barrier's wait) so that every process
    starts together, then blast; the manifest lines of these devices go to `part`."""
    result = BlastResult(process=process, devices=stop - first)
    logs, conns = build(
        spec, process=process, first=first, stop=stop, connections=connections, window=window
    )
    result.connections = len(conns)
    try:
        for conn in conns:
            conn.connect(spec.broker.host, spec.broker.port, spec.broker.keepalive_s)
        if ready is not None:
            ready()
        cpu_from = _cpu_s()
        result.first_at, result.written_at = blast(conns, timeout_s)
        finish(conns)
        result.done_at = time.time()
        result.cpu_s = _cpu_s() - cpu_from
    except (BlastError, TimeoutError, OSError) as exc:
        result.error = str(exc)
    finally:
        for conn in conns:
            conn.close()
    record(result, logs, conns)
    if part is not None:
        write_device_lines(part, (log.to_record() for log in logs))
        result.part = str(part)
    return result
