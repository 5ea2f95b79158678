"""One MQTT connection: a paho client driven by the asyncio event loop, not by a thread.

paho's `connect()`/`reconnect()` block (TCP connect, TLS handshake), so they run in the hub's
small thread pool; meanwhile the loop leaves that client alone (its socket callbacks are
detached). Everything else -- publish, reading PUBACKs, writing, keepalive -- happens on the
loop, through paho's external-loop API (`loop_read`/`loop_write`/`loop_misc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

if TYPE_CHECKING:
    from simulators.hub import Hub

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 5.0


class ConnectError(Exception):
    """Raised when a connection cannot be made (refused, timed out, not authorised)."""


class Publisher:
    """One MQTT connection. `publish()` queues in paho; the hub's flush writes; PUBACKs counted."""

    __slots__ = (
        "_ack_limit",
        "_client",
        "_closing",
        "_connack",
        "_connecting",
        "_hub",
        "_loop",
        "_ready_event",
        "_socket",
        "_was_connected",
        "_writer",
        "ack_waiter",
        "client_id",
        "closed",
        "published",
        "ready",
        "unacked",
    )

    def __init__(self, hub: Hub, client_id: str) -> None:
        self._hub = hub
        self._loop = hub.loop
        self.client_id = client_id
        self._client = hub.new_client(client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        if hub.qos == 1:
            # Only for QoS 1: for QoS 0 paho would call it (building a ReasonCode and a
            # Properties object) for every packet written.
            self._client.on_publish = self._on_publish
        self._socket: socket.socket | None = None
        self._writer = False
        self._connack: asyncio.Future[None] | None = None
        self._ready_event = asyncio.Event()
        self._connecting = False
        self._closing = False
        self._ack_limit = 0
        self._was_connected = False
        self.closed = asyncio.Event()  # set once the socket is gone after start_close()
        self.ready = False
        self.unacked = 0
        self.published = 0
        self.ack_waiter: asyncio.Future[None] | None = None

    # --- publishing -----------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int) -> bool:
        """Queue one message; False when paho refused it (QoS 0 without a connection)."""
        info = self._client.publish(topic, payload, qos)
        # A QoS 1 message paho accepted stays in its store until PUBACKed, and is sent again
        # after a reconnect: only QoS 0 is lost without a connection.
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and (
            qos == 0 or info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN
        ):
            return False
        self.published += 1
        if qos:
            self.unacked += 1
            self._hub.count_published(qos)
        return True

    async def wait_ready(self) -> None:
        await self._ready_event.wait()

    async def wait_acks_below(self, limit: int) -> None:
        """Backpressure for QoS 1: wait until fewer than `limit` messages are unacknowledged."""
        if self.unacked < limit:
            return
        self._ack_limit = limit
        self.ack_waiter = self._loop.create_future()
        self._hub.flush()
        await self.ack_waiter

    def write(self) -> None:
        client = self._client
        if self._socket is None:
            return
        if client.want_write():
            client.loop_write()
        sock = self._socket  # loop_write may have lost the connection
        if sock is not None and client.want_write():
            if not self._writer:
                self._loop.add_writer(sock, self.write)
                self._writer = True
                self._hub.set_writing(self, True)
        elif self._writer and sock is not None:
            self._loop.remove_writer(sock)
            self._writer = False
            self._hub.set_writing(self, False)

    def misc(self) -> None:
        if self.ready:
            self._client.loop_misc()

    # --- connecting -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, retrying refused/failed attempts until the broker's connect timeout."""
        b = self._hub.broker
        deadline = time.monotonic() + b.connect_timeout_s
        delay = RECONNECT_MIN_S
        self._connecting = True
        try:
            # connect() stores host and port, then calls reconnect(): retries use reconnect().
            fn: Callable[..., object] = self._client.connect
            args: tuple[object, ...] = (b.host, b.port, b.keepalive_s)
            while True:
                try:
                    await self._handshake(fn, *args)
                    return
                except ConnectError:
                    raise  # the broker answered and said no: retrying will not help
                except ssl.SSLCertVerificationError as exc:
                    raise ConnectError(f"{self.client_id}: {b.host}:{b.port}: {exc}") from exc
                except (OSError, TimeoutError) as exc:
                    if time.monotonic() + delay > deadline:
                        raise ConnectError(
                            f"{self.client_id}: cannot connect to {b.host}:{b.port}: {exc}"
                        ) from exc
                fn, args = self._client.reconnect, ()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
        finally:
            self._connecting = False

    async def _handshake(self, fn: Callable[..., object], *args: object) -> None:
        self._detach()
        self._connack = self._loop.create_future()
        # paho writes the CONNECT packet itself inside connect()/reconnect() (no socket
        # callbacks are set yet), so only reading the CONNACK is left to the loop.
        await self._hub.blocking(fn, *args)
        self._attach()
        try:
            async with asyncio.timeout(self._hub.broker.connect_timeout_s):
                await self._connack
        except TimeoutError:
            raise TimeoutError(f"{self.client_id}: no CONNACK") from None

    def _attach(self) -> None:
        client = self._client
        sock = client.socket()
        # TCP or TLS: both are socket.socket (no websockets here).
        if not isinstance(sock, socket.socket):
            raise OSError(f"{self.client_id}: no socket after connect")
        # paho does not set TCP_NODELAY; without it small PUBLISHes wait for Nagle.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = sock
        self._loop.add_reader(sock, self._on_readable)
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        if client.want_write():
            self._hub.mark_dirty(self)

    def _detach(self) -> None:
        client = self._client
        client.on_socket_close = None
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None
        self._forget_socket()

    def _forget_socket(self) -> None:
        sock = self._socket
        if sock is not None:
            self._loop.remove_reader(sock)
            if self._writer:
                self._loop.remove_writer(sock)
        self._writer = False
        self._hub.set_writing(self, False)
        self._socket = None
        if self._closing:
            self.closed.set()

    async def reconnect(self) -> None:
        """Reconnect with backoff until it works or the run closes; paho then republishes
        every QoS 1 message that was not acknowledged (MQTT 3.1.1 §4.4)."""
        if self._connecting or self._closing:
            return
        self._connecting = True
        delay = RECONNECT_MIN_S
        try:
            while not self._closing:
                try:
                    await self._handshake(self._client.reconnect)
                    return
                except (OSError, TimeoutError, ConnectError) as exc:
                    log.warning("%s: reconnect failed: %s", self.client_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
        finally:
            self._connecting = False

    async def drop(self) -> None:
        """The `disconnect` fault: lose the connection without a DISCONNECT, then reconnect."""
        sock = self._socket
        if not self.ready or sock is None:
            return
        self.write()  # what is queued goes out first
        self._set_ready(False)
        if self._hub.qos == 1:
            # Reset (linger 0): the broker may lose what it had not read yet. paho republishes
            # every unacknowledged message after the reconnect.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await self.reconnect()
        else:
            # QoS 0 has no republish, so half-close instead: the broker reads all we wrote,
            # then sees EOF without a DISCONNECT (abrupt, for MQTT) and closes; reading that
            # EOF makes paho report the loss, and _on_disconnect reconnects.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_WR)
            await self._ready_event.wait()

    def start_close(self) -> None:
        self._closing = True
        if self._socket is not None and self.ready:
            self._client.disconnect()  # paho closes the socket once DISCONNECT is written
        else:
            self.closed.set()

    def force_close(self) -> None:
        if self._socket is not None:
            sock = self._socket
            self._detach()
            with contextlib.suppress(OSError):
                sock.close()
        self._set_ready(False)

    @property
    def open(self) -> bool:
        return self._socket is not None

    @property
    def wants_write(self) -> bool:
        return self._client.want_write()

    # --- paho callbacks (on the loop thread) ----------------------------------------------------

    def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        if ready:
            self._ready_event.set()
        else:
            self._ready_event.clear()

    def _on_readable(self) -> None:
        client = self._client
        client.loop_read()
        # TLS: decrypted bytes can wait inside the SSL object, where epoll does not see them.
        sock = self._socket
        while isinstance(sock, ssl.SSLSocket) and sock.pending():
            client.loop_read()
            sock = self._socket

    def _on_register_write(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        self._hub.mark_dirty(self)

    def _on_unregister_write(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if self._writer and self._socket is not None:
            self._loop.remove_writer(self._socket)
            self._writer = False
            self._hub.set_writing(self, False)

    def _on_socket_close(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        self._forget_socket()

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        waiter = self._connack
        if getattr(reason, "is_failure", False):
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectError(f"{self.client_id}: broker refused: {reason}"))
            return
        if self._was_connected:
            self._hub.reconnects += 1
        self._was_connected = True
        self._set_ready(True)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self._set_ready(False)
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_exception(OSError(f"{self.client_id}: disconnected before CONNACK"))
            return
        if not self._closing and not self._connecting:
            self._hub.spawn(self.reconnect())

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: object, props: object
    ) -> None:
        self.unacked -= 1
        self._hub.count_acked()
        waiter = self.ack_waiter
        if waiter is not None and self.unacked < self._ack_limit and not waiter.done():
            waiter.set_result(None)
