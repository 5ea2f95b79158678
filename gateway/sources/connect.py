"""Opening one wire: the connect options, TLS, and which MQTT version speaks to this broker.

With protocol "auto", MQTT 5 is tried first and 3.1.1 when the broker does not answer MQTT 5
(refused, closed or silent); failures are logged, the same kind again only every REPEAT_LOG_S.
"""

from __future__ import annotations

import logging
import ssl

from gateway.config import MqttSourceConfig
from gateway.errors import BrokerError, MqttProtocol
from gateway.logs import OncePer
from gateway.sources.wire import ConnectOptions, Intake, Wire
from gateway.sources.wire_v5 import connect_v5
from gateway.sources.wire_v311 import connect_v311

log = logging.getLogger(__name__)

# With protocol "auto", an MQTT 5 CONNECT gets at most this long before 3.1.1 is tried: some
# 3.1.1-only brokers (amqtt) never answer an MQTT 5 CONNECT.
PROBE_TIMEOUT_S = 5.0
# The same kind of failure is logged again at most this often (with how many there were).
REPEAT_LOG_S = 60.0
# Errors of an MQTT 5 attempt after which, with protocol "auto", 3.1.1 is tried.
_NOT_SPEAKING_V5 = frozenset(
    {"refused_protocol", "connack_timeout", "connection_lost", "protocol_error"}
)


def connect_options(
    cfg: MqttSourceConfig, tls: ssl.SSLContext | None, connect_timeout_s: float | None = None
) -> ConnectOptions:
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
        tls=tls,
    )


async def open_wire(
    cfg: MqttSourceConfig,
    protocol: MqttProtocol | None,
    tls: ssl.SSLContext | None,
    intake: Intake,
) -> Wire:
    """A wire speaking `protocol`; with None ("auto", not yet known), MQTT 5 first, then 3.1.1
    when the broker does not answer MQTT 5 (refused, closed or silent)."""
    if protocol == "3.1.1":
        return await connect_v311(connect_options(cfg, tls), intake)
    if protocol == "5":
        return await connect_v5(connect_options(cfg, tls), intake)
    probe_s = min(cfg.connect_timeout_s, PROBE_TIMEOUT_S)
    try:
        wire: Wire = await connect_v5(connect_options(cfg, tls, probe_s), intake)
    except BrokerError as v5_error:
        if v5_error.reason not in _NOT_SPEAKING_V5:
            raise
        try:
            wire = await connect_v311(connect_options(cfg, tls), intake)
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
        log.warning("the broker does not speak MQTT 5 (%s); using MQTT 3.1.1 from now on", v5_error)
    return wire


def tls_context(config: MqttSourceConfig) -> ssl.SSLContext:
    """The TLS context both wires use (asyncio's transport for MQTT 5, paho for 3.1.1)."""
    tls = config.tls
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class FailureLog:
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
