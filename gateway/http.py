"""/metrics, /healthz, /readyz for one gateway, on a port no client can starve it through."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway.config import HttpConfig
from gateway.connections import ConnectionGuard
from gateway.errors import HttpRejectReason, StartupError
from gateway.logs import OncePer
from gateway.metrics import HttpMetrics

log = logging.getLogger(__name__)

Checks = Callable[[], dict[str, bool]]
# File descriptors kept out of the HTTP server's reach: segments (data and dead letter), the
# broker connection, the data directory's lock, the compaction process's pipes, the loop's own.
FD_HEADROOM = 128
MIN_CONNECTIONS = 8
# Connections the kernel holds before we accept them (no descriptor of ours). asyncio's default
# of 100 overflows under a burst of connections, and then a scraper's SYN is dropped and only
# retried a second later: a long queue keeps it waiting milliseconds instead. But asyncio
# accepts up to `backlog` queued connections in one go when the listener becomes readable, before
# the guard sees any of them: after a pause (a slow host, a stopped process) that burst holds
# descriptors on top of the capped ones. So the backlog is also kept below the file limit:
# see listen_backlog().
LISTEN_BACKLOG = 1024
REPEAT_LOG_S = 60.0


class HttpServer:
    """One port: Prometheus metrics, liveness, and readiness with the reason when not ready."""

    def __init__(
        self,
        config: HttpConfig,
        registry: CollectorRegistry,
        checks: Checks,
        *,
        before_metrics: Callable[[], Awaitable[None]] | None = None,
        seal: Callable[[], Awaitable[dict[str, int]]] | None = None,
        reload: Callable[[], Awaitable[dict[str, object]]] | None = None,
        details: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        """`before_metrics` runs before each /metrics answer (the supervisor fetches its
        workers' metrics then, so the merged view is current). `seal`, when given, answers
        POST /seal: it takes no input, so nothing from the request reaches a file. `reload`
        answers POST /reload (when http.reload is on): the config is read again from where it
        came from, never from the request. `details` adds to /readyz's body what the checks
        alone do not say (which subscription, why; the config hash)."""
        self._config = config
        self._checks = checks
        self._details = details
        self._before_metrics = before_metrics
        self._metrics = make_aiohttp_handler(registry)
        self._app = web.Application(client_max_size=config.max_body_bytes)
        self._app.router.add_get("/metrics", self._metrics_handler)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/readyz", self._readyz)
        self._seal = seal
        if seal is not None:
            self._app.router.add_post("/seal", self._seal_handler)
        self._reload = reload if config.reload else None
        if self._reload is not None:
            self._app.router.add_post("/reload", self._reload_handler)
        self._guard: ConnectionGuard | None = None
        self._listener: asyncio.Server | None = None
        self._rejected = HttpMetrics(
            registry, lambda: len(self._guard) if self._guard is not None else 0
        ).rejected
        self._runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=config.idle_timeout_s,
            max_line_size=config.max_header_bytes,
            max_field_size=config.max_header_bytes,
            max_headers=config.max_headers,
            logger=cast(logging.Logger, _RequestErrors(self._rejected["bad_request"].inc)),
        )
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        cfg = self._config
        cap = connection_cap(cfg.max_connections)
        guard = ConnectionGuard(
            self._runner.server,  # type: ignore[arg-type]
            max_connections=cap,
            header_timeout_s=cfg.header_timeout_s,
            idle_timeout_s=cfg.idle_timeout_s,
            on_close=self._closed,
        )
        try:
            # What aiohttp's TCPSite does, with the guard between the socket and aiohttp.
            self._listener = await asyncio.get_running_loop().create_server(
                guard, cfg.host, cfg.port, reuse_address=True, backlog=listen_backlog(cap)
            )
        except OSError as exc:
            await self._runner.cleanup()
            raise StartupError(
                "cannot_listen",
                f"metrics address {cfg.host}:{cfg.port} cannot be bound: "
                f"{exc.strerror or exc} (http.host / http.port, --metrics-addr)",
            ) from exc
        self._guard = guard
        guard.start()
        # With port 0 the OS picks one.
        self.port = int(self._listener.sockets[0].getsockname()[1])
        log.info(
            "metrics on http://%s:%d/metrics (at most %d connections)",
            cfg.host,
            self.port,
            guard.max_connections,
        )

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._guard is not None:
            self._guard.stop()
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self._config.host}:{self.port}"

    def _closed(self, reason: HttpRejectReason) -> None:
        self._rejected[reason].inc()

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

    async def _reload_handler(self, _request: web.Request) -> web.Response:
        assert self._reload is not None
        outcome = await self._reload()
        # 200 applied or unchanged, 409 refused (nothing changed), 500 failed (partly applied).
        status = {"applied": 200, "unchanged": 200, "refused": 409}.get(str(outcome["result"]), 500)
        return web.json_response(outcome, status=status)

    async def _seal_handler(self, _request: web.Request) -> web.Response:
        assert self._seal is not None
        return web.json_response({"sealed": await self._seal()})


def connection_cap(configured: int) -> int:
    """http.max_connections, lowered to leave FD_HEADROOM of the process's file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    room = max(MIN_CONNECTIONS, soft - FD_HEADROOM)
    if room < configured:
        log.warning(
            "http.max_connections lowered from %d to %d: the file limit is %d and %d of it is "
            "kept for the sinks",
            configured,
            room,
            soft,
            FD_HEADROOM,
        )
    return min(configured, room)


class _RequestErrors:
    """The logger aiohttp's server is given: what it reports about requests it could not serve,
    logged once per cause per REPEAT_LOG_S with how many more came, and counted.

    A bad request (unparsable, too large, non-HTTP bytes, a client gone mid-request) is the
    client's doing: one line, no traceback, and never the request's text (it is network data).
    An error in one of our handlers is a bug: its traceback, once per cause per interval.
    """

    def __init__(self, bad_request: Callable[[], None]) -> None:
        self._bad_request = bad_request
        self._once = OncePer(REPEAT_LOG_S)

    def _report(self, exc_info: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        cause = type(exc).__name__ if exc is not None else "unknown"
        bad = isinstance(exc, HttpProcessingError | ConnectionError | TimeoutError)
        if bad:
            self._bad_request()
        repeats = self._once.allow(cause)
        if repeats is None:
            return
        again = f"; {repeats} more like it since the last report" if repeats else ""
        if bad:
            log.warning("metrics port: refused a bad request (%s)%s", cause, again)
        else:
            log.error("metrics port: a handler failed (%s)%s", cause, again, exc_info=exc)

    def exception(self, *_args: Any, exc_info: Any = None, **_kwargs: Any) -> None:
        self._report(exc_info)

    error = warning = exception

    def debug(self, *_args: Any, exc_info: Any = None, **_kwargs: Any) -> None:
        if exc_info is not None:  # BadHttpMethod: non-HTTP bytes, e.g. TLS to this port
            self._report(exc_info)

    def info(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def isEnabledFor(self, _level: int) -> bool:  # logging.Logger names it so
        return True


def listen_backlog(cap: int) -> int:
    """The listen queue for a server capped at `cap` connections: LISTEN_BACKLOG, lowered so
    that the bursts in flight at once still leave FD_HEADROOM of the file limit. Under a
    connection storm a loop iteration can hold four: the burst it accepts now, the one accepted
    before whose protocols it makes, their victims (aborted, closed only at the next iteration)
    and the one before that, just made (the guard sees it, it is over the cap until evicted)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return LISTEN_BACKLOG
    return max(MIN_CONNECTIONS, min(LISTEN_BACKLOG, (soft - FD_HEADROOM - cap) // 4))
