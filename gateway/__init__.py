"""MQTT telemetry gateway: readings acked only once they are durably on disk.

The public surface is loaded on first use, so that `gateway` (the command) can install its
SIGHUP handler before the heavy imports (gateway/__main__.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway._version import __version__

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.config import GatewayConfig, load_config

__all__ = ["Gateway", "GatewayConfig", "__version__", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "Gateway":
        from gateway.app import Gateway  # noqa: PLC0415

        return Gateway
    if name in ("GatewayConfig", "load_config"):
        from gateway import config  # noqa: PLC0415

        return getattr(config, name)
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
