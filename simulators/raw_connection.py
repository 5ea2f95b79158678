"""One pre-encoded MQTT connection of the raw transport: non-blocking sends, PUBACKs read in
bulk and checked byte for byte (raw_worker.py drives several)."""

from __future__ import annotations

import bisect
import socket
from array import array

from simulators import raw_packets as wire
from simulators.record import DeviceLog
from simulators.stream import Message

# One send() call at most; big enough that a syscall carries ~1,500 messages.
SEND_BYTES = 256 * 1024
RECV_BYTES = 256 * 1024
CONNECT_TIMEOUT_S = 10.0


class RawConnectionError(Exception):
    """Raised when a connection fails: refused, closed, timed out, or an unexpected packet."""


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

    def add(self, log: DeviceLog, message: Message) -> None:
        self._packets.append(
            wire.publish_packet(message.topic, message.payload, self.qos, len(self._packets))
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
            raise RawConnectionError(
                f"{self.client_id}: cannot connect to {host}:{port}: {exc}"
            ) from exc
        if connack != wire.CONNACK_ACCEPTED:
            sock.close()
            raise RawConnectionError(f"{self.client_id}: broker refused: CONNACK {connack.hex()}")
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
            raise RawConnectionError(f"{self.client_id}: send failed: {exc}") from exc

    def read(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            raise RawConnectionError(f"{self.client_id}: receive failed: {exc}") from exc
        if not data:
            raise RawConnectionError(f"{self.client_id}: the broker closed the connection")
        start = self.ack_bytes
        if data != self.expected_acks[start : start + len(data)]:
            # Mosquitto answers each QoS 1 PUBLISH with its PUBACK at once, in order; anything
            # else (a QoS 0 reply, a missing or reordered id) means we cannot account for it.
            raise RawConnectionError(
                f"{self.client_id}: unexpected bytes after {self.acked} PUBACKs"
            )
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
