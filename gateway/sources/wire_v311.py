"""MQTT 3.1.1 through paho's public API (the compatibility path); the gateway's only paho user.

paho runs no thread here: its socket is registered with the event loop, and the loop calls
paho's public `loop_read`, `loop_write` and `loop_misc` (as aiomqtt does internally). Acks are
manual (`manual_ack_set`, `ack`), so a PUBACK leaves only once the session says the message is
stored. This path is slower than wire_v5 (paho reads each packet with several recv() calls and
builds an MQTTMessage per message; see README, Performance) and exists for brokers that speak
only 3.1.1 (amqtt, Azure IoT Hub).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.errors import BrokerError, MqttProtocol
from gateway.sources.wire import (
    ConnectOptions,
    Intake,
    SubscribeOutcome,
    WireState,
    closed_by_broker,
    failed_to_connect,
    refused,
)

log = logging.getLogger(__name__)

# loop_read() handles one incoming packet per call: read until a call yields nothing new, but
# give the loop back after this many so a flood cannot starve other callbacks.
READ_BURST = 512
# ... or once a burst holds this many topic and payload bytes: paho reads each packet whole (it
# has no limit on incoming packets), so a burst of large messages would otherwise hold up to
# READ_BURST of them before the session's byte budget (mqtt.max_buffered_bytes) could pause the
# socket. One packet may still be as large as the broker lets through (Mosquitto:
# message_size_limit).
READ_BURST_BYTES = 1024 * 1024
MISC_INTERVAL_S = 1.0


class V311Wire(WireState):
    """One MQTT 3.1.1 connection driven from the event loop. Build it with `connect_v311`."""

    protocol: MqttProtocol = "3.1.1"

    def __init__(self, options: ConnectOptions, intake: Intake) -> None:
        super().__init__()
        self._options = options
        self._intake = intake
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connected_at = 0.0
        self._socket: Any = None
        self._reading = False
        self._paused = False
        self._closing = False
        self._misc: asyncio.TimerHandle | None = None
        # The burst being read (filled by on_message, handed over once per read).
        self._topics: list[str] = []
        self._payloads: list[bytes] = []
        self._qos: list[int] = []
        self._packet_ids: list[int] = []
        self._nbytes = 0
        self._redelivered = 0
        self._progress = 0
        self.client = self._make_client()

    def _make_client(self) -> paho.Client:
        o = self._options
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            # Our session must outlive the connection (MQTT 3.1.1 §3.1.2.4; aiomqtt's default,
            # a clean session, wipes it on every reconnect).
            clean_session=False,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        client.connect_timeout = o.connect_timeout_s
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        if o.tls is not None:
            client.tls_set_context(o.tls)
            if not o.tls.check_hostname:
                client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    # -- what the session calls ---------------------------------------------------------------

    def subscribe(
        self, filters: Sequence[tuple[str, int]]
    ) -> asyncio.Future[list[SubscribeOutcome]]:
        rc, mid = self.client.subscribe(list(filters))
        return self._sent(rc, mid, filters, "subscribe")

    def unsubscribe(self, filters: Sequence[str]) -> asyncio.Future[list[SubscribeOutcome]]:
        rc, mid = self.client.unsubscribe(list(filters))
        return self._sent(rc, mid, [(f, 0) for f in filters], "unsubscribe")

    def _sent(
        self, rc: MQTTErrorCode, mid: int | None, filters: Sequence[tuple[str, int]], what: str
    ) -> asyncio.Future[list[SubscribeOutcome]]:
        """The answer to come for a (UN)SUBSCRIBE paho sent, or its failure to send it."""
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            return self._await_suback(mid, filters)
        failed: asyncio.Future[list[SubscribeOutcome]] = self._loop.create_future()
        failed.set_exception(
            BrokerError("connection_lost", f"cannot {what}: {paho.error_string(rc)}")
        )
        return failed

    def send_pubacks(self, packet_ids: list[int]) -> None:
        if self.closed.done():
            return
        ack = self.client.ack
        for packet_id in packet_ids:
            ack(packet_id, 1)
        self.client.loop_write()  # now, not on the next loop pass

    def pause_reading(self) -> None:
        self._paused = True
        if self._reading and self._socket is not None:
            self._loop.remove_reader(self._socket)
            self._reading = False

    def resume_reading(self) -> None:
        self._paused = False
        self._start_reading()

    async def disconnect(self) -> None:
        if self.closed.done():
            return
        self._closing = True
        client = self.client
        client.disconnect()
        with contextlib.suppress(OSError):
            client.loop_write()  # the DISCONNECT, and any ack still queued before it
        self._close_socket()
        self._settle(None)

    def abort(self) -> None:
        self._closing = True
        self._close_socket()
        self._settle(None)

    # -- paho callbacks (on the loop thread, except those paho calls during connect()) ---------

    def _on_connect(self, _c: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if self.connack.done():
            return
        if rc.is_failure:
            self._end(refused(rc.value, self._options.client_id))
            return
        self.session_present = bool(flags.session_present)
        self._connected_at = time.monotonic()
        self._misc = self._loop.call_later(MISC_INTERVAL_S, self._keepalive)
        self.connack.set_result(self.session_present)

    def _on_subscribe(self, _c: paho.Client, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        try:
            filters, waiter = self._suback(mid)
        except KeyError:
            return
        outcomes = [
            SubscribeOutcome(f, None, f"{code} (0x80)")
            if code.is_failure
            else SubscribeOutcome(f, code.value)
            for f, code in zip(filters, codes, strict=False)
        ]
        if not waiter.done():
            waiter.set_result(outcomes)
        self._progress += 1

    def _on_unsubscribe(self, _c: paho.Client, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        try:
            filters, waiter = self._suback(mid)
        except KeyError:
            return
        # MQTT 3.1.1's UNSUBACK carries no codes (paho reports success for each).
        outcomes = [
            SubscribeOutcome(f, None, f"{code} (0x{code.value:02X})" if code.is_failure else None)
            for f, code in zip(filters, codes or [], strict=False)
        ] or [SubscribeOutcome(f, None) for f in filters]
        if not waiter.done():
            waiter.set_result(outcomes)
        self._progress += 1

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = ""  # the template match rejects it as topic_mismatch
        payload = cast(bytes, message.payload)  # paho types it bytes | bytearray; it is bytes
        self._topics.append(topic)
        self._payloads.append(payload)
        self._qos.append(message.qos)
        if message.qos:
            self._packet_ids.append(message.mid)
            if message.dup:
                self._redelivered += 1
        self._nbytes += len(topic) + len(payload)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self._closing:
            return
        if not self.connack.done():
            # paho does not pass on a TLS alert: with TLS, a refused client certificate ends
            # the connection here too.
            hint = (
                "; with TLS, most often the broker refusing our client certificate "
                "(mqtt.tls.cert_file and key_file)"
                if self._options.tls is not None
                else "; a TLS port spoken to without TLS (then use mqtts://), or a broker that "
                "refuses us without a CONNACK"
            )
            self._end(
                BrokerError(
                    "connection_lost",
                    f"the broker closed the connection before CONNACK ({rc}){hint}",
                )
            )
            return
        if rc == "Keep alive timeout":
            error = BrokerError(
                "keepalive_timeout", "no PINGRESP within the keepalive: the broker is gone"
            )
        else:
            connected_for = time.monotonic() - self._connected_at
            error = closed_by_broker(connected_for, self._options.client_id, f" ({rc})")
        self._end(error)

    def _on_socket_open(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._register_reader, sock)

    def _on_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._forget_socket, sock)

    def _on_socket_register_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._register_writer, sock)

    def _on_socket_unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._unregister_writer, sock)

    def _in_loop(self, fn: Callable[[Any], None], sock: Any) -> None:
        # paho calls these from the connect() thread too; the loop's registries are not
        # thread-safe.
        if threading.get_ident() == self._loop_thread:
            fn(sock)
        else:
            self._loop.call_soon_threadsafe(fn, sock)

    # -- the socket ---------------------------------------------------------------------------

    def _register_reader(self, sock: Any) -> None:
        if self.closed.done():
            return
        self._socket = sock
        self._start_reading()

    def _start_reading(self) -> None:
        sock = self._socket
        if self._reading or self._paused or sock is None or self.closed.done():
            return
        if sock.fileno() < 0:
            return
        self._loop.add_reader(sock, self._on_readable)
        self._reading = True
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            self._loop.call_soon(self._on_readable)

    def _register_writer(self, sock: Any) -> None:
        if not self.closed.done() and sock.fileno() >= 0:
            self._loop.add_writer(sock, self.client.loop_write)

    def _unregister_writer(self, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_writer(sock)

    def _forget_socket(self, sock: Any) -> None:
        if sock is self._socket:
            self._unregister()

    def _unregister(self) -> None:
        sock = self._socket
        if sock is not None and sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._reading = False
        self._socket = None

    def _close_socket(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
        sock = self.client.socket()
        self._unregister()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _on_readable(self) -> None:
        client = self.client
        for _ in range(READ_BURST):
            before = len(self._topics) + self._progress
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self.closed.done():
                break
            if len(self._topics) + self._progress == before or self._nbytes >= READ_BURST_BYTES:
                break
        sock = self._socket
        if self._reading and isinstance(sock, ssl.SSLSocket) and sock.pending():
            # Bytes TLS already read that the socket no longer signals.
            self._loop.call_soon(self._on_readable)
        if self._topics:
            burst = (
                self._topics,
                self._payloads,
                self._qos,
                self._packet_ids,
                self._nbytes,
                self._redelivered,
            )
            self._topics, self._payloads, self._qos, self._packet_ids = [], [], [], []
            self._nbytes = self._redelivered = 0
            self._intake.deliver(*burst)

    def _keepalive(self) -> None:
        # Keepalive pings and their timeout. A timer, not a task: it must run even while the
        # hand-off is blocked by backpressure, or the broker would drop us for silence.
        if self.closed.done():
            return
        self.client.loop_misc()
        if not self.closed.done():
            self._misc = self._loop.call_later(MISC_INTERVAL_S, self._keepalive)

    def _end(self, error: BrokerError) -> None:
        self._fail_connack(error)
        self._closing = True
        self._close_socket()
        self._settle(error)


async def connect_v311(options: ConnectOptions, intake: Intake) -> V311Wire:
    """Open a connection and a session (CONNECT/CONNACK); BrokerError naming the cause."""
    wire = V311Wire(options, intake)
    try:
        async with asyncio.timeout(options.connect_timeout_s):
            # paho's connect() resolves and connects a blocking socket: keep it off the loop.
            await asyncio.to_thread(
                wire.client.connect, options.host, options.port, options.keepalive_s
            )
            await wire.connack
    except TimeoutError:
        wire.abort()
        raise BrokerError(
            "connack_timeout",
            f"{options.host}:{options.port}: no CONNACK within {options.connect_timeout_s}s: "
            "something accepted the connection and never answered (a frozen or overloaded "
            "broker, or not MQTT at all)",
        ) from None
    except OSError as exc:
        wire.abort()
        raise failed_to_connect(exc, options.host, options.port, options.tls is not None) from None
    except BaseException:
        wire.abort()
        raise
    return wire
