"""HttpMetrics: the metrics port's own (a gateway's or the supervisor's)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.errors import HTTP_REJECT_REASONS


class HttpMetrics:
    """The metrics port's own (a gateway's or the supervisor's): connections and refusals."""

    def __init__(self, registry: CollectorRegistry, open_connections: Callable[[], float]) -> None:
        rejected = Counter(
            "gateway_http_rejected",
            "Connections the metrics port closed, or requests it refused, by cause.",
            ["reason"],
            registry=registry,
        )
        self.rejected = {reason: rejected.labels(reason) for reason in HTTP_REJECT_REASONS}
        Gauge(
            "gateway_http_connections", "Connections open to the metrics port.", registry=registry
        ).set_function(open_connections)
