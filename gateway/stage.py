"""Worker loop applying one chain of Transforms with a per-reading timeout."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Sequence

from gateway.channel import Channel
from gateway.errors import RejectedError
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Reading, Rejection
from gateway.transforms import Transform

log = logging.getLogger(__name__)

MAX_BATCH = 512


class Stage:
    """Takes readings from `inbox`, runs the steps in order, and passes each reading on.

    A reading leaves as exactly one of: stored (to `store`), rejected (to `rejects`, with its
    reason), or dropped (acked and counted). Sync steps run inline; a step may also return an
    awaitable, which is awaited under the reading's deadline. A step past the deadline — sync or
    not — rejects the reading with reason `timeout`.
    """

    def __init__(
        self,
        *,
        transforms: Sequence[Transform],
        timeout_s: float,
        metrics: GatewayMetrics,
        inbox: Channel[Envelope[Reading]],
        store: Channel[Envelope[Reading]],
        rejects: Channel[Envelope[Rejection]],
    ) -> None:
        self._transforms = tuple(transforms)
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._inbox = inbox
        self._store = store
        self._rejects = rejects
        self._warned: set[str] = set()

    async def run(self) -> None:
        """Process until the inbox is drained."""
        inbox = self._inbox
        while True:
            batch = await inbox.get_batch(MAX_BATCH)
            if not batch:
                if inbox.drained:
                    return
                continue
            if not self._transforms:
                await self._store.put_many(batch)
                continue
            kept: list[Envelope[Reading]] = []
            rejected: list[Envelope[Rejection]] = []
            took: list[float] = []
            for envelope in batch:
                started = time.perf_counter()
                deadline = started + self._timeout_s
                # Sync steps run here, without a coroutine per reading; a step that returns an
                # awaitable hands the rest of that reading to _finish.
                pending = self._run_sync(
                    envelope, envelope.body, 0, deadline, kept=kept, rejected=rejected
                )
                if pending is not None:
                    await self._finish(envelope, pending, deadline, kept=kept, rejected=rejected)
                took.append(time.perf_counter() - started)
            self._metrics.processing_seconds.observe_many(took)
            if kept:
                await self._store.put_many(kept)
            if rejected:
                await self._rejects.put_many(rejected)

    def _run_sync(
        self,
        envelope: Envelope[Reading],
        reading: Reading,
        first: int,
        deadline: float,
        *,
        kept: list[Envelope[Reading]],
        rejected: list[Envelope[Rejection]],
    ) -> tuple[int, Awaitable[Reading | None]] | None:
        """Run the steps from `first` on until one returns an awaitable: (its index, the
        awaitable); None once the reading is kept, rejected or dropped."""
        transforms = self._transforms
        try:
            for index in range(first, len(transforms)):
                result = transforms[index](reading)
                if inspect.isawaitable(result):
                    return index, result
                if time.perf_counter() > deadline:
                    raise TimeoutError
                if result is None:
                    self._drop(envelope, transforms[index])
                    return None
                reading = result
        except Exception as exc:
            rejected.append(self._failed(envelope, exc))
        else:
            envelope.body = reading
            kept.append(envelope)
        return None

    async def _finish(
        self,
        envelope: Envelope[Reading],
        pending: tuple[int, Awaitable[Reading | None]],
        deadline: float,
        *,
        kept: list[Envelope[Reading]],
        rejected: list[Envelope[Rejection]],
    ) -> None:
        """Await a step's result under the reading's deadline, then run the steps after it."""
        next_step: tuple[int, Awaitable[Reading | None]] | None = pending
        while next_step is not None:
            index, awaiting = next_step
            try:
                # Past the deadline already: the timeout cancels the await at once.
                async with asyncio.timeout(deadline - time.perf_counter()):
                    reading = await awaiting
                if time.perf_counter() > deadline:
                    raise TimeoutError
            except Exception as exc:
                rejected.append(self._failed(envelope, exc))
                return
            if reading is None:
                self._drop(envelope, self._transforms[index])
                return
            next_step = self._run_sync(
                envelope, reading, index + 1, deadline, kept=kept, rejected=rejected
            )

    def _drop(self, envelope: Envelope[Reading], transform: Transform) -> None:
        self._metrics.dropped[getattr(transform, "drop_reason", "filtered")].inc()
        self._metrics.in_flight.dec()
        envelope.ack()

    def _failed(self, envelope: Envelope[Reading], exc: Exception) -> Envelope[Rejection]:
        """The dead-letter record of a reading whose steps failed."""
        if isinstance(exc, RejectedError):
            return self._rejection(envelope, exc.reason, exc.detail)
        if isinstance(exc, TimeoutError):
            return self._rejection(envelope, "timeout", f"steps took over {self._timeout_s}s")
        # A broken step must not kill the worker or lose the reading.
        name = type(exc).__name__
        if name not in self._warned:
            self._warned.add(name)
            log.warning("a processing step raised %s; such readings are dead-lettered", name)
        return self._rejection(envelope, "transform_error", name)

    @staticmethod
    def _rejection(envelope: Envelope[Reading], reason: str, detail: str) -> Envelope[Rejection]:
        body = envelope.body
        rejection = Rejection(envelope.topic, envelope.payload, reason, detail, body.received_at)
        return Envelope(rejection, envelope.topic, envelope.payload, envelope.ack)
