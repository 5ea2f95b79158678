"""pydantic models: GatewayConfig + one <Part>Config per component; load_config()."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.errors import ConfigError
from gateway.subscriptions import MappingConfig, SubscriptionConfig

__all__ = [
    "GatewayConfig",
    "LimitsConfig",
    "MappingConfig",
    "MqttSourceConfig",
    "SubscriptionConfig",
    "load_config",
]

# A client id names our files, so it must be a safe path segment.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsConfig(_Part):
    """TLS towards the broker (used with mqtts:// or `enabled = true`)."""

    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(
        None, description="CA bundle to verify the broker; the system store when unset."
    )
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client private key (mutual TLS).")
    verify: bool = Field(
        True, description="Verify the broker's certificate and host name. Turn off only to test."
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


class MqttSourceConfig(_Part):
    """Where telemetry comes from and how the broker session is kept."""

    _password_read: str | None = PrivateAttr(default=None)
    _password_problem: str | None = PrivateAttr(default=None)

    host: str = Field("127.0.0.1", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    username: str | None = Field(None, description="User name; none for anonymous.")
    password: SecretStr | None = Field(
        None, description="Password. Prefer GATEWAY_MQTT__PASSWORD or password_file."
    )
    password_file: Path | None = Field(
        None, description="File whose first line is the password (e.g. a mounted secret)."
    )
    client_id: str = Field(
        "telemetry-gateway",
        description="Fixed, so the broker keeps our session; also names our segment files.",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto",
        description="MQTT protocol version. auto: MQTT 5, and 3.1.1 from then on when the broker "
        "does not speak 5 (amqtt, Azure IoT Hub). 5 is the fast path; 3.1.1 goes through paho.",
    )
    keepalive_s: int = Field(30, ge=5, le=65535, description="MQTT keepalive interval.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Deadline for CONNECT/CONNACK.")
    subscribe_timeout_s: float = Field(10.0, gt=0, description="Deadline for SUBSCRIBE/SUBACK.")
    session_expiry_s: int = Field(
        86400,
        ge=1,
        description="MQTT 5: how long the broker keeps our session (and queues for us) offline.",
    )
    receive_maximum: int = Field(
        1000,
        ge=1,
        le=65535,
        description="MQTT 5: most unacked QoS 1 messages the broker may send us. On 3.1.1 the "
        "broker's own limit applies (Mosquitto: max_inflight_messages, default 20).",
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay (then doubles).")
    reconnect_max_s: float = Field(30.0, gt=0, description="Cap of the reconnect delay.")
    stall_timeout_s: float = Field(
        300.0,
        ge=0,
        description="A subscription with no message for this long while subscribed is silent: "
        "/readyz fails naming it, it is logged and counted (an ACL that denies a filter, or a "
        "frozen broker, shows only as silence). Set it above the longest quiet spell of the "
        "busiest subscription's devices; 0 disables.",
    )
    max_buffered_messages: int = Field(
        2000,
        ge=1,
        description="Messages read from the socket but not yet handed on; above this we stop "
        "reading the socket, so TCP pushes back on the broker.",
    )
    max_buffered_bytes: int = Field(
        16 * 1024 * 1024,
        ge=64 * 1024,
        description="Topic and payload bytes read but not yet handed on; above this we stop "
        "reading the socket, as for max_buffered_messages.",
    )
    max_packet_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=268_435_455,
        description="MQTT 5: the largest packet the broker may send us (Maximum Packet Size). The "
        "broker discards larger messages without sending them (they cannot be dead-lettered), so "
        "keep it well above limits.max_payload_bytes: payloads in between arrive and are "
        "dead-lettered as payload_too_large. MQTT 3.1.1 has no such limit: bound it at the "
        "broker (Mosquitto: message_size_limit).",
    )
    subscriptions: tuple[SubscriptionConfig, ...] = Field(
        (SubscriptionConfig(),), min_length=1, description="What to subscribe to."
    )

    @field_validator("client_id")
    @classmethod
    def _safe_client_id(cls, value: str) -> str:
        if not SAFE_NAME.match(value):
            raise ValueError("use 1-128 of A-Z a-z 0-9 . _ - (it names files), starting alnum")
        return value

    @model_validator(mode="after")
    def _subscriptions_named_once(self) -> MqttSourceConfig:
        labels = [sub.label(index) for index, sub in enumerate(self.subscriptions)]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"subscriptions: each needs its own name (or index): {twice}")
        return self

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttSourceConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    @model_validator(mode="after")
    def _read_password_file(self) -> MqttSourceConfig:
        # Read once, when the config is loaded (at start and at each reload): a secret rotated
        # in the file is taken by a reload, which then sees the change and reconnects; a
        # reconnect meanwhile keeps using the password the running config was loaded with.
        if self.password_file is not None:
            try:
                text = self.password_file.read_text(encoding="utf-8")
            except OSError as exc:
                self._password_problem = f"mqtt.password_file: cannot read: {exc.strerror}"
            else:
                self._password_read = text.splitlines()[0] if text else ""
        return self

    def read_password(self) -> str | None:
        """The broker password from the config/env, or as the password file held when this
        config was loaded; ConfigError if that file could not be read."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self._password_problem is not None:
            raise ConfigError(self._password_problem)
        return self._password_read


class LimitsConfig(_Part):
    """What a payload may be before it is rejected."""

    max_payload_bytes: int = Field(65536, ge=16, description="Larger payloads are rejected.")
    max_metrics: int = Field(64, ge=1, description="Most metrics in one reading.")
    max_readings_per_message: int = Field(1000, ge=1, description="Most readings in one batch.")
    max_device_id_length: int = Field(
        64, ge=1, le=128, description="Longest device id (ids are A-Z a-z 0-9 . _ - only)."
    )
    max_future_s: float = Field(
        300.0, ge=0, description="Device time may be at most this far ahead of ours."
    )
    max_past_s: float = Field(
        7 * 86400.0, ge=0, description="Device time may be at most this far behind ours."
    )


class CheckRangeStep(_Part):
    """Reject or flag a reading whose metric is outside [min, max]."""

    kind: Literal["check_range"]
    metric: str = Field(description="Metric name to check.")
    min: float | None = Field(None, description="Lowest allowed value.")
    max: float | None = Field(None, description="Highest allowed value.")
    action: Literal["reject", "flag"] = Field(
        "reject", description="reject: dead-letter it; flag: store it with a flag."
    )

    @model_validator(mode="after")
    def _a_range(self) -> CheckRangeStep:
        # Found by check-config, not only when the gateway builds the step.
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        return self


class DropDuplicatesStep(_Part):
    """Superseded by [dedupe] (on by default); accepted so that older configs still load.

    The step does nothing: the file sink drops repeats by (device_id, seq, ts). Its fields are
    not used; with `dedupe.enabled = false` the config is refused (the two contradict).
    """

    kind: Literal["drop_duplicates"]
    window: int = Field(1024, ge=1, description="Not used (was: seq numbers kept per device).")
    max_devices: int = Field(100_000, ge=1, description="Not used (was: devices remembered).")


class ConvertUnitsStep(_Part):
    """Convert one metric from one unit to another (e.g. degF -> degC)."""

    kind: Literal["convert_units"]
    metric: str = Field(description="Metric name to convert.")
    from_unit: str = Field(description="Unit of incoming values (assumed when none is given).")
    to_unit: str = Field(description="Unit to store.")


StepConfig = Annotated[
    CheckRangeStep | DropDuplicatesStep | ConvertUnitsStep, Field(discriminator="kind")
]


class PipelineConfig(_Part):
    """Channels and workers between the source and the sinks."""

    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="Workers running the steps (each device's readings always go to the same "
        "one). The built-in steps never wait, so one is fastest; more help only steps that wait.",
    )
    channel_capacity: int = Field(
        4096, ge=1, description="Readings each bounded channel holds before it pushes back."
    )
    channel_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes each bounded channel holds before it pushes back, whichever of the "
        "two bounds comes first: the topics and payloads of the messages its readings came from "
        "(a reading keeps its payload until it is written, for a dead-letter record).",
    )
    processing_timeout_s: float = Field(
        1.0, gt=0, description="A reading not through all steps by then is dead-lettered."
    )
    qos0_policy: Literal["block", "drop_oldest"] = Field(
        "block",
        description="When full, QoS 0 readings wait (block) or the oldest QoS 0 reading is "
        "dropped and counted (drop_oldest). QoS 1 readings always wait.",
    )


class FilesConfig(_Part):
    """Where and how readings are stored."""

    data_dir: Path = Field(Path("./data"), description="Root of the data and dead-letter files.")
    fsync: Literal["always", "interval", "never"] = Field(
        "always",
        description="always: fsync each commit, then ack. interval: fsync every fsync_interval_s, "
        "acks wait for it. never: ack after write(); a power loss can lose acked readings.",
    )
    fsync_interval_s: float = Field(1.0, gt=0, description="fsync period for fsync = 'interval'.")
    max_batch: int = Field(2000, ge=1, description="Most readings in one group commit.")
    rotate_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Seal a segment at this size.")
    rotate_age_s: float = Field(
        60.0,
        gt=0,
        description="Seal a segment this old: readers that skip .open files see a reading within "
        "this time.",
    )
    max_open_segments: int = Field(
        8, ge=1, description="Partitions written at once; the least recent is sealed."
    )
    gzip: bool = Field(False, description="Compress sealed segments to .jsonl.gz.")
    retry_min_s: float = Field(0.2, gt=0, description="First delay after a failed write.")
    retry_max_s: float = Field(10.0, gt=0, description="Cap of the delay between write retries.")
    write_timeout_s: float = Field(
        30.0, gt=0, description="A write or fsync slower than this counts as a failure."
    )


class DedupeConfig(_Part):
    """Each reading with a seq stored once: the identities of recently written readings."""

    enabled: bool = Field(
        True,
        description="Drop (ack, and count as dropped, reason duplicate) a reading whose "
        "(device_id, seq, ts) this gateway wrote recently. Readings without seq are always "
        "written (at least once).",
    )
    window_s: float = Field(
        600.0,
        gt=0,
        description="An identity is remembered this long after it was written (those seeded at "
        "start: this long after start); also the span of segments read at start.",
    )
    max_identities: int = Field(
        50_000,
        ge=1,
        description="Most identities remembered (~170 bytes each, ~250 bytes of RSS); the oldest "
        "go first. Keep it above the readings that can be unacked at once (README: Delivery "
        "guarantees): the default covers the default pipeline ~3 times over with one reading "
        "per message.",
    )
    seed: bool = Field(
        True,
        description="At start, before the first message, remember the readings of this client "
        "id's segments written in the last window_s before its last write (and of Parquet files "
        "compacted from them), so that what a crash left unacked is not stored twice.",
    )


class DeadLetterConfig(_Part):
    """How rejected messages are stored (under <data_dir>/dead-letter/)."""

    max_payload_bytes: int = Field(
        4096,
        ge=0,
        description="Payload bytes kept per record. A longer payload keeps this prefix, its size "
        "(payload_bytes) and its SHA-256 (payload_sha256); the rest is released as soon as the "
        "message is rejected, so an oversized flood costs neither memory nor disk.",
    )


class HttpConfig(_Part):
    """The one port for /metrics, /healthz and /readyz, and what a client may do to it."""

    host: str = Field(
        "127.0.0.1",
        description="Listen address. 0.0.0.0 only where the network in front is trusted or "
        "the port is needed from outside (a Prometheus in another pod); the limits below hold "
        "either way.",
    )
    port: int = Field(9108, ge=0, le=65535, description="Listen port (0 = any free port).")
    reload: bool = Field(
        True,
        description="Answer POST /reload (`gateway reload`): the config is read again from its "
        "file and the environment, never from the request. Turn off where the port is reachable "
        "by others who should not trigger reloads (SIGHUP still works).",
    )
    max_connections: int = Field(
        64,
        ge=1,
        description="Connections open at once. Beyond it a new connection replaces the one quiet "
        "longest (quiet for over a second), else it gets a 503. Also kept 128 below the "
        "process's file limit, so that clients can never take the descriptors the sinks need.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection must send a request's whole header within this long "
        "(after connecting, or after its previous request plus idle_timeout_s).",
    )
    idle_timeout_s: float = Field(
        30.0, gt=0, description="A kept-alive connection idle this long is closed."
    )
    max_header_bytes: int = Field(
        8190, ge=1024, description="Longest request line or header field; longer gets a 400."
    )
    max_headers: int = Field(32, ge=1, description="Most header fields in a request.")
    max_body_bytes: int = Field(
        1024, ge=0, description="Largest request body (no endpoint takes one); larger gets a 413."
    )


class LoggingConfig(_Part):
    """Log format and level."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["text", "json"] = Field("text", description="text for people, json for tools.")


class SensorValuesConfig(_Part):
    """Opt-in export of the latest value per device and metric as gateway_sensor_value."""

    enabled: bool = Field(
        False,
        description="Export gateway_sensor_value{device_id,metric,<tags>}: one series per device "
        "and metric (off by default: device labels are the one exception to fixed label sets).",
    )
    max_series: int = Field(
        10000,
        ge=1,
        description="Hard cap on series; a new series beyond it is refused and counted in "
        "gateway_sensor_series_refused_total.",
    )
    expiry_s: float = Field(
        600.0, gt=0, description="A device silent this long has its series removed."
    )
    tags: tuple[str, ...] = Field(
        ("site",), description="Reading tags (topic template fields) that become labels."
    )

    @field_validator("tags")
    @classmethod
    def _label_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tag in value:
            # Prometheus label names; `__` is reserved, device_id and metric are taken.
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", tag) or tag.startswith("__"):
                raise ValueError(f"{tag!r}: use a topic template field name (a-z, 0-9, _)")
            if tag in ("device_id", "metric"):
                raise ValueError(f"{tag!r} is always a label; list only other tags")
        if len(set(value)) != len(value):
            raise ValueError("a tag is listed twice")
        return value


class CompactionConfig(_Part):
    """Closed hour partitions compacted to one Parquet file each (see README "Compaction")."""

    enabled: bool = Field(
        True, description="Run compaction (and retention) in the gateway in the background."
    )
    interval_s: float = Field(60.0, gt=0, description="How often to look for closed partitions.")
    grace_s: float = Field(
        300.0,
        ge=0,
        description="An hour partition is compacted once the hour plus this much is past (and "
        "every segment in it is sealed); late readings after that are merged in later.",
    )
    batch_rows: int = Field(
        65536, ge=1024, description="Rows per record batch and Parquet row group."
    )


class RetentionConfig(_Part):
    """What is kept on disk: JSON Lines after compaction, and age and size budgets."""

    keep_jsonl: bool = Field(
        False,
        description="Keep a partition's JSON Lines segments after its Parquet file is durable "
        "(readers and the audit then count the Parquet rows once).",
    )
    max_age_s: float = Field(
        0.0, ge=0, description="Delete data partitions whose hour ended this long ago; 0 = keep."
    )
    max_bytes: int = Field(
        0, ge=0, description="Delete the oldest closed data partitions past this size; 0 = none."
    )
    dead_letter_max_age_s: float = Field(
        0.0, ge=0, description="Delete dead-letter days that ended this long ago; 0 = keep."
    )
    dead_letter_max_bytes: int = Field(
        0, ge=0, description="Delete the oldest dead-letter days past this size; 0 = none."
    )


class GatewayConfig(BaseSettings):
    """Everything the gateway needs; defaults alone run against a local broker."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    mqtt: MqttSourceConfig = Field(default_factory=MqttSourceConfig, description="The broker.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Payload limits.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Processing.")
    steps: tuple[StepConfig, ...] = Field((), description="Processing steps, applied in order.")
    files: FilesConfig = Field(default_factory=FilesConfig, description="The file sink.")
    dead_letter: DeadLetterConfig = Field(default_factory=DeadLetterConfig, description="Rejects.")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig, description="Each reading once.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="Metrics and health.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logs.")
    sensor_values: SensorValuesConfig = Field(
        default_factory=SensorValuesConfig, description="Opt-in per-device value export."
    )
    shutdown_grace_s: float = Field(
        30.0, gt=0, description="On SIGTERM, time to drain and seal before giving up."
    )
    compaction: CompactionConfig = Field(
        default_factory=CompactionConfig, description="Closed partitions to Parquet."
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig, description="What is kept on disk."
    )

    @model_validator(mode="after")
    def _packets_hold_the_payloads(self) -> GatewayConfig:
        if self.mqtt.max_packet_bytes <= self.limits.max_payload_bytes:
            raise ValueError(
                f"mqtt.max_packet_bytes ({self.mqtt.max_packet_bytes}) must be above "
                f"limits.max_payload_bytes ({self.limits.max_payload_bytes}): the broker would "
                "discard payloads that should arrive"
            )
        return self

    @model_validator(mode="after")
    def _drop_duplicates_needs_dedupe(self) -> GatewayConfig:
        for index, step in enumerate(self.steps):
            if isinstance(step, DropDuplicatesStep) and not self.dedupe.enabled:
                raise ValueError(
                    f"steps.{index}: drop_duplicates is now the [dedupe] window, and "
                    "dedupe.enabled = false turns it off: remove one of the two"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) beat the environment; the TOML file, when given, is added by load_config.
        return (init_settings, env_settings)


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: `field.path: why`."""
    lines = []
    errors = exc.errors()
    for err in errors:
        if err["type"] == "too_short" and any(
            other["loc"][: len(err["loc"])] == err["loc"] and other is not err for other in errors
        ):
            continue  # a list left empty because its items failed: those errors say why
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        # Our validators' own words, without pydantic's "Value error, " in front.
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {message}")
    return lines


def validate_subscription(fields: dict[str, Any], where: str) -> SubscriptionConfig:
    """One subscription from fields (the CLI's flags); ConfigError naming `where` in each
    problem, so that pydantic's errors stay in this module."""
    try:
        return SubscriptionConfig.model_validate(fields)
    except ValidationError as exc:
        problems = [
            f"{where}: {problem.removeprefix('(top level): ')}"
            for problem in format_validation_error(exc)
        ]
        raise ConfigError("; ".join(problems), problems) from exc


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """Defaults < TOML file < GATEWAY_* environment < overrides (flags); ConfigError on problems."""
    if path is not None and not path.is_file():
        raise ConfigError(f"{path}: no such file")
    toml_path = path

    class _FromFile(GatewayConfig):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if toml_path is None:
                return (init_settings, env_settings)
            return (
                init_settings,
                env_settings,
                TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
            )

    where = str(path) if path else "config"
    try:
        loaded = _FromFile(**(overrides or {}))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = format_validation_error(exc)
        raise ConfigError(f"{where}: " + "; ".join(problems), problems) from exc
    # Hand back the plain model, so nothing downstream sees the file-reading subclass.
    return GatewayConfig.model_construct(**dict(loaded))
