"""MqttSource: connect, subscribe, reconnect with backoff; the ONLY aiomqtt/paho user.

We drive paho-mqtt (the engine under aiomqtt) from the event loop ourselves, as aiomqtt does
internally, because three things we need are not in aiomqtt 2.5's public API (see FACTS.md):
- manual acks: aiomqtt PUBACKs on receipt, before our code sees the message;
- bounded intake: aiomqtt's queue is unbounded, and when capped it drops messages it already acked;
- socket-level backpressure: only the owner of the reader callback can stop reading the socket.
paho's `manual_ack_set`, `ack`, `loop_read/loop_write/loop_misc` and socket callbacks are public.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from gateway.config import MqttSourceConfig
from gateway.errors import BrokerError
from gateway.metrics import GatewayMetrics
from gateway.model import Inbound
from gateway.sources.acks import AckWindow
from gateway.sources.paho_client import (
    BufferedSocket,
    GatewayClient,
    install_buffered_socket,
    install_no_topic_callbacks,
)

log = logging.getLogger(__name__)

Handler = Callable[[list[Inbound]], Awaitable[None]]

# loop_read() handles one packet per call (FACTS.md): read until a call yields nothing new, but
# give the loop back after this many so a flood cannot starve other callbacks.
READ_BURST = 256
MISC_INTERVAL_S = 1.0


def _nothing() -> None:
    return None


def _describe(exc: BaseException | None) -> str:
    """An exception for a log line; some (TimeoutError) have no message of their own."""
    if exc is None:
        return "?"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _unshared(topic_filter: str) -> str:
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


class _Connection:
    """One paho client and its socket registrations; discarded after a disconnect."""

    def __init__(self, source: MqttSource, client: GatewayClient) -> None:
        self.source = source
        self.client = client
        self.window = AckWindow(self._puback)
        self.connack: asyncio.Future[Any] = source.loop.create_future()
        self.suback: dict[int, asyncio.Future[list[Any]]] = {}
        self.lost: asyncio.Future[str] = source.loop.create_future()
        self.sock: Any = None
        self.reading = False
        self.misc_handle: asyncio.TimerHandle | None = None
        self.subscribing: tuple[int, list[str]] | None = None
        self.subscribe_sent_at = 0.0

    def _puback(self, mid: int) -> None:
        self.client.ack(mid, 1)


class MqttSource:
    """Receives messages from one broker and hands them on in batches, acking only when told."""

    def __init__(self, config: MqttSourceConfig, metrics: GatewayMetrics, handler: Handler) -> None:
        self._config = config
        self._metrics = metrics
        self._handler = handler
        self._conn: _Connection | None = None
        self._inbox: list[Inbound] = []
        self._wake = asyncio.Event()
        self._stop_reading = asyncio.Event()
        self._closing = asyncio.Event()
        self._reading_stopped = asyncio.Event()
        self._subscribed = False
        self._stalled = False
        self._last_message_at = time.monotonic()
        self._attempts = 0
        self._connected_before = False
        # Matching ignores the `$share/<group>/` prefix: delivered topics never carry it.
        self._filters = [_unshared(s.effective_filter) for s in config.subscriptions]
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        metrics.unacked.set_function(self._unacked)

    # -- state for /readyz and metrics -------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Connected and subscribed."""
        return self._subscribed

    @property
    def stalled(self) -> bool:
        """Subscribed, but silent for longer than stall_timeout_s."""
        return self._stalled

    def _unacked(self) -> int:
        conn = self._conn
        return len(conn.window) if conn is not None else 0

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, receive and hand on until closed; reconnect with backoff on any loss."""
        cfg = self._config
        try:
            while not self._stop_reading.is_set():
                conn = await self._connect_with_backoff()
                if conn is None:
                    break
                try:
                    await self._session(conn)
                except BrokerError as exc:
                    log.warning("broker %s:%d: %s; reconnecting", cfg.host, cfg.port, exc)
                finally:
                    self._drop(conn)
            # Also when no connection was ever made: nothing is in hand, the drain may go on.
            self._reading_stopped.set()
            await self._closing.wait()
        finally:
            self._reading_stopped.set()
            if self._conn is not None:
                self._drop(self._conn)

    async def stop_reading(self) -> None:
        """Take no new messages; return once everything already received was handed on."""
        self._stop_reading.set()
        self._wake.set()
        await self._reading_stopped.wait()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Send the acks still queued, disconnect cleanly and let run() return."""
        conn = self._conn
        if conn is not None and not conn.lost.done():
            try:
                async with asyncio.timeout(timeout_s):
                    while True:
                        if not self._write_now(conn) or conn.lost.done():
                            break
                        await asyncio.sleep(0.005)  # the socket is full: give the broker a moment
                    conn.client.disconnect()
                    self._write_now(conn)
            except (TimeoutError, OSError) as exc:
                log.warning("could not flush acks before disconnecting: %s", exc)
        self._closing.set()
        self._wake.set()

    # -- connecting ------------------------------------------------------------------------

    async def _connect_with_backoff(self) -> _Connection | None:
        cfg = self._config
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(
                multiplier=cfg.reconnect_min_s, max=cfg.reconnect_max_s, jitter=cfg.reconnect_min_s
            ),
            retry=retry_if_exception_type((OSError, TimeoutError, BrokerError, ssl.SSLError)),
            sleep=self._sleep_unless_stopping,
            before_sleep=lambda state: log.warning(
                "broker %s:%d: %s; retrying in %.1fs",
                cfg.host,
                cfg.port,
                _describe(state.outcome.exception()) if state.outcome else "?",
                state.upcoming_sleep,
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self._stop_reading.is_set():
                    return None
                return await self._connect()
        return None

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stop_reading.wait()
        except TimeoutError:
            pass

    async def _connect(self) -> _Connection:
        cfg = self._config
        if self._attempts:
            self._metrics.mqtt_reconnects.inc()
        self._attempts += 1
        conn = _Connection(self, self._make_client())
        self._conn = conn
        try:
            kwargs: dict[str, Any] = {}
            if cfg.protocol == "5":
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = cfg.session_expiry_s
                props.ReceiveMaximum = cfg.receive_maximum
                # aiomqtt/paho default to a clean start on every connect; our session must live.
                kwargs = {"clean_start": False, "properties": props}
            async with asyncio.timeout(cfg.connect_timeout_s):
                # paho's connect() resolves and connects a blocking socket: keep it off the loop.
                await asyncio.to_thread(
                    conn.client.connect, cfg.host, cfg.port, cfg.keepalive_s, **kwargs
                )
                session_present = await conn.connack
            subs = [
                (s.effective_filter, SubscribeOptions(qos=s.qos) if cfg.protocol == "5" else s.qos)
                for s in cfg.subscriptions
            ]
            rc, mid = conn.client.subscribe(subs)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerError(f"subscribe failed: {paho.error_string(rc)}")
        except BaseException:
            self._drop(conn)
            raise
        # The SUBACK is awaited by the session, not here: a resumed session's queued messages
        # arrive right after the CONNACK, before the SUBACK (Mosquitto queues it behind them),
        # and must be taken in meanwhile or the SUBACK is never read.
        conn.subscribing = (mid, [topic for topic, _ in subs])
        conn.subscribe_sent_at = time.monotonic()
        if not session_present and self._connected_before:
            # Our session was gone (broker restarted without persistence, or the session
            # expired): whatever was published while we were away was not kept for us.
            self._metrics.mqtt_sessions_lost.inc()
            log.warning(
                "the broker had no session for %r on reconnect: messages published while we "
                "were disconnected may be lost (check broker persistence and session expiry)",
                cfg.client_id,
            )
        self._connected_before = True
        self._last_message_at = time.monotonic()
        if session_present:
            self._mark_subscribed()  # the session holds our subscriptions already
        log.info(
            "connected to %s:%d as %r (MQTT %s, session %s), subscribing to %s",
            cfg.host,
            cfg.port,
            cfg.client_id,
            cfg.protocol,
            "resumed" if session_present else "new",
            ", ".join(s.effective_filter for s in cfg.subscriptions),
        )
        return conn

    def _mark_subscribed(self) -> None:
        self._subscribed = True
        self._metrics.mqtt_connected.set(1)

    def _check_subscription(self, conn: _Connection) -> None:
        """Once the SUBACK is in: refused filters are an error; none for too long is too."""
        if conn.subscribing is None:
            return
        mid, filters = conn.subscribing
        waiter = conn.suback.get(mid)
        if waiter is not None and waiter.done():
            conn.subscribing = None
            refused = [
                f for f, code in zip(filters, waiter.result(), strict=False) if code.is_failure
            ]
            if refused:
                raise BrokerError(f"broker refused subscriptions {refused!r}")
            self._mark_subscribed()
            log.info("subscribed to %s", ", ".join(filters))
            return
        # A backlog may delay the SUBACK: only silence counts against the deadline.
        quiet_since = max(conn.subscribe_sent_at, self._last_message_at)
        if time.monotonic() - quiet_since > self._config.subscribe_timeout_s:
            raise BrokerError(f"no SUBACK within {self._config.subscribe_timeout_s}s")

    @staticmethod
    def _write_now(conn: _Connection) -> bool:
        """Write what paho has queued (acks) now, not on the next loop pass; True while some is
        still waiting for the socket."""
        conn.client.loop_write()
        sock = conn.client.socket()
        unsent = isinstance(sock, BufferedSocket) and not sock.flush()
        return unsent or conn.client.want_write()

    def _make_client(self) -> GatewayClient:
        cfg = self._config
        v5 = cfg.protocol == "5"
        client = GatewayClient(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=None if v5 else False,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.read_password())
        if cfg.tls.enabled:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED if cfg.tls.verify else ssl.CERT_NONE,
            )
            if not cfg.tls.verify:
                client.tls_insecure_set(True)
        install_no_topic_callbacks(client)
        client.on_publish_received = self._on_publish
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _drop(self, conn: _Connection) -> None:
        """Forget a connection: its unacked messages will be redelivered by the broker."""
        if conn.misc_handle is not None:
            conn.misc_handle.cancel()
        self._unregister(conn)
        dropped = conn.window.close()
        if dropped:
            log.info("connection ended with %d unacked; the broker redelivers them", dropped)
        if not conn.lost.done():
            conn.lost.set_result("dropped")
        sock = conn.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if self._conn is conn:
            self._conn = None
            self._subscribed = False
            self._metrics.mqtt_connected.set(0)

    # -- the session -----------------------------------------------------------------------

    async def _session(self, conn: _Connection) -> None:
        """Hand on what arrives until the connection is lost or we stop reading."""
        conn.misc_handle = self.loop.call_later(MISC_INTERVAL_S, self._misc, conn)
        while True:
            self._check_subscription(conn)
            if not self._inbox and not conn.lost.done() and not self._stop_reading.is_set():
                self._wake.clear()
                try:
                    async with asyncio.timeout(MISC_INTERVAL_S):
                        await self._wake.wait()
                except TimeoutError:
                    self._watch_for_stall()
                    continue
            if self._stop_reading.is_set():
                self._pause(conn)
            batch, self._inbox = self._inbox, []
            if batch:
                self._metrics.messages_received.inc(len(batch))
                self._resume(conn)
                await self._handler(batch)
            if self._stop_reading.is_set() and not self._inbox:
                self._reading_stopped.set()
                # Stay connected, so acks of what we handed on can still go out, until close().
                while not self._closing.is_set() and not conn.lost.done():
                    self._wake.clear()
                    await self._wake.wait()
                return
            if conn.lost.done() and not self._inbox:
                log.warning("disconnected from broker: %s", conn.lost.result())
                return

    def _watch_for_stall(self) -> None:
        limit = self._config.stall_timeout_s
        if not limit or not self._subscribed:
            return
        silent = time.monotonic() - self._last_message_at
        if silent > limit and not self._stalled:
            self._stalled = True
            self._metrics.mqtt_stalls.inc()
            self._metrics.mqtt_stalled.set(1)
            log.warning("no message for %.0fs while subscribed: stalled (not ready)", silent)

    def _misc(self, conn: _Connection) -> None:
        # Keepalive pings and timeouts. A timer, not a task: it must run even while the hand-off
        # is blocked by backpressure, or the broker would drop us for silence.
        if conn.lost.done():
            return
        conn.client.loop_misc()
        conn.misc_handle = self.loop.call_later(MISC_INTERVAL_S, self._misc, conn)

    # -- paho callbacks (on the loop thread, except during connect()) ---------------------

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        conn = self._conn
        if conn is None or conn.client is not client or conn.connack.done():
            return
        if rc.is_failure:
            conn.connack.set_exception(BrokerError(f"broker refused connection: {rc}"))
        else:
            conn.connack.set_result(bool(flags.session_present))

    def _on_subscribe(self, client: paho.Client, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        conn = self._conn
        if conn is None or conn.client is not client:
            return
        waiter = conn.suback.setdefault(mid, self.loop.create_future())
        if not waiter.done():
            waiter.set_result(list(codes))
        self._wake.set()

    def _on_disconnect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        conn = self._conn
        if conn is None or conn.client is not client:
            return
        if not conn.connack.done():
            conn.connack.set_exception(BrokerError(f"disconnected before CONNACK: {rc}"))
        if not conn.lost.done():
            conn.lost.set_result(str(rc))
        self._wake.set()

    def _on_message(self, client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        # paho's own path, when GatewayClient's shortcut is not in place.
        try:
            topic = message.topic.encode()
        except UnicodeDecodeError:
            topic = b""  # as _on_publish does with a topic that is not UTF-8
        self._on_publish(client, topic, message.payload, message.qos, message.mid, message.dup)

    def _on_publish(  # noqa: PLR0917 - a callback, called positionally once per message
        self, client: paho.Client, topic_bytes: bytes, payload: bytes, qos: int, mid: int, dup: bool
    ) -> None:
        conn = self._conn
        if conn is None or conn.client is not client:
            return
        try:
            topic = topic_bytes.decode()
        except UnicodeDecodeError:
            topic = ""  # the template match rejects it as topic_mismatch
        ack = conn.window.track(mid) if qos else _nothing
        if dup:
            self._metrics.mqtt_redeliveries.inc()
        self._inbox.append(Inbound(topic, payload, qos, ack, self._subscription_of(topic)))

    def _subscription_of(self, topic: str) -> int:
        filters = self._filters
        if len(filters) == 1:
            return 0
        # First match wins; Mosquitto delivers a message once even when filters overlap.
        for index, topic_filter in enumerate(filters):
            if paho.topic_matches_sub(topic_filter, topic):
                return index
        return 0

    def _on_socket_open(self, client: paho.Client, _u: Any, sock: Any) -> None:
        # Runs inside paho's reconnect(), right after it set `_sock`, before CONNECT is sent.
        install_buffered_socket(
            client, sock, self.loop, self._loop_thread, lambda why: self._lose(client, why)
        )
        self._in_loop(self._register_reader, client, sock)

    def _lose(self, client: paho.Client, why: str) -> None:
        """The connection failed under us (a send): end the session; the broker redelivers."""
        self._in_loop(self._lost, client, why)

    def _lost(self, client: paho.Client, why: str) -> None:
        conn = self._conn_of(client)
        if conn is not None and not conn.lost.done():
            conn.lost.set_result(why)
            self._wake.set()

    def _on_socket_close(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._forget_socket, client, sock)

    def _on_socket_register_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._register_writer, client, sock)

    def _on_socket_unregister_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._unregister_writer, client, sock)

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        # paho calls these from the connect() thread too; the loop's registries are not
        # thread-safe.
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    # -- socket registrations --------------------------------------------------------------

    def _conn_of(self, client: paho.Client) -> _Connection | None:
        conn = self._conn
        return conn if conn is not None and conn.client is client else None

    def _register_reader(self, client: paho.Client, sock: Any) -> None:
        conn = self._conn_of(client)
        if conn is None:
            return
        conn.sock = sock
        self._resume(conn)

    def _register_writer(self, client: paho.Client, sock: Any) -> None:
        conn = self._conn_of(client)
        if conn is not None and sock.fileno() >= 0:
            self.loop.add_writer(sock, self._on_writable, conn)

    def _unregister_writer(self, client: paho.Client, sock: Any) -> None:
        if self._conn_of(client) is not None and sock.fileno() >= 0:
            self.loop.remove_writer(sock)

    def _forget_socket(self, client: paho.Client, sock: Any) -> None:
        conn = self._conn_of(client)
        if conn is not None:
            self._unregister(conn)

    def _unregister(self, conn: _Connection) -> None:
        sock = conn.sock
        if sock is not None and sock.fileno() >= 0:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        conn.reading = False
        conn.sock = None

    def _pause(self, conn: _Connection) -> None:
        if conn.reading and conn.sock is not None:
            self.loop.remove_reader(conn.sock)
            conn.reading = False

    def _resume(self, conn: _Connection) -> None:
        if (
            not conn.reading
            and conn.sock is not None
            and not self._stop_reading.is_set()
            and len(self._inbox) < self._config.max_buffered_messages
        ):
            self.loop.add_reader(conn.sock, self._on_readable, conn)
            conn.reading = True
            if self._holds_bytes(conn.client):
                self.loop.call_soon(self._on_readable, conn)

    @staticmethod
    def _holds_bytes(client: paho.Client) -> bool:
        sock = client.socket()
        if isinstance(sock, BufferedSocket):
            return sock.buffered > 0
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _on_writable(self, conn: _Connection) -> None:
        conn.client.loop_write()

    def _on_readable(self, conn: _Connection) -> None:
        client = conn.client
        inbox = self._inbox
        before = len(inbox)
        for _ in range(READ_BURST):
            count = len(inbox)
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if len(inbox) == count:
                break
        if conn.reading and self._holds_bytes(client):
            # Bytes already read (by TLS, or our buffer) that the socket no longer signals.
            self.loop.call_soon(self._on_readable, conn)
        if len(inbox) > before:
            self._last_message_at = time.monotonic()
            if self._stalled:
                self._stalled = False
                self._metrics.mqtt_stalled.set(0)
                log.info("messages flowing again")
            self._wake.set()
            if len(inbox) >= self._config.max_buffered_messages:
                # Backpressure: stop reading; TCP fills and the broker holds the rest.
                self._pause(conn)
