"""What a reload changes: the field paths that differ between two configs, and how each applies.

Every setting is in one of three classes (README, Reloading the configuration):
- live: applied on the running session and pipeline, at a batch boundary, nothing reconnects;
- new session: the broker connection is drained (what was received is stored and acked), ended
  cleanly and opened again with the new settings;
- restart: structural (the data directory, the channels, the HTTP listener): a reload that
  changes one is refused, naming it, and the running config stays.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config import GatewayConfig

ChangeClass = Literal["live", "session", "restart"]

# Field paths (or their prefixes) whose change needs a new broker session.
SESSION_FIELDS = (
    "mqtt.host",
    "mqtt.port",
    "mqtt.tls",
    "mqtt.username",
    "mqtt.password",
    "mqtt.password_file",
    "mqtt.client_id",
    "mqtt.protocol",
    "mqtt.keepalive_s",
    "mqtt.session_expiry_s",
    "mqtt.receive_maximum",
    "mqtt.max_packet_bytes",
    "mqtt.connect_timeout_s",
)
# Field paths (or prefixes) a running gateway cannot change: the process must restart.
RESTART_FIELDS = {
    "files.data_dir": "the data directory is locked and recovered at start",
    "http": "the metrics listener is bound at start",
    "pipeline.workers": "the workers and their channels are built at start",
    "pipeline.channel_capacity": "the channels are built at start",
    "sensor_values.enabled": "the exported series are registered at start",
    "sensor_values.tags": "the exported series' labels are fixed at start",
    "compaction.enabled": "the maintenance task is started with the gateway",
    "dedupe.enabled": "the dedupe window is built and seeded from the files at start",
    "dedupe.seed": "the dedupe window is seeded from the files once, at start",
}


@dataclass
class ReloadPlan:
    """The changed field paths of a reload, by how they are applied."""

    live: list[str] = field(default_factory=list)
    session: list[str] = field(default_factory=list)
    restart: dict[str, str] = field(default_factory=dict)  # path -> why

    @property
    def empty(self) -> bool:
        return not (self.live or self.session or self.restart)

    def changed(self, prefix: str) -> bool:
        """Whether any live or session path is `prefix` or under it."""
        return any(_under(path, prefix) for path in (*self.live, *self.session))


def plan_reload(old: GatewayConfig, new: GatewayConfig) -> ReloadPlan:
    """Which settings differ, and how each is applied. A password file's content counts as
    the password: a rotated secret in the same file is a change."""
    plan = ReloadPlan()
    paths = _diff(_plain(old), _plain(new), "")
    if old.mqtt.read_password() != new.mqtt.read_password() and "mqtt.password" not in paths:
        paths.append("mqtt.password")
    for path in paths:
        why = next((w for p, w in RESTART_FIELDS.items() if _under(path, p)), None)
        if why is not None:
            plan.restart[path] = why
        elif any(_under(path, p) for p in SESSION_FIELDS):
            plan.session.append(path)
        else:
            plan.live.append(path)
    return plan


def config_hash(config: GatewayConfig) -> str:
    """A short, stable fingerprint of a config, secrets left out (they would leak through it);
    shown in /readyz and gateway_config_info, so that one can tell which config runs."""
    text = json.dumps(_plain(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(config: GatewayConfig) -> dict[str, Any]:
    # SecretStr dumps as "**********" in JSON mode: the secret itself never enters the hash.
    return config.model_dump(mode="json")


def _diff(old: Any, new: Any, at: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(old.keys() | new.keys()):
            path = f"{at}.{key}" if at else str(key)
            found += _diff(old.get(key), new.get(key), path)
        return found
    return [] if old == new else [at]


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")
