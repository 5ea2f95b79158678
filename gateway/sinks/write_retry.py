"""WriteRetry: retry a failed sink write with backoff until it works; count, log and expose it."""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from gateway.backoff import backoff
from gateway.config import FilesConfig
from gateway.errors import SinkWriteError, WriteErrorReason
from gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

SinkName = Literal["files", "dead_letter"]
T = TypeVar("T")

_REASONS: dict[int, WriteErrorReason] = {
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "read_only",
    errno.ENOTDIR: "not_a_directory",
    # Only mkdir reports EEXIST here (segment names are fresh): a file where a directory must go.
    errno.EEXIST: "not_a_directory",
}


def write_error_reason(exc: OSError) -> WriteErrorReason:
    """Map an OSError to our bounded reason set (timeouts and the rest are io_error)."""
    return _REASONS.get(exc.errno or 0, "io_error")


class WriteRetry:
    """Runs one sink operation until it succeeds, with capped exponential backoff and jitter.

    Each failure is counted in `write_errors[(sink, reason)]` and clears `writable`; one warning is
    logged per cause, not per retry, and one more when writes resume.
    """

    def __init__(self, sink: SinkName, config: FilesConfig, metrics: GatewayMetrics) -> None:
        self._sink: SinkName = sink
        self._config = config
        self._metrics = metrics
        self._writable = True
        self._failures = 0
        self._warned: WriteErrorReason | None = None

    def reconfigure(self, config: FilesConfig) -> None:
        """Retry delays from the next failure on (a reload)."""
        self._config = config

    @property
    def writable(self) -> bool:
        """False from a failed write until the next successful one."""
        return self._writable

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Await `operation()` until it raises no OSError; it must be safe to run again."""
        try:
            result = await self._attempt(operation)
        except SinkWriteError as first:
            # Only a failure pays for tenacity's setup (~50 µs a call): commits are hot.
            result = await self._retry(operation, first)
        self._succeeded()
        return result

    async def _retry(self, operation: Callable[[], Awaitable[T]], first: SinkWriteError) -> T:
        # Full jitter between retry_min_s and a window doubling up to retry_max_s: gateways that
        # share a disk do not retry in lockstep. Never stops: only cancellation ends the wait.
        retrying = backoff(
            retry_on=SinkWriteError,
            min_s=self._config.retry_min_s,
            max_s=self._config.retry_max_s,
            jitter="full",
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first  # already made and counted: tenacity waits, then retries
                result = await self._attempt(operation)
        return result

    async def _attempt(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except OSError as exc:  # TimeoutError included: a deadline passed
            raise self._failed(exc) from exc

    def _failed(self, exc: OSError) -> SinkWriteError:
        reason = write_error_reason(exc)
        detail = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        self._failures += 1
        self._metrics.write_errors[(self._sink, reason)].inc()
        self._metrics.sink_writable[self._sink].set(0)
        self._writable = False
        if reason != self._warned:
            self._warned = reason
            logger.warning(
                "%s sink cannot write (%s): %s; retrying, nothing is acked meanwhile",
                self._sink,
                reason,
                detail,
            )
        return SinkWriteError(reason, detail)

    def _succeeded(self) -> None:
        if self._failures:
            logger.warning("%s sink: writes resumed after %d failures", self._sink, self._failures)
            self._failures = 0
            self._warned = None
        if not self._writable:
            self._writable = True
            self._metrics.sink_writable[self._sink].set(1)
