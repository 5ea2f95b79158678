"""The MQTT session: connect, SUBACK checks, reconnect with backoff, stall watchdog, bounded intake.

Protocol-agnostic: a wire (wire_v5 or wire_v311) is one connection; this module keeps what
outlives it. One reading's way in: the wire parses a read of the socket into a burst and calls
`deliver`; the burst waits here (bounded in messages and bytes: above either bound the socket is
no longer read, TCP fills, and the broker holds the rest) until the run loop hands it on; the
burst's QoS 1 messages are tracked in the connection's AckWindow, which sends their PUBACKs in
arrival order once the pipeline says they are stored.

Beside it: connect.py opens a wire (options, TLS, which MQTT version), intake.py holds what was
delivered until handed on, subscribing.py reads the broker's (UN)SUBACKs, silence.py watches
each subscription for silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.backoff import backoff
from gateway.config import MqttSourceConfig
from gateway.errors import BrokerError, MqttProtocol
from gateway.metrics import GatewayMetrics
from gateway.model import Ack, Inbound
from gateway.sources.acks import AckWindow
from gateway.sources.connect import FailureLog, open_wire, tls_context
from gateway.sources.intake import PendingBursts
from gateway.sources.silence import Silence, SubscriptionWatch
from gateway.sources.subscribing import answer, check_suback, log_unsubscribed
from gateway.sources.wire import SubscribeOutcome, Wire

log = logging.getLogger(__name__)

Handler = Callable[[list[Inbound]], Awaitable[None]]

# A session that lasted this long was healthy: the next failure starts the backoff afresh.
STABLE_SESSION_S = 10.0


class _Connection:
    """One wire and its AckWindow; the intake the wire delivers to. Discarded with the wire."""

    def __init__(self, source: MqttSource) -> None:
        self.source = source
        self.wire: Wire | None = None
        self.window = AckWindow(self._send_pubacks)

    def _send_pubacks(self, packet_ids: list[int]) -> None:
        if self.wire is not None:
            self.wire.send_pubacks(packet_ids)
        if not self.window:
            self.source.wake()  # a drain before a reconnect waits for this

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


@dataclass
class _NextSession:
    """A new session asked for by a reload: drain, disconnect, then connect with `config`."""

    config: MqttSourceConfig
    before_connect: Callable[[], Awaitable[None]] | None
    drain_timeout_s: float
    outcome: asyncio.Future[None]


# What _session returns when it ended for a reload's new session (not an error).
_RECONFIGURED = object()


class MqttSource:
    """Receives messages from one broker and hands them on in bursts, acking only when told."""

    def __init__(
        self,
        config: MqttSourceConfig,
        metrics: GatewayMetrics,
        handler: Handler,
        remembered: Sequence[str] = (),
        remember: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        """`remembered`: the filters an earlier run subscribed to (the broker may still hold
        them in our persistent session); those no longer configured are unsubscribed at the
        next connect. `remember` is told the filters each time the broker granted them."""
        self._config = config
        self._remembered = set(remembered)
        self._remember = remember
        # A reload that needs a new session: (its config, what to run before connecting, who
        # waits for the outcome).
        self._next: _NextSession | None = None
        self._ended: BrokerError | None = None  # a live change failed: end the session so
        self._awaiting: asyncio.Future[None] | None = None
        self._metrics = metrics
        self._handler = handler
        self._conn: _Connection | None = None
        self._intake = PendingBursts()
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
        self._reporter = FailureLog()
        self._tls = tls_context(config) if config.tls.enabled else None
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

    def wake(self) -> None:
        self._wake.set()

    # -- live changes (a reload) ---------------------------------------------------------------

    def reconfigure(self, config: MqttSourceConfig) -> None:
        """Settings that need no new session and no (un)subscribe: intake bounds, stall
        watchdog, backoff and timeouts, from now on."""
        self._config = config
        self._watch = self._watch.renewed(config.subscriptions, config.stall_timeout_s)

    async def resubscribe(self, config: MqttSourceConfig) -> list[str]:
        """Subscribe to the filters `config` adds and unsubscribe from those it removes, on the
        live session (no reconnect); returns what changed, in words. Without a session, the next
        one subscribes as configured. BrokerError when the broker refuses a new filter: the
        session then ends (and is retried, not ready), as it would at connect."""
        old = {s.effective_filter: s.qos for s in self._config.subscriptions}
        new = {s.effective_filter: s.qos for s in config.subscriptions}
        added = [(f, qos) for f, qos in new.items() if old.get(f) != qos]
        removed = [f for f in old if f not in new]
        self._config = config
        self._watch = self._watch.renewed(config.subscriptions, config.stall_timeout_s)
        conn = self._conn
        if conn is None or conn.wire is None or not self._subscribed:
            return []
        wire = conn.wire
        done: list[str] = []
        if added:
            outcomes = await self._answer(wire.subscribe(added), "SUBACK")
            refused = [o for o in outcomes if o.failure is not None]
            if refused:
                names = "; ".join(f"{o.topic_filter!r}: {o.failure}" for o in refused)
                error = BrokerError(
                    "subscribe_refused", f"the broker refused the subscription to {names}"
                )
                # The session ends as it would at connect: retried with backoff, not ready.
                self._ended = error
                self._wake.set()
                raise error
            done += [f"subscribed to {f!r}" for f, _ in added]
        if removed:
            outcomes = await self._answer(wire.unsubscribe(removed), "UNSUBACK")
            for outcome in outcomes:
                if outcome.failure is not None:
                    log.warning(
                        "could not unsubscribe %r: %s", outcome.topic_filter, outcome.failure
                    )
            done += [f"unsubscribed from {f!r}" for f in removed]
        await self._note_subscribed(list(new))
        return done

    async def reconnect(
        self,
        config: MqttSourceConfig,
        drain_timeout_s: float,
        before_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """A new session with `config` (broker, credentials, client id, protocol...): stop
        reading, let what was received be stored and acked (at most `drain_timeout_s`; what is
        still unacked then is redelivered), disconnect cleanly, run `before_connect`, connect.
        Returns once the new session's CONNACK is in; BrokerError if that attempt failed (the
        session keeps retrying with backoff)."""
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._next = _NextSession(config, before_connect, drain_timeout_s, outcome)
        if self._conn is None:  # not connected: the next attempt uses the new config at once
            self._take_next()
        self._wake.set()
        await outcome

    def _take_next(self) -> _NextSession | None:
        """Switch to the requested session's config (before its first connect)."""
        upcoming, self._next = self._next, None
        if upcoming is not None:
            if upcoming.config.protocol != self._config.protocol:
                protocol = upcoming.config.protocol
                self._protocol = None if protocol == "auto" else protocol
            self._config = upcoming.config
            self._tls = tls_context(upcoming.config) if upcoming.config.tls.enabled else None
            self._watch = self._watch.renewed(
                upcoming.config.subscriptions, upcoming.config.stall_timeout_s
            )
        return upcoming

    async def _answer(
        self, waiter: asyncio.Future[list[SubscribeOutcome]], what: str
    ) -> list[SubscribeOutcome]:
        return await answer(
            waiter, what, self._config.subscribe_timeout_s, lambda: self._last_message_at
        )

    async def _note_subscribed(self, filters: list[str]) -> None:
        self._remembered = set(filters)
        if self._remember is not None:
            try:
                await self._remember(filters)
            except OSError as exc:
                log.warning("could not remember the subscriptions (%s): %s", filters, exc)

    # -- the intake ----------------------------------------------------------------------------

    def take(self, burst: Inbound, redelivered: int) -> None:
        """A burst from the current wire: hold it for the run loop, within the intake bounds."""
        self._intake.add(burst)
        if redelivered:
            self._metrics.mqtt_redeliveries.inc(redelivered)
        self._last_message_at = now = time.monotonic()
        self._watch.heard(burst.topics, now)
        cfg = self._config
        if self._intake.over(cfg.max_buffered_messages, cfg.max_buffered_bytes):
            self._pause()
        self._wake.set()

    def _hand_off(self) -> tuple[list[Inbound], int]:
        """The oldest bursts (intake.py says how many); reading resumes once below the bounds."""
        bursts, messages = self._intake.hand_off()
        cfg = self._config
        if not self._intake.over(cfg.max_buffered_messages, cfg.max_buffered_bytes):
            self._resume()
        return bursts, messages

    def _pause(self) -> None:
        conn = self._conn
        if conn is not None and conn.wire is not None:
            conn.wire.pause_reading()

    def _resume(self) -> None:
        conn = self._conn
        if (
            conn is not None
            and conn.wire is not None
            and not self._stop_reading.is_set()
            and self._next is None  # draining for a reload's new session
        ):
            conn.wire.resume_reading()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, receive and hand on until closed; reconnect with backoff after every end."""
        try:
            while not self._stop_reading.is_set():
                # Capped exponential backoff with jitter, so that gateways (or two fighting over
                # one client id) do not retry in lockstep. Never gives up.
                retrying = backoff(
                    retry_on=BrokerError,
                    min_s=self._config.reconnect_min_s,
                    max_s=self._config.reconnect_max_s,
                    jitter="added",
                    sleep=self._sleep_unless_stopping,
                    before_sleep=self._before_sleep,
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

    def _before_sleep(self, error: BaseException | None, delay: float, attempt: int) -> None:
        if isinstance(error, BrokerError):
            self._reporter.report(
                error,
                f"retrying in {delay:.1f}s (attempt {attempt}; it retries until it connects, "
                f"at most {self._config.reconnect_max_s:g}s apart)",
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
        if error is _RECONFIGURED:
            await self._start_next()
            return
        assert isinstance(error, BrokerError)
        self._count(error)
        lasted = time.monotonic() - started
        if lasted >= STABLE_SESSION_S and error.reason != "session_taken_over":
            log.warning("broker: %s after %.0fs; reconnecting", error, lasted)
            self._reporter.forget()
            return
        raise error

    async def _start_next(self) -> None:
        """Between the old session and a reload's new one: switch configs, run its hook."""
        upcoming = self._take_next()
        if upcoming is None:
            return
        log.info("reconnecting with the reloaded settings")
        if upcoming.before_connect is not None:
            try:
                await upcoming.before_connect()
            except Exception as exc:
                if not upcoming.outcome.done():
                    upcoming.outcome.set_exception(exc)
                raise
        self._awaiting = upcoming.outcome

    def _settle_awaiting(self, error: BaseException | None) -> None:
        """The first connect after a reload's new session: tell the reload how it went."""
        waiter, self._awaiting = self._awaiting, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _count(self, error: BrokerError) -> None:
        self.last_error = error
        counter = self._metrics.mqtt_connection_failures.get(error.reason)
        if counter is not None:
            counter.inc()

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
            self._settle_awaiting(error)
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
        self._settle_awaiting(None)
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
        """A wire speaking the configured protocol (connect.py); "auto" is settled by the first
        broker that answers, for this process."""
        wire = await open_wire(self._config, self._protocol, self._tls, conn)
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

    async def _session(self, conn: _Connection) -> BrokerError | object | None:
        """Hand on what arrives until the connection ends (its error), we stop (None), or a
        reload asked for a new session (_RECONFIGURED, once drained)."""
        wire = conn.wire
        assert wire is not None
        cfg = self._config
        wake = self._wake
        filters = [(s.effective_filter, s.qos) for s in cfg.subscriptions]
        # Subscribed every time, session present or not (a config may have changed meanwhile),
        # and what an earlier run subscribed to but is no longer configured is unsubscribed:
        # else a resumed session would keep delivering it.
        stale = sorted(self._remembered - {f for f, _ in filters})
        if stale:
            unsuback = wire.unsubscribe(stale)
            unsuback.add_done_callback(lambda done: log_unsubscribed(stale, done))
        subscribing = wire.subscribe(filters)
        subscribing.add_done_callback(lambda _: wake.set())
        suback: asyncio.Future[list[SubscribeOutcome]] | None = subscribing
        subscribe_sent_at = time.monotonic()
        wire.closed.add_done_callback(lambda _: wake.set())
        draining_since: float | None = None
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
                        refused = self._check_suback(suback.result())
                        if refused is not None:
                            return refused
                        await self._note_subscribed([f for f, _ in filters])
                    suback = None
                elif time.monotonic() - max(subscribe_sent_at, self._last_message_at) > (
                    cfg.subscribe_timeout_s
                ):
                    # A backlog may delay the SUBACK (Mosquitto queues it behind a resumed
                    # session's messages): only silence counts against the deadline.
                    return BrokerError(
                        "suback_timeout", f"no SUBACK within {cfg.subscribe_timeout_s}s"
                    )
            if self._intake:
                bursts, messages = self._hand_off()
                # Counted as received when handed on, in the same step as the handler counts
                # them in flight: received = in flight + settled holds at every scrape.
                self._metrics.messages_received.inc(messages)
                await self._handler(bursts)
                continue
            if self._ended is not None:
                error, self._ended = self._ended, None
                return error
            if self._next is not None and not wire.closed.done():
                # A reload wants a new session: stop reading, let everything received be
                # stored and acked, then end this one cleanly.
                if draining_since is None:
                    draining_since = time.monotonic()
                    wire.pause_reading()
                    log.info("draining before reconnecting: %d unacked", len(conn.window))
                overdue = time.monotonic() - draining_since > self._next.drain_timeout_s
                if not conn.window or overdue:
                    if conn.window:
                        log.warning(
                            "reconnecting with %d unacked; the broker redelivers them",
                            len(conn.window),
                        )
                    await wire.disconnect()
                    return _RECONFIGURED
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

    def _check_suback(self, outcomes: Sequence[SubscribeOutcome]) -> BrokerError | None:
        """The SUBACK's verdict (subscribing.py); when every filter is granted, subscribed."""
        refused = check_suback(self._config.subscriptions, outcomes, self._warned_qos)
        if refused is not None:
            return refused
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
