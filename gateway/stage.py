"""Worker loop applying one chain of Transforms with a per-reading timeout."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Sequence

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
            for envelope in batch:
                await self._process(envelope, kept, rejected)
            if kept:
                await self._store.put_many(kept)
            if rejected:
                await self._rejects.put_many(rejected)

    async def _process(
        self,
        envelope: Envelope[Reading],
        kept: list[Envelope[Reading]],
        rejected: list[Envelope[Rejection]],
    ) -> None:
        metrics = self._metrics
        started = time.perf_counter()
        deadline = started + self._timeout_s
        reading: Reading | None = envelope.body
        try:
            for transform in self._transforms:
                result = transform(reading)  # type: ignore[arg-type]
                if inspect.isawaitable(result):
                    async with asyncio.timeout(deadline - time.perf_counter()):
                        result = await result
                reading = result
                if time.perf_counter() > deadline:
                    raise TimeoutError
                if reading is None:
                    metrics.dropped[getattr(transform, "drop_reason", "filtered")].inc()
                    metrics.in_flight.dec()
                    envelope.ack()
                    return
        except RejectedError as exc:
            rejected.append(self._rejection(envelope, exc.reason, exc.detail))
        except TimeoutError:
            rejected.append(
                self._rejection(envelope, "timeout", f"steps took over {self._timeout_s}s")
            )
        except Exception as exc:  # a broken step must not kill the worker or lose the reading
            name = type(exc).__name__
            if name not in self._warned:
                self._warned.add(name)
                log.warning("a processing step raised %s; such readings are dead-lettered", name)
            rejected.append(self._rejection(envelope, "transform_error", name))
        else:
            envelope.body = reading  # type: ignore[assignment]
            kept.append(envelope)
        finally:
            metrics.processing_seconds.observe(time.perf_counter() - started)

    @staticmethod
    def _rejection(envelope: Envelope[Reading], reason: str, detail: str) -> Envelope[Rejection]:
        body = envelope.body
        rejection = Rejection(envelope.topic, envelope.payload, reason, detail, body.received_at)
        return Envelope(rejection, envelope.topic, envelope.payload, envelope.ack)
