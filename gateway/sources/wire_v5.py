"""bytes <-> MQTT 5 packets for one connection (asyncio.Protocol + the mqtt5 codec).

The only module that imports `mqtt5` (pinned to a minor version: its API changed across 0.x).
The codec frames and parses packets; keepalive, flow control and the session are ours. A read of
the socket is parsed in one pass and its PUBLISHes handed to the session as one burst; the
PUBACKs of a group commit leave in one `transport.write`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import mqtt5

from gateway.errors import BrokerError, MqttProtocol
from gateway.sources.wire import (
    V311_RETURN_CODES,
    ConnectOptions,
    Intake,
    SubscribeOutcome,
    WireState,
    closed_by_broker,
    failed_to_connect,
    refused,
)

log = logging.getLogger(__name__)

_PUBLISH = mqtt5.PublishPacket
# The codec's QoS values are singletons (compared with `is`), and QoS 0 is truthy: never `if q`.
_AT_LEAST_ONCE = mqtt5.QoS.AT_LEAST_ONCE
_AT_MOST_ONCE = mqtt5.QoS.AT_MOST_ONCE
# A 3.1.1 broker answers an MQTT 5 CONNECT with a 3.1.1 CONNACK: return code 1, "unacceptable
# protocol version" (MQTT 3.1.1 §3.2.2.3), which is not a valid MQTT 5 CONNACK.
_V311_CONNACK_PREFIX = b"\x20\x02\x00"
_DISCONNECTS: dict[int, tuple[str, str]] = {
    0x8E: ("session_taken_over", "another client connected with client id {client_id!r}"),
    0x8B: ("server_shutting_down", "the broker is shutting down"),
    0x8D: ("keepalive_timeout", "the broker saw no packet from us within the keepalive"),
}
_MAX_PACKET_ID = 65535


class V5Wire(WireState, asyncio.Protocol):
    """One MQTT 5 connection. Build it with `connect_v5`."""

    protocol: MqttProtocol = "5"

    def __init__(self, options: ConnectOptions, intake: Intake) -> None:
        super().__init__()
        self._options = options
        self._intake = intake
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        # Bytes of a packet not yet whole; a bytearray so that a large packet arriving in many
        # reads is appended to, not copied again at each read.
        self._buffer = bytearray()
        self._pubacks: list[bytes | None] = [None] * (_MAX_PACKET_ID + 1)
        self._next_id = 0
        self._keepalive_s = options.keepalive_s
        self._keepalive: asyncio.TimerHandle | None = None
        self._sent_at = time.monotonic()
        self._ping_since: float | None = None
        self._paused = False
        self._resumed_at = time.monotonic()
        self._closing = False
        self._connected_at = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        o = self._options
        self._write(
            mqtt5.ConnectPacket(
                o.client_id,
                username=o.username,
                password=o.password.encode() if o.password is not None else None,
                # Our session must outlive the connection (MQTT 5 §3.1.2.4, §3.1.2.11.2): never
                # a clean start (aiomqtt's default, which wipes it on every reconnect), and a
                # session expiry > 0.
                clean_start=False,
                keep_alive=o.keepalive_s,
                session_expiry_interval=o.session_expiry_s,
                receive_max=o.receive_maximum,
                max_packet_size=o.max_packet_bytes,
            ).write()
        )

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            data = buffer  # type: ignore[assignment]
        if not self.connack.done() and data.startswith(_V311_CONNACK_PREFIX) and len(data) >= 4:
            code = V311_RETURN_CODES.get(data[3], 0x80)
            self._end(refused(code, self._options.client_id, "a MQTT 3.1.1 CONNACK"))
            return
        topics: list[str] = []
        payloads: list[bytes] = []
        qos: list[int] = []
        packet_ids: list[int] = []
        nbytes = 0
        redelivered = 0
        read = mqtt5.read
        view = memoryview(data)
        end = len(data)
        pos = 0
        try:
            while pos < end:
                try:
                    packet, size = read(view[pos:])
                except IndexError:  # a partial packet: the rest comes with the next read
                    break
                pos += size
                if packet.__class__ is _PUBLISH:
                    q = packet.qos
                    if q is _AT_LEAST_ONCE:
                        packet_ids.append(packet.packet_id)  # type: ignore[arg-type]  # QoS 1: set
                        qos.append(1)
                        if packet.duplicate:
                            redelivered += 1
                    elif q is _AT_MOST_ONCE:
                        qos.append(0)
                    else:  # QoS 2: we subscribe with at most 1, so the broker must downgrade
                        raise ValueError(f"a QoS {int(q)} PUBLISH")
                    topic = packet.topic
                    payload = packet.payload
                    topics.append(topic)
                    payloads.append(payload)
                    nbytes += len(topic) + len(payload)
                else:
                    self._control(packet)
                    if self._closing:
                        return
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._end(BrokerError("protocol_error", f"unreadable packet from the broker: {exc!r}"))
            return
        finally:
            view.release()
        if pos == end:
            if buffer:
                self._buffer = bytearray()
        elif data is buffer:
            del buffer[:pos]
        else:
            self._buffer = bytearray(data[pos:])
        if topics:
            self._intake.deliver(topics, payloads, qos, packet_ids, nbytes, redelivered)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost reports why

    def connection_lost(self, exc: Exception | None) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._closing:
            self._settle(None)
            return
        if not self.connack.done():
            if isinstance(exc, OSError):
                error = failed_to_connect(
                    exc, self._options.host, self._options.port, self._options.tls is not None
                )
            else:
                error = BrokerError(
                    "connection_lost",
                    "the broker closed the connection before CONNACK (a broker that does not "
                    "speak MQTT 5, a TLS port spoken to without TLS, or a ban)",
                )
            self._end(error)
            return
        why = f" ({exc})" if exc is not None else ""
        connected_for = time.monotonic() - self._connected_at
        self._settle(closed_by_broker(connected_for, self._options.client_id, why))

    # -- what the session calls ---------------------------------------------------------------

    def subscribe(
        self, filters: Sequence[tuple[str, int]]
    ) -> asyncio.Future[list[SubscribeOutcome]]:
        packet_id = self._new_packet_id()
        waiter = self._await_suback(packet_id, filters)
        topic_filters = [mqtt5.TopicFilter(f, max_qos=mqtt5.QoS(q)) for f, q in filters]
        self._write(mqtt5.SubscribePacket(packet_id, topic_filters).write())
        return waiter

    def unsubscribe(self, filters: Sequence[str]) -> asyncio.Future[list[SubscribeOutcome]]:
        packet_id = self._new_packet_id()
        waiter = self._await_suback(packet_id, [(f, 0) for f in filters])
        self._write(mqtt5.UnsubscribePacket(packet_id, list(filters)).write())
        return waiter

    def send_pubacks(self, packet_ids: list[int]) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or not packet_ids:
            return
        table = self._pubacks
        chunks = []
        for packet_id in packet_ids:
            encoded = table[packet_id]
            if encoded is None:  # each id's PUBACK is encoded by the codec once, then reused
                encoded = table[packet_id] = mqtt5.PubAckPacket(packet_id).write()
            chunks.append(encoded)
        self._write(b"".join(chunks))

    def pause_reading(self) -> None:
        if not self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = False
            self._resumed_at = time.monotonic()
            self._transport.resume_reading()

    async def disconnect(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._settle(None)
            return
        self._closing = True
        self._write(mqtt5.DisconnectPacket().write())
        transport.close()  # asyncio sends what is buffered before it closes
        await asyncio.shield(self.closed)

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()
        self._settle(None)

    # -- inside ----------------------------------------------------------------------------------

    def _control(self, packet: object) -> None:
        if isinstance(packet, mqtt5.ConnAckPacket):
            if packet.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
                detail = packet.reason_str
                self._end(refused(int(packet.reason_code), self._options.client_id, detail))
                return
            self.session_present = packet.session_present
            self._connected_at = time.monotonic()
            if packet.server_keep_alive is not None:  # MQTT 5 §3.2.2.3.14: the server decides
                self._keepalive_s = packet.server_keep_alive
            self._schedule_keepalive()
            if not self.connack.done():
                self.connack.set_result(packet.session_present)
        elif isinstance(packet, mqtt5.SubAckPacket | mqtt5.UnsubAckPacket):
            self._answered(packet, granted=isinstance(packet, mqtt5.SubAckPacket))
        elif isinstance(packet, mqtt5.PingRespPacket):
            self._ping_since = None
        elif isinstance(packet, mqtt5.DisconnectPacket):
            code = int(packet.reason_code)
            reason, words = _DISCONNECTS.get(
                code, ("server_disconnect", "the broker ended the session")
            )
            message = f"{words.format(client_id=self._options.client_id)} (DISCONNECT 0x{code:02X})"
            if packet.reason_str:
                message += f": {packet.reason_str[:200]!r}"
            self._end(BrokerError(reason, message))  # type: ignore[arg-type]
        else:
            raise ValueError(f"an unexpected {type(packet).__name__}")

    def _answered(self, packet: mqtt5.SubAckPacket | mqtt5.UnsubAckPacket, granted: bool) -> None:
        """A SUBACK (codes below 0x80 are the granted QoS) or an UNSUBACK: one outcome per
        filter of the (UN)SUBSCRIBE it answers."""
        try:
            filters, waiter = self._suback(packet.packet_id)
        except KeyError:
            kind = type(packet).__name__
            raise ValueError(f"a {kind} for packet id {packet.packet_id} we did not send") from None
        outcomes = [
            SubscribeOutcome(f, int(code) if granted else None)
            if int(code) < 0x80
            else SubscribeOutcome(f, None, f"{code.name.lower()} (0x{int(code):02X})")
            for f, code in zip(filters, packet.reason_codes, strict=False)
        ]
        if not waiter.done():
            waiter.set_result(outcomes)

    def _schedule_keepalive(self) -> None:
        if self._keepalive_s > 0:
            # Check often enough to ping well before the broker's 1.5 x keepalive (§3.1.2.10).
            self._keepalive = self._loop.call_later(self._keepalive_s / 4, self._tick)

    def _tick(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        now = time.monotonic()
        if self._ping_since is not None and not self._paused:
            # While we do not read (backpressure) a PINGRESP cannot be seen: count from resume.
            waited = now - max(self._ping_since, self._resumed_at)
            if waited > self._keepalive_s:
                self._end(
                    BrokerError(
                        "keepalive_timeout",
                        f"no PINGRESP within {self._keepalive_s}s: the broker or the path is gone",
                    )
                )
                return
        if now - self._sent_at >= self._keepalive_s / 2 and self._ping_since is None:
            self._ping_since = now
            self._write(mqtt5.PingReqPacket().write())
        self._schedule_keepalive()

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self._sent_at = time.monotonic()

    def _new_packet_id(self) -> int:
        self._next_id = self._next_id % _MAX_PACKET_ID + 1
        return self._next_id

    def _end(self, error: BrokerError) -> None:
        """The connection is over, for `error`: report it and close."""
        self._fail_connack(error)
        self._settle(error)
        self._closing = True
        if self._transport is not None:
            self._transport.abort()


async def connect_v5(options: ConnectOptions, intake: Intake) -> V5Wire:
    """Open a connection and a session (CONNECT/CONNACK); BrokerError naming the cause."""
    loop = asyncio.get_running_loop()
    wire: V5Wire | None = None
    try:
        async with asyncio.timeout(options.connect_timeout_s):
            _, wire = await loop.create_connection(
                lambda: V5Wire(options, intake),
                options.host,
                options.port,
                ssl=options.tls,
                server_hostname=options.host if options.tls is not None else None,
            )
            await wire.connack
    except TimeoutError:
        if wire is None:
            raise failed_to_connect(TimeoutError(), options.host, options.port, False) from None
        wire.abort()
        raise BrokerError(
            "connack_timeout",
            f"{options.host}:{options.port}: no CONNACK within {options.connect_timeout_s}s: "
            "something accepted the connection and never answered (a frozen or overloaded "
            "broker, one that does not speak MQTT 5, or not MQTT at all)",
        ) from None
    except OSError as exc:
        raise failed_to_connect(exc, options.host, options.port, options.tls is not None) from None
    except BaseException:
        if wire is not None:
            wire.abort()
        raise
    return wire
