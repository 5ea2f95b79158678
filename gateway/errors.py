"""GatewayError tree; every error carries a bounded snake_case `reason`."""

from __future__ import annotations

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
]
REJECT_REASONS: tuple[str, ...] = get_args(RejectReason)

# Why a reading was deliberately not stored (and still acknowledged).
DropReason = Literal["duplicate", "filtered", "queue_full"]
DROP_REASONS: tuple[str, ...] = get_args(DropReason)

# Why a write to disk failed; derived from errno, never from library text.
WriteErrorReason = Literal["no_space", "permission", "read_only", "not_a_directory", "io_error"]
WRITE_ERROR_REASONS: tuple[str, ...] = get_args(WriteErrorReason)


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
    """Raised when the broker connection cannot be made or kept."""

    reason = "broker_error"


class SinkWriteError(GatewayError):
    """Raised when a sink cannot write or fsync; `reason` is a WriteErrorReason."""

    def __init__(self, reason: WriteErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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
