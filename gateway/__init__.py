"""MQTT telemetry gateway: readings acked only once they are durably on disk."""

from gateway._version import __version__
from gateway.app import Gateway
from gateway.config import GatewayConfig, load_config

__all__ = ["Gateway", "GatewayConfig", "__version__", "load_config"]
