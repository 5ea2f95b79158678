"""GatewayError tree; every error carries a bounded snake_case `reason`."""

from __future__ import annotations

import errno
from typing import Literal, get_args

# Why a message or reading was dead-lettered. A fixed set: these become metric labels.
RejectReason = Literal[
    "payload_too_large",
    "invalid_json",
    "invalid_schema",
    "missing_field",
    "invalid_device_id",
    "device_id_mismatch",
    "topic_mismatch",
    "invalid_metric",
    "too_many_metrics",
    "invalid_value",
    "unsupported_value",
    "ts_out_of_range",
    "out_of_range",
    "timeout",
    "transform_error",
    "internal_error",
]
REJECT_REASONS: tuple[str, ...] = get_args(RejectReason)

# Why a reading was deliberately not stored (and still acknowledged).
DropReason = Literal["duplicate", "filtered", "queue_full"]
DROP_REASONS: tuple[str, ...] = get_args(DropReason)

# Why a write to disk failed; derived from errno, never from library text.
WriteErrorReason = Literal["no_space", "permission", "read_only", "not_a_directory", "io_error"]
WRITE_ERROR_REASONS: tuple[str, ...] = get_args(WriteErrorReason)

# Why compacting a partition failed (its JSON Lines stay; the next pass tries again).
# process_failed: the compaction process ended without a result (killed, out of memory).
CompactionErrorReason = Literal[
    "invalid_line",
    "invalid_parquet",
    "no_space",
    "permission",
    "read_only",
    "io_error",
    "process_failed",
]
COMPACTION_ERROR_REASONS: tuple[str, ...] = get_args(CompactionErrorReason)

# Why files were deleted: their readings are in Parquet now, or a retention limit.
DeleteReason = Literal["compacted", "max_age", "max_bytes"]
DELETE_REASONS: tuple[str, ...] = get_args(DeleteReason)


# Why a connection attempt failed or a session ended without us asking; counted, so a fixed set.
ConnectionFailureReason = Literal[
    "network_error",  # refused, unreachable, reset: nothing MQTT was said
    "tls_error",  # handshake or certificate failure (also TLS to a plaintext port)
    "connack_timeout",  # no CONNACK within connect_timeout_s
    "not_mqtt",  # the peer's answer was not MQTT (e.g. plaintext to a TLS port)
    "refused_credentials",  # bad user name or password
    "refused_not_authorized",
    "refused_client_id",
    "refused_protocol",  # the broker does not speak the MQTT version we asked for
    "refused_unavailable",  # server unavailable, busy, banned, quota, rate, use another server
    "refused_other",
    "subscribe_refused",  # a SUBACK failure code for one of our filters
    "suback_timeout",
    "session_taken_over",  # another client connected with our client id
    "server_shutting_down",
    "server_disconnect",  # any other DISCONNECT the broker sent
    "keepalive_timeout",  # no PINGRESP in time: the broker or the path is gone
    "connection_lost",  # the TCP connection ended without a DISCONNECT
    "protocol_error",  # the broker sent something we cannot read
]
CONNECTION_FAILURE_REASONS: tuple[str, ...] = get_args(ConnectionFailureReason)

# Why the metrics port closed a connection or refused a request; counted, so a fixed set.
HttpRejectReason = Literal[
    "max_connections",  # over http.max_connections: replaced the quietest, or answered 503
    "header_timeout",  # no whole request header within http.header_timeout_s
    "bad_request",  # unparsable, or over a size limit (400, 413); also non-HTTP traffic
]
HTTP_REJECT_REASONS: tuple[str, ...] = get_args(HttpRejectReason)

MqttProtocol = Literal["3.1.1", "5"]
MQTT_PROTOCOLS: tuple[str, ...] = get_args(MqttProtocol)


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    reason: str = "gateway_error"


class ConfigError(GatewayError):
    """Raised when the configuration (file, environment or flags) is invalid.

    `problems` lists each one as `field.path: why`.
    """

    reason = "config_error"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class DecodeError(GatewayError):
    """Raised when a payload cannot become Readings; `reason` is a RejectReason."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RejectedError(DecodeError):
    """Raised by a transform that refuses a reading (e.g. out of range)."""


class BrokerError(GatewayError):
    """Raised when the broker connection cannot be made or kept; `reason` says why (counted),
    the message says it in words an operator can act on."""

    def __init__(self, reason: ConnectionFailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SinkWriteError(GatewayError):
    """Raised when a sink cannot write or fsync; `reason` is a WriteErrorReason."""

    def __init__(self, reason: WriteErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CompactionError(GatewayError):
    """Raised when a partition cannot be compacted; `reason` is a CompactionErrorReason."""

    def __init__(self, reason: CompactionErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_COMPACTION_ERRNO: dict[int, CompactionErrorReason] = {
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "read_only",
}


def compaction_error(exc: OSError) -> CompactionError:
    """An OSError met while compacting or deleting, as a CompactionError of our reason set."""
    return CompactionError(_COMPACTION_ERRNO.get(exc.errno or 0, "io_error"), str(exc))


# Why the gateway would not start; checked before it reports ready.
StartupReason = Literal["data_dir_in_use", "data_dir_not_writable", "cannot_listen"]


class StartupError(GatewayError):
    """Raised when the gateway cannot start safely: its data directory is in use by another
    gateway with the same client id, or not writable, or its metrics address cannot be bound.
    The message names the directory or address and the cause."""

    def __init__(self, reason: StartupReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DrainError(GatewayError):
    """Raised when a stop could not drain within shutdown_grace_s. What was not acked stays
    with the broker, which redelivers it on the next start."""

    reason = "drain_incomplete"
