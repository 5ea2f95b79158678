"""What one MQTT connection (a wire) offers the session, whatever the protocol version.

The session (sources/session.py) keeps everything that outlives a connection: backoff, the
subscriptions, the stall watchdog, the bounded intake. A wire is one connection: it frames and
parses packets, keeps the connection alive, and reports how it ended. wire_v5 does MQTT 5 with
the `mqtt5` codec; wire_v311 does MQTT 3.1.1 through paho's public API.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import BrokerError, MqttProtocol


class Intake(Protocol):
    """Where a wire delivers what it read: one call per read of the socket, not per message."""

    def deliver(  # noqa: PLR0917 - called positionally, once per read of the socket
        self,
        topics: list[str],
        payloads: list[bytes],
        qos: list[int],
        packet_ids: list[int],
        nbytes: int,
        redelivered: int,
    ) -> None:
        """A burst in arrival order: `packet_ids` of its QoS 1 messages (in order), `nbytes` of
        topics and payloads, and how many the broker flagged as redelivered (DUP)."""


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Everything a wire needs to open a session."""

    host: str
    port: int
    client_id: str
    keepalive_s: int
    connect_timeout_s: float
    session_expiry_s: int
    receive_maximum: int
    max_packet_bytes: int
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class SubscribeOutcome:
    """The broker's answer for one filter: the QoS granted, or the failure and its name."""

    topic_filter: str
    granted_qos: int | None
    failure: str | None = None


class WireState:
    """What both wires keep the same way: the CONNACK and end-of-connection futures, and the
    SUBSCRIBEs awaiting their SUBACK."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[bool] = loop.create_future()
        self.closed: asyncio.Future[BrokerError | None] = loop.create_future()
        self.session_present = False
        self._subacks: dict[int, tuple[list[str], asyncio.Future[list[SubscribeOutcome]]]] = {}

    def _await_suback(
        self, packet_id: int, filters: Sequence[tuple[str, int]]
    ) -> asyncio.Future[list[SubscribeOutcome]]:
        waiter: asyncio.Future[list[SubscribeOutcome]] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = ([f for f, _ in filters], waiter)
        return waiter

    def _suback(self, packet_id: int) -> tuple[list[str], asyncio.Future[list[SubscribeOutcome]]]:
        """The filters and waiter of a SUBSCRIBE we sent; KeyError for one we did not."""
        return self._subacks.pop(packet_id)

    def _fail_connack(self, error: BrokerError) -> None:
        if not self.connack.done():
            self.connack.set_exception(error)
            self.connack.exception()  # retrieved: the connect() caller raises it, not asyncio

    def _settle(self, error: BrokerError | None) -> None:
        """The connection is over: None when we ended it, else why it ended."""
        if not self.closed.done():
            self.closed.set_result(error)
        for _, waiter in self._subacks.values():
            if not waiter.done():
                waiter.cancel()
        self._subacks.clear()


class Wire(Protocol):
    """One open MQTT connection."""

    protocol: MqttProtocol
    session_present: bool
    # Set when the connection ends: None when we closed it, else why it ended.
    closed: asyncio.Future[BrokerError | None]

    def subscribe(
        self, filters: Sequence[tuple[str, int]]
    ) -> asyncio.Future[list[SubscribeOutcome]]:
        """Send one SUBSCRIBE; the future holds the SUBACK's outcome per filter, in order."""

    def unsubscribe(self, filters: Sequence[str]) -> asyncio.Future[list[SubscribeOutcome]]:
        """Send one UNSUBSCRIBE; the future holds the UNSUBACK's outcome per filter (a failure
        names the broker's reason; success otherwise)."""

    def send_pubacks(self, packet_ids: list[int]) -> None:
        """Acknowledge QoS 1 messages (in arrival order), in as few writes as possible."""

    def pause_reading(self) -> None:
        """Stop reading the socket (backpressure: TCP then fills and the broker holds the rest)."""

    def resume_reading(self) -> None:
        """Read the socket again."""

    async def disconnect(self) -> None:
        """Send what is queued (acks), then DISCONNECT, and close."""

    def abort(self) -> None:
        """Close at once; what was not acked is redelivered by the broker."""


