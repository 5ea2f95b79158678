"""The paho client MqttSource drives, with three measured shortcuts through paho internals.

Each one took a share of the gateway's CPU in a py-spy profile of a QoS 1 drain (benchmarks/
RESULTS.md), and each relies on paho 2.x internals (paho is pinned <3). All are checked when
installed and fall back to paho's own path when the internals are not there;
tests/test_e2e_source.py fails if one is not in place, so an upgrade that moves them is noticed
instead of silently making the gateway slower. MQTT framing stays paho's: packets are still
read, split and decoded by paho's own code.

- `GatewayClient._handle_publish`: hands a decoded PUBLISH (QoS 0 and 1) straight to the source,
  skipping what paho does per message for callbacks we do not use: an MQTTMessage with a
  threading.Condition, debug-log formatting, two mutexes and the topic-callback walk (~12%).
- `NoTopicCallbacks`: stands in for the per-topic callback table for any message that still takes
  paho's path (QoS 2, which we never subscribe with).
- `BufferedSocket`: one recv() serves many packets instead of ~4 per packet (~20% before it),
  and the PUBACKs paho writes one send() each are sent together once per loop pass (~4%).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

try:  # paho's own PUBLISH decoder; the fast path is off if an upgrade moved it
    from paho.mqtt._packet import decode_publish
except ImportError:  # pragma: no cover - depends on the installed paho
    decode_publish = None

RECV_CHUNK = 256 * 1024
# A send() the kernel would not take (the broker stopped reading) is retried after this long.
SEND_RETRY_S = 0.005

# (the client, topic bytes, payload, qos, packet id, dup flag)
PublishHandler = Callable[[paho.Client, bytes, bytes, int, int, bool], None]

FAST_PUBLISH = decode_publish is not None and hasattr(paho.Client, "_handle_publish")


class GatewayClient(paho.Client):
    """paho's Client; a PUBLISH goes to `on_publish_received` (when set) without an MQTTMessage."""

    on_publish_received: PublishHandler | None = None

    def _handle_publish(self) -> MQTTErrorCode:
        deliver = self.on_publish_received
        packet = self._in_packet
        command = packet["command"]
        if deliver is None or not FAST_PUBLISH or command & 0x06 == 0x04:  # QoS 2: paho's way
            return super()._handle_publish()
        decoded = decode_publish(command, packet["packet"], self._protocol)  # type: ignore[misc]
        deliver(self, decoded.topic, decoded.payload, decoded.qos, decoded.mid, decoded.dup)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class NoTopicCallbacks:
    """Stands in for paho's per-topic callback table, which we never use.

    paho matches every topic it hands to on_message against that table (an MQTTMatcher trie walk
    through a generator), even when it is empty. Installed through the private
    `_on_message_filtered`, only when that is still the empty table (so `message_callback_add`,
    which we do not call, would fail loudly).
    """

    __slots__ = ()

    def iter_match(self, _topic: str) -> tuple[()]:
        return ()


def install_no_topic_callbacks(client: paho.Client) -> bool:
    matcher = getattr(client, "_on_message_filtered", None)
    if matcher is None or list(matcher.iter_match("#")):
        return False
    client._on_message_filtered = NoTopicCallbacks()  # type: ignore[assignment]
    return True


class BufferedSocket:
    """paho's plain TCP socket, read in large chunks and written once per event-loop pass.

    Reads: paho reads each packet with ~4 small recv() calls (command byte, length bytes, body);
    this serves them from one large recv(). Bytes held here are invisible to the selector, so the
    reader re-schedules itself while `buffered` is non-zero.

    Writes: paho sends each queued packet with its own send() — one syscall per PUBACK. Here a
    send() on the loop thread is appended to a buffer and the buffer is sent once, soon after,
    in one call (in order; paho never sees a partial write). `flush()` sends at once (before a
    disconnect). A send() from another thread (paho's connect()) goes straight through. A failed
    send is reported to `on_error`; the connection is then dropped, and unacked messages are
    redelivered by the broker, as after any other loss.

    Installed through paho's private `_sock` attribute, checked at install time, never for TLS,
    whose socket buffers records itself.
    """

    __slots__ = (
        "_buf",
        "_closed",
        "_flush_handle",
        "_loop",
        "_loop_thread",
        "_on_error",
        "_out",
        "_pos",
        "_sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        loop_thread: int,
        on_error: Callable[[str], None],
    ) -> None:
        self._sock = sock
        self._loop = loop
        self._loop_thread = loop_thread
        self._on_error = on_error
        self._buf = b""
        self._pos = 0
        self._out = bytearray()
        self._flush_handle: asyncio.Handle | None = None
        self._closed = False

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def unsent(self) -> int:
        return len(self._out)

    def recv(self, size: int) -> bytes:
        pos = self._pos
        if pos >= len(self._buf):
            data = self._sock.recv(RECV_CHUNK)  # BlockingIOError tells paho "try again"
            if not data:
                return data  # EOF: paho sees the connection lost
            self._buf, pos = data, 0
        end = pos + size
        self._pos = end
        return self._buf[pos:end]

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ConnectionError("socket closed")
        if threading.get_ident() != self._loop_thread:
            if self._out:
                self.flush()
            return self._sock.send(data)
        self._out += data
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._scheduled_flush)
        return len(data)

    def flush(self) -> bool:
        """Send what is buffered, as far as the kernel takes it; True when nothing is left."""
        out = self._out
        try:
            while out:
                del out[: self._sock.send(out)]
        except BlockingIOError:
            return False
        except OSError as exc:
            out.clear()
            self._closed = True
            self._on_error(f"send failed: {exc}")
        return True

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        if not self._closed and not self.flush():
            self._flush_handle = self._loop.call_later(SEND_RETRY_S, self._scheduled_flush)

    def close(self) -> None:
        """Send what is buffered if the kernel takes it now, then close. paho closes right after
        it has "sent" a DISCONNECT, which must still reach the broker."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._closed and self._out:
            with contextlib.suppress(OSError):
                self._sock.send(self._out)
        self._closed = True
        self._out.clear()
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def install_buffered_socket(
    client: paho.Client,
    sock: Any,
    loop: asyncio.AbstractEventLoop,
    loop_thread: int,
    on_error: Callable[[str], None],
) -> bool:
    """Wrap `sock` when it is the plain TCP socket paho just opened (from on_socket_open)."""
    plain = isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket)
    if not plain or getattr(client, "_sock", None) is not sock:
        return False
    client._sock = BufferedSocket(sock, loop, loop_thread, on_error)  # type: ignore[assignment]
    return True
