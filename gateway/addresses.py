"""Addresses given on a command line: `mqtt[s]://[user@]host[:port]` and `HOST:PORT` -> fields.

Used by `gateway run`, the demo and `gateway-sim`; each says where its password comes from.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError

GATEWAY_PASSWORD_HINT = "use GATEWAY_MQTT__PASSWORD or mqtt.password_file"


def parse_broker_url(url: str, password_hint: str = GATEWAY_PASSWORD_HINT) -> dict[str, Any]:
    """`mqtt://[user@]host[:port]` or `mqtts://...` -> mqtt config fields (host, port, tls,
    username). A password in the URL is refused (it shows in `ps`): `password_hint` says what
    to use instead."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"--broker {url!r}: scheme must be mqtt:// or mqtts://")
    if parts.password is not None:
        raise ConfigError(
            f"--broker: do not put a password in the URL (it shows in `ps`); {password_hint}"
        )
    if not parts.hostname:
        raise ConfigError(f"--broker {url!r}: no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--broker {url!r}: {exc}") from exc
    tls = parts.scheme == "mqtts"
    fields: dict[str, Any] = {
        "host": parts.hostname,
        "port": port or (8883 if tls else 1883),
        "tls": {"enabled": tls},
    }
    if parts.username:
        fields["username"] = parts.username
    return fields


def parse_listen_addr(addr: str) -> dict[str, Any]:
    """`HOST:PORT` -> http config fields."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--metrics-addr {addr!r}: expected HOST:PORT")
    return {"host": host.strip("[]") or "127.0.0.1", "port": int(port)}
