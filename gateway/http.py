"""/metrics, /healthz, /readyz for one gateway."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway.config import HttpConfig
from gateway.errors import StartupError

log = logging.getLogger(__name__)

Checks = Callable[[], dict[str, bool]]


class HttpServer:
    """One port: Prometheus metrics, liveness, and readiness with the reason when not ready."""

    def __init__(
        self,
        config: HttpConfig,
        registry: CollectorRegistry,
        checks: Checks,
        before_metrics: Callable[[], Awaitable[None]] | None = None,
        *,
        seal: Callable[[], Awaitable[dict[str, int]]] | None = None,
        details: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        """`before_metrics` runs before each /metrics answer (the supervisor fetches its
        workers' metrics then, so the merged view is current). `seal`, when given, answers
        POST /seal: it takes no input, so nothing from the request reaches a file. `details`
        adds to /readyz's body what the checks alone do not say (which subscription, why)."""
        self._config = config
        self._checks = checks
        self._details = details
        self._before_metrics = before_metrics
        self._metrics = make_aiohttp_handler(registry)
        self._app = web.Application()
        self._app.router.add_get("/metrics", self._metrics_handler)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/readyz", self._readyz)
        self._seal = seal
        if seal is not None:
            self._app.router.add_post("/seal", self._seal_handler)
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StartupError(
                "cannot_listen",
                f"metrics address {self._config.host}:{self._config.port} cannot be bound: "
                f"{exc.strerror or exc} (http.host / http.port, --metrics-addr)",
            ) from exc
        # With port 0 the OS picks one; the runner knows which.
        self.port = int(self._runner.addresses[0][1])
        log.info("metrics on http://%s:%d/metrics", self._config.host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self._config.host}:{self.port}"

    async def _metrics_handler(self, request: web.Request) -> web.StreamResponse:
        if self._before_metrics is not None:
            await self._before_metrics()
        return await self._metrics(request)

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = self._checks()
        ready = all(checks.values())
        body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
        if self._details is not None:
            body.update(self._details())
        return web.json_response(body, status=200 if ready else 503)

    async def _seal_handler(self, _request: web.Request) -> web.Response:
        assert self._seal is not None
        return web.json_response({"sealed": await self._seal()})