# CONNACK refusals by MQTT 5 reason code (§3.2.2.2); MQTT 3.1.1 return codes 1-5 map onto
# 0x84-0x88 as paho maps them. Each says what to check.
_REFUSALS: dict[int, tuple[str, str]] = {
    0x84: ("refused_protocol", "the broker does not support this MQTT version"),
    0x85: ("refused_client_id", "the broker refused client id {client_id!r}"),
    0x86: ("refused_credentials", "bad user name or password (check mqtt.username/password)"),
    # Mosquitto answers a wrong password so too (0x87; 3.1.1 return code 5), not with 0x86.
    0x87: (
        "refused_not_authorized",
        "not authorized: a wrong user name or password, or a user the broker does not let in "
        "(check mqtt.username, the password, and the broker's users)",
    ),
    0x88: ("refused_unavailable", "the broker says it is unavailable"),
    0x89: ("refused_unavailable", "the broker says it is busy"),
    0x8A: ("refused_unavailable", "the broker has banned this client"),
    0x8C: ("refused_credentials", "bad authentication method"),
    0x97: ("refused_unavailable", "the broker's quota for this client is exceeded"),
    0x9C: ("refused_unavailable", "the broker says: use another server"),
    0x9D: ("refused_unavailable", "the broker says it has moved"),
    0x9F: ("refused_unavailable", "the broker refuses connections this fast"),
}
V311_RETURN_CODES = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


def refused(code: int, client_id: str, detail: str | None = None) -> BrokerError:
    """The error for a CONNACK that refused us (MQTT 5 reason code)."""
    reason, words = _REFUSALS.get(code, ("refused_other", "the broker refused the connection"))
    message = f"{words.format(client_id=client_id)} (CONNACK reason 0x{code:02X})"
    if detail:
        message += f": {detail[:200]!r}"
    return BrokerError(reason, message)  # type: ignore[arg-type]


# When another client connects with our client id, the broker closes our connection: with a
# DISCONNECT 0x8E on MQTT 5 where the broker sends one (Mosquitto 2.0.11 does not: it just
# closes, as on MQTT 3.1.1). A close this soon after the CONNACK is most likely such a takeover.
TAKEOVER_WINDOW_S = 2.0


def closed_by_broker(connected_for_s: float, client_id: str, detail: str) -> BrokerError:
    """The error for a connection the broker closed without saying why."""
    if connected_for_s < TAKEOVER_WINDOW_S:
        return BrokerError(
            "session_taken_over",
            f"the broker closed the connection {connected_for_s:.1f}s after accepting it, "
            f"without a reason: most likely another client connected with client id "
            f"{client_id!r} (two gateways with one id?); if the broker was shutting down "
            "instead, the next attempt is refused",
        )
    return BrokerError(
        "connection_lost",
        f"the broker closed the connection{detail} without a reason: it is shutting down or "
        f"restarting, or another client took client id {client_id!r} (Mosquitto gives no "
        "reason for either; the next attempt tells)",
    )


def failed_to_connect(exc: OSError, host: str, port: int, tls: bool) -> BrokerError:
    """The error for a connection that failed before any MQTT was spoken."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerError(
            "tls_error",
            f"{where}: the broker's certificate: {exc.verify_message} (check mqtt.tls.ca_file, "
            "and that the host name is one the certificate names)",
        )
    if isinstance(exc, ssl.SSLError) and "CERTIFICATE" in str(exc.reason or ""):
        return BrokerError(
            "tls_error",
            f"{where}: the broker refused our client certificate ({exc.reason}): check "
            "mqtt.tls.cert_file and key_file, and that the broker trusts their CA",
        )
    if isinstance(exc, ssl.SSLError):
        return BrokerError(
            "tls_error",
            f"{where}: TLS handshake failed ({exc.reason or exc}); is this port TLS (mqtts://)?",
        )
    if isinstance(exc, ConnectionRefusedError):
        return BrokerError("network_error", f"{where}: connection refused (is the broker up?)")
    if isinstance(exc, ConnectionResetError):
        if tls:
            return BrokerError(
                "tls_error",
                f"{where}: reset during the TLS handshake; is this port TLS (mqtts://)?",
            )
        return BrokerError(
            "connection_lost",
            f"{where}: the broker reset the connection before CONNACK (a TLS port spoken to "
            "without TLS? then use mqtts://)",
        )
    if isinstance(exc, TimeoutError):
        return BrokerError("network_error", f"{where}: no TCP connection within the deadline")
    return BrokerError("network_error", f"{where}: {exc.strerror or exc}")
