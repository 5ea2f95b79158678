"""The MQTT session: connect, SUBACK checks, reconnect with backoff, stall watchdog, bounded intake.

Protocol-agnostic: a wire (wire_v5 or wire_v311) is one connection; this module keeps what
outlives it. One reading's way in: the wire parses a read of the socket into a burst and calls
`deliver`; the burst waits here (bounded in messages and bytes: above either bound the socket is
no longer read, TCP fills, and the broker holds the rest) until the run loop hands it on; the
burst's QoS 1 messages are tracked in the connection's AckWindow, which sends their PUBACKs in
arrival order once the pipeline says they are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from gateway.config import MqttSourceConfig
from gateway.errors import BrokerError, MqttProtocol
from gateway.logs import OncePer
from gateway.metrics import GatewayMetrics
from gateway.model import Ack, Inbound
from gateway.sources.acks import AckWindow
from gateway.sources.silence import Silence, SubscriptionWatch
from gateway.sources.wire import ConnectOptions, Wire
from gateway.sources.wire_v5 import connect_v5
from gateway.sources.wire_v311 import connect_v311

log = logging.getLogger(__name__)

Handler = Callable[[list[Inbound]], Awaitable[None]]

# A session that lasted this long was healthy: the next failure starts the backoff afresh.
STABLE_SESSION_S = 10.0
# With protocol "auto", an MQTT 5 CONNECT gets at most this long before 3.1.1 is tried: some
# 3.1.1-only brokers (amqtt) never answer an MQTT 5 CONNECT.
PROBE_TIMEOUT_S = 5.0
# The same kind of failure is logged again at most this often (with how many there were).
REPEAT_LOG_S = 60.0
# Errors of an MQTT 5 attempt after which, with protocol "auto", 3.1.1 is tried.
_NOT_SPEAKING_V5 = frozenset(
    {"refused_protocol", "connack_timeout", "connection_lost", "protocol_error"}
)


class _Connection:
    """One wire and its AckWindow; the intake the wire delivers to. Discarded with the wire."""

    def __init__(self, source: MqttSource) -> None:
        self.source = source
        self.wire: Wire | None = None
        self.window = AckWindow(self._send_pubacks)

    def _send_pubacks(self, packet_ids: list[int]) -> None:
        if self.wire is not None:
            self.wire.send_pubacks(packet_ids)

    def deliver(  # noqa: PLR0917 - called positionally, once per read of the socket
        self,
        topics: list[str],
        payloads: list[bytes],
        qos: list[int],
        packet_ids: list[int],
        nbytes: int,
        redelivered: int,
    ) -> None:
        ack = Ack(self.window.track(packet_ids))
        self.source.take(Inbound(topics, payloads, qos, ack, nbytes), redelivered)


class _Reporter:
    """Logs a failure, but the same kind again only every REPEAT_LOG_S (with a count)."""

    def __init__(self) -> None:
        self._once = OncePer(REPEAT_LOG_S)

    def report(self, error: BrokerError, what_next: str) -> None:
        repeats = self._once.allow(error.reason)
        if repeats is None:
            return
        again = f" ({repeats} more like it since the last report)" if repeats else ""
        log.warning("broker: %s; %s%s", error, what_next, again)

    def forget(self) -> None:
        self._once.forget()


class MqttSource:
    """Receives messages from one broker and hands them on in bursts, acking only when told."""

    def __init__(self, config: MqttSourceConfig, metrics: GatewayMetrics, handler: Handler) -> None:
        self._config = config
        self._metrics = metrics
        self._handler = handler
        self._conn: _Connection | None = None
        self._pending: list[Inbound] = []
        self._pending_messages = 0
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._stop_reading = asyncio.Event()
        self._closing = asyncio.Event()
        self._reading_stopped = asyncio.Event()
        self._subscribed = False
        # Set while connected and subscribed, for whoever waits for that (the demo).
        self.subscribed = asyncio.Event()
        self._last_message_at = time.monotonic()
        self._watch = SubscriptionWatch(
            config.subscriptions, config.stall_timeout_s, metrics, self._last_message_at
        )
        # Why the last connection attempt or session failed, until subscribed again (/readyz).
        self.last_error: BrokerError | None = None
        self._attempts = 0
        self._connected_before = False
        # "auto": unknown until a broker answers; then kept for this process.
        self._protocol: MqttProtocol | None = None if config.protocol == "auto" else config.protocol
        self._reporter = _Reporter()
        self._tls = _tls_context(config) if config.tls.enabled else None
        self._warned_qos: set[str] = set()
        metrics.unacked.set_function(self._unacked)
        metrics.mqtt_stalled.set_function(lambda: 1 if self._watch.silent else 0)

    # -- state for /readyz and metrics -------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Connected and subscribed."""
        return self._subscribed

    @property
    def stalled(self) -> bool:
        """Subscribed, but a subscription has been silent for longer than stall_timeout_s."""
        return bool(self._watch.silent)

    @property
    def silent(self) -> list[Silence]:
        """The subscriptions silent for longer than stall_timeout_s, for /readyz."""
        return self._watch.silent

    @property
    def protocol(self) -> MqttProtocol | None:
        """The MQTT version in use (None before the first connection with protocol "auto")."""
        return self._protocol

    def _unacked(self) -> int:
        conn = self._conn
        return len(conn.window) if conn is not None else 0

    # -- the intake ----------------------------------------------------------------------------

    def take(self, burst: Inbound, redelivered: int) -> None:
        """A burst from the current wire: hold it for the run loop, within the intake bounds."""
        count = len(burst)
        self._pending.append(burst)
        self._pending_messages += count
        self._pending_bytes += burst.nbytes
        self._metrics.messages_received.inc(count)
        if redelivered:
            self._metrics.mqtt_redeliveries.inc(redelivered)
        self._last_message_at = now = time.monotonic()
        self._watch.heard(burst.topics, now)
        cfg = self._config
        if (
            self._pending_messages >= cfg.max_buffered_messages
            or self._pending_bytes >= cfg.max_buffered_bytes
        ):
            self._pause()
        self._wake.set()

    def _pause(self) -> None:
        conn = self._conn
        if conn is not None and conn.wire is not None:
            conn.wire.pause_reading()

    def _resume(self) -> None:
        conn = self._conn
        if conn is not None and conn.wire is not None and not self._stop_reading.is_set():
            conn.wire.resume_reading()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, receive and hand on until closed; reconnect with backoff after every end."""
        try:
            while not self._stop_reading.is_set():
                retrying = AsyncRetrying(
                    # Capped exponential backoff with jitter, so that gateways (or two fighting
                    # over one client id) do not retry in lockstep. Never gives up.
                    # (wait_exponential + wait_random rather than wait_exponential_jitter, whose
                    # arguments differ between tenacity 8.2, 9.1 and 9.2.)
                    wait=wait_exponential(
                        multiplier=self._config.reconnect_min_s, max=self._config.reconnect_max_s
                    )
                    + wait_random(0, self._config.reconnect_min_s),
                    retry=retry_if_exception_type(BrokerError),
                    sleep=self._sleep_unless_stopping,
                    before_sleep=self._before_sleep,
                    reraise=True,
                )
                async for attempt in retrying:
                    with attempt:
                        await self._serve()
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
        self._pause()
        self._wake.set()
        await self._reading_stopped.wait()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Send the acks still queued, disconnect cleanly and let run() return."""
        conn = self._conn
        if conn is not None and conn.wire is not None and not conn.wire.closed.done():
            try:
                async with asyncio.timeout(timeout_s):
                    await conn.wire.disconnect()
            except (TimeoutError, OSError) as exc:
                log.warning("could not disconnect cleanly: %s", exc or type(exc).__name__)
        self._closing.set()
        self._wake.set()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stop_reading.wait()
        except TimeoutError:
            pass

    def _before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, BrokerError):
            self._reporter.report(
                error,
                f"retrying in {state.upcoming_sleep:.1f}s (attempt {state.attempt_number}; "
                f"it retries until it connects, at most {self._config.reconnect_max_s:g}s "
                "apart)",
            )

    # -- one connection ----------------------------------------------------------------------

    async def _serve(self) -> None:
        """Connect and run one session. Returns when stopping or after a healthy session ended
        (reconnect at once); raises BrokerError when the attempt or a short session failed
        (reconnect after the backoff)."""
        if self._stop_reading.is_set():
            return
        conn = await self._connect()
        started = time.monotonic()
        try:
            error = await self._session(conn)
        finally:
            self._drop(conn)
        if error is None:
            return
        self._count(error)
        lasted = time.monotonic() - started
        if lasted >= STABLE_SESSION_S and error.reason != "session_taken_over":
            log.warning("broker: %s after %.0fs; reconnecting", error, lasted)
            self._reporter.forget()
            return
        raise error

    def _count(self, error: BrokerError) -> None:
        self.last_error = error
        counter = self._metrics.mqtt_connection_failures.get(error.reason)
        if counter is not None:
            counter.inc()

    def _options(self, connect_timeout_s: float | None = None) -> ConnectOptions:
        cfg = self._config
        return ConnectOptions(
            host=cfg.host,
            port=cfg.port,
            client_id=cfg.client_id,
            keepalive_s=cfg.keepalive_s,
            connect_timeout_s=connect_timeout_s or cfg.connect_timeout_s,
            session_expiry_s=cfg.session_expiry_s,
            receive_maximum=cfg.receive_maximum,
            max_packet_bytes=cfg.max_packet_bytes,
            username=cfg.username,
            password=cfg.read_password() if cfg.username is not None else None,
            tls=self._tls,
        )

    async def _connect(self) -> _Connection:
        if self._attempts:
            self._metrics.mqtt_reconnects.inc()
        self._attempts += 1
        conn = _Connection(self)
        self._conn = conn
        try:
            conn.wire = await self._open(conn)
        except BrokerError as error:
            self._count(error)
            self._drop(conn)
            raise
        except BaseException:
            self._drop(conn)
            raise
        wire = conn.wire
        for version, gauge in self._metrics.mqtt_protocol.items():
            gauge.set(1 if version == wire.protocol else 0)
        cfg = self._config
        if not wire.session_present and self._connected_before:
            # Our session was gone (broker restarted without persistence, or the session
            # expired): whatever was published while we were away was not kept for us.
            self._metrics.mqtt_sessions_lost.inc()
            log.warning(
                "the broker had no session for %r on reconnect: messages published while we "
                "were disconnected may be lost (check broker persistence and session expiry)",
                cfg.client_id,
            )
        self._connected_before = True
        log.info(
            "connected to %s:%d as %r (MQTT %s, session %s), subscribing to %s",
            cfg.host,
            cfg.port,
            cfg.client_id,
            wire.protocol,
            "resumed" if wire.session_present else "new",
            ", ".join(s.effective_filter for s in cfg.subscriptions),
        )
        return conn

    async def _open(self, conn: _Connection) -> Wire:
        """A wire speaking the configured protocol; with "auto", MQTT 5 first, then 3.1.1 when
        the broker does not answer MQTT 5 (refused, closed or silent)."""
        if self._protocol == "3.1.1":
            return await connect_v311(self._options(), conn)
        if self._protocol == "5":
            return await connect_v5(self._options(), conn)
        probe_s = min(self._config.connect_timeout_s, PROBE_TIMEOUT_S)
        try:
            wire: Wire = await connect_v5(self._options(probe_s), conn)
        except BrokerError as v5_error:
            if v5_error.reason not in _NOT_SPEAKING_V5:
                raise
            try:
                wire = await connect_v311(self._options(), conn)
            except BrokerError as v311_error:
                also = (
                    "the same over MQTT 5"
                    if v311_error.reason == v5_error.reason
                    else f"over MQTT 5: {v5_error}"
                )
                raise BrokerError(
                    v311_error.reason,  # type: ignore[arg-type]
                    f"{v311_error} ({also})",
                ) from None
            log.warning(
                "the broker does not speak MQTT 5 (%s); using MQTT 3.1.1 from now on", v5_error
            )
        self._protocol = wire.protocol
        return wire

    def _drop(self, conn: _Connection) -> None:
        """Forget a connection: its unacked messages will be redelivered by the broker."""
        dropped = conn.window.close()
        if dropped:
            log.info("connection ended with %d unacked; the broker redelivers them", dropped)
        if conn.wire is not None and not conn.wire.closed.done():
            conn.wire.abort()
        if self._conn is conn:
            self._conn = None
            self._subscribed = False
            self.subscribed.clear()
            self._watch.unsubscribed()
            self._metrics.mqtt_connected.set(0)

    # -- the session -----------------------------------------------------------------------

    async def _session(self, conn: _Connection) -> BrokerError | None:
        """Hand on what arrives until the connection ends (its error) or we stop (None)."""
        wire = conn.wire
        assert wire is not None
        cfg = self._config
        wake = self._wake
        filters = [(s.effective_filter, s.qos) for s in cfg.subscriptions]
        suback: asyncio.Future[object] | None = wire.subscribe(filters)  # type: ignore[assignment]
        subscribe_sent_at = time.monotonic()
        suback.add_done_callback(lambda _: wake.set())
        wire.closed.add_done_callback(lambda _: wake.set())
        self._last_message_at = checked_at = time.monotonic()
        if wire.session_present:
            self._mark_subscribed()  # the session holds our subscriptions already
        while True:
            now = time.monotonic()
            if now - checked_at >= 1.0:  # also under load: one busy filter hides no silent one
                checked_at = now
                self._watch.check(now)
            if suback is not None:
                if suback.done():
                    if not suback.cancelled():
                        refused = self._check_suback(suback.result())  # type: ignore[arg-type]
                        if refused is not None:
                            return refused
                    suback = None
                elif time.monotonic() - max(subscribe_sent_at, self._last_message_at) > (
                    cfg.subscribe_timeout_s
                ):
                    # A backlog may delay the SUBACK (Mosquitto queues it behind a resumed
                    # session's messages): only silence counts against the deadline.
                    return BrokerError(
                        "suback_timeout", f"no SUBACK within {cfg.subscribe_timeout_s}s"
                    )
            if self._pending:
                bursts, self._pending = self._pending, []
                self._pending_messages = self._pending_bytes = 0
                self._resume()
                await self._handler(bursts)
                continue
            if self._stop_reading.is_set():
                self._reading_stopped.set()
                # Stay connected, so acks of what we handed on can still go out, until close().
                while not self._closing.is_set() and not wire.closed.done():
                    wake.clear()
                    await wake.wait()
                return None
            if wire.closed.done():
                return wire.closed.result()
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await wake.wait()

    def _check_suback(self, outcomes: list[object]) -> BrokerError | None:
        """The SUBACK's verdict: the error naming each refused filter and why, or None."""
        refused = [o for o in outcomes if o.failure is not None]  # type: ignore[attr-defined]
        if refused:
            names = "; ".join(f"{o.topic_filter!r}: {o.failure}" for o in refused)  # type: ignore[attr-defined]
            return BrokerError(
                "subscribe_refused",
                f"the broker refused the subscription to {names} (check its ACL for this "
                "client; the gateway is not ready until every filter is granted)",
            )
        for wanted, outcome in zip(self._config.subscriptions, outcomes, strict=False):
            granted = outcome.granted_qos  # type: ignore[attr-defined]
            if (
                granted is not None
                and granted < wanted.qos
                and wanted.filter not in self._warned_qos
            ):
                self._warned_qos.add(wanted.filter)
                log.warning(
                    "the broker granted QoS %d for %r (asked %d): at most once for that filter",
                    granted,
                    wanted.effective_filter,
                    wanted.qos,
                )
        self._mark_subscribed()
        log.info(
            "subscribed to %s", ", ".join(s.effective_filter for s in self._config.subscriptions)
        )
        return None

    def _mark_subscribed(self) -> None:
        self._subscribed = True
        self.last_error = None
        self._watch.subscribed(time.monotonic())
        self.subscribed.set()
        self._metrics.mqtt_connected.set(1)


def _tls_context(config: MqttSourceConfig) -> ssl.SSLContext:
    """The TLS context both wires use (asyncio's transport for MQTT 5, paho for 3.1.1)."""
    tls = config.tls
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
