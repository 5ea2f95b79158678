"""RunSpec and BrokerSpec: everything that decides what a run sends and where (picklable)."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Literal

from gateway.manifest import PayloadFormat
from simulators.faults import FaultPlan
from simulators.preset_payloads import PRESET_TEMPLATES
from simulators.profile import DEFAULT, Profile

DEFAULT_TEMPLATE = "sensors/{site}/{device_id}/telemetry"
DEFAULT_BARE_TEMPLATE = "sensors/{site}/{device_id}/{metric}"
TEMPLATE_FIELDS = frozenset({"site", "device_id", "metric", "model"})
# What the gateway accepts as a device id (gateway.topics.safe_name_pattern, default length).
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# With --rate 0 readings are sent as fast as possible; their timestamps are this far apart.
UNPACED_INTERVAL_MS = 1.0


@dataclass(frozen=True)
class BrokerSpec:
    """Where to publish and how to log in."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 60
    connect_timeout_s: float = 15.0
    # QoS 1 messages paho keeps in flight per connection (paho's default is 20).
    inflight: int = 100


@dataclass(frozen=True)
class RunSpec:
    """The pure inputs of the payload makers plus how the run is paced and connected."""

    devices: int = 10
    seed: int = 0
    format: PayloadFormat = "json"
    qos: Literal[0, 1] = 1
    topic_template: str = DEFAULT_TEMPLATE
    device_id_pattern: str = "dev-{n:05d}"
    sites: tuple[str, ...] = ("site-01",)
    profile: Profile = DEFAULT
    rate_hz: float = 1.0
    jitter: float = 0.1
    count: int | None = 10  # None: until stopped (or --duration)
    duration_s: float | None = None
    start_ms: int = 0
    batch_size: int = 10
    faults: FaultPlan = field(default_factory=FaultPlan)
    prebuilt: bool = False
    # "mqtt": paho connections (hub.py, sender.py), paced or not, every option. "raw": the
    # prebuilt blast pre-encoded into one buffer per pooled connection and written with large
    # non-blocking sends (raw_worker.py): the same messages at near zero CPU, for benchmarks.
    transport: Literal["mqtt", "raw"] = "mqtt"
    connections: Literal["per-device", "pool"] = "per-device"
    pool_size: int = 4
    processes: int = 1
    client_id_prefix: str = "sim-"
    drain_timeout_s: float = 30.0
    # Keep connections open this long after the last ack: some brokers (amqtt) drop messages
    # they acked but had not yet forwarded when the publisher disconnects.
    linger_s: float = 0.0
    broker: BrokerSpec = field(default_factory=BrokerSpec)

    @property
    def interval_ms(self) -> float:
        """Nominal time between two readings of one device."""
        return 1000.0 / self.rate_hz if self.rate_hz > 0 else UNPACED_INTERVAL_MS

    @property
    def topic_has_device_id(self) -> bool:
        return "{device_id}" in self.topic_template


def default_template(fmt: str) -> str:
    """The topic a format's messages go to unless --topic-template says otherwise."""
    if fmt == "bare":
        return DEFAULT_BARE_TEMPLATE
    return PRESET_TEMPLATES.get(fmt, DEFAULT_TEMPLATE)


def template_fields(template: str) -> set[str]:
    """The {fields} of a topic template; ValueError for anything str.format would trip on."""
    try:
        names = {name for _, name, spec, conv in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise ValueError(f"topic template {template!r}: {exc}") from None
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"topic template {template!r}: unknown fields {sorted(unknown)}; "
            f"known: {sorted(TEMPLATE_FIELDS)}"
        )
    return names


def check_spec(spec: RunSpec) -> None:
    """ValueError naming the first thing in `spec` that cannot work."""
    names = template_fields(spec.topic_template)
    if spec.format == "bare" and not {"device_id", "metric"} <= names:
        raise ValueError("--format bare needs {device_id} and {metric} in --topic-template")
    if spec.format == "shelly_status" and "metric" not in names:
        raise ValueError(
            "--format shelly_status needs {metric} (the component) in --topic-template"
        )
    if spec.format not in ("bare", "shelly_status") and "metric" in names:
        raise ValueError("{metric} in --topic-template is only for --format bare and shelly_status")
    for n in (0, spec.devices - 1):
        site = spec.sites[n % len(spec.sites)]
        try:
            device_id = spec.device_id_pattern.format(n=n, site=site, model="model")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"--device-id-pattern {spec.device_id_pattern!r}: {exc!r}; fields: n, site, model"
            ) from None
        if not DEVICE_ID_RE.fullmatch(device_id):
            raise ValueError(
                f"--device-id-pattern gives {device_id!r}: the gateway takes 1-64 of "
                "A-Z a-z 0-9 . _ - starting with a letter or digit"
            )
    if spec.devices > 1 and spec.device_id_pattern.format(
        n=0, site=spec.sites[0], model="model"
    ) == spec.device_id_pattern.format(n=1, site=spec.sites[0], model="model"):
        raise ValueError("--device-id-pattern must use {n}: every device needs its own id")
    for site in spec.sites:
        if not DEVICE_ID_RE.fullmatch(site):
            raise ValueError(f"site {site!r}: use A-Z a-z 0-9 . _ - (it is a topic level)")
    if spec.transport == "raw":
        check_raw(spec)


def check_raw(spec: RunSpec) -> None:
    """What `--transport raw` cannot do: it sends one prebuilt blast over pooled plain MQTT
    3.1.1 connections, and nothing else."""
    if not spec.prebuilt or spec.rate_hz != 0 or spec.count is None:
        raise ValueError("--transport raw sends a prebuilt blast: --prebuilt --count N, no --rate")
    if spec.connections != "pool":
        raise ValueError("--transport raw needs --connections pool")
    if spec.broker.tls or spec.broker.username:
        raise ValueError("--transport raw: plain mqtt:// without credentials only")
    if any(kind == "disconnect" for kind, _ in spec.faults.rates):
        raise ValueError("--transport raw does not disconnect mid-stream: no disconnect faults")
