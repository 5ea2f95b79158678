"""Worker loop applying the chain of Transforms to each batch, under a deadline."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Sequence

from gateway.channel import Channel
from gateway.errors import DROP_REASONS, DropReason, RejectReason
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope, Reading, Rejection
from gateway.transforms import Transform, Verdict

log = logging.getLogger(__name__)

# Most readings taken from the inbox at once; each envelope is still processed on its own.
MAX_BATCH = 2048


class Stage:
    """Takes envelopes of readings from `inbox`, runs the steps over each, and passes it on.

    Each reading leaves as exactly one of: stored (to `store`), rejected (to `rejects`, with its
    reason), or dropped (counted). Steps run over the envelope's whole batch; a step may return an
    awaitable, awaited under the batch's deadline (`timeout_s` from when the stage took it).
    Readings not through every step by the deadline are rejected as `timeout`. A step that raises
    is run again reading by reading, so that only the readings it cannot handle are rejected
    (`transform_error`) and the others go on.
    """

    def __init__(
        self,
        *,
        transforms: Sequence[Transform],
        timeout_s: float,
        metrics: GatewayMetrics,
        inbox: Channel[Reading],
        store: Channel[Reading],
        rejects: Channel[Rejection],
    ) -> None:
        self.reconfigure(transforms, timeout_s)
        self._metrics = metrics
        self._inbox = inbox
        self._store = store
        self._rejects = rejects
        self._warned: set[str] = set()

    def reconfigure(self, transforms: Sequence[Transform], timeout_s: float) -> None:
        """The steps and the deadline, from the next envelope on (at start, and at a reload)."""
        self._transforms = tuple(transforms)
        self._drop_reasons: tuple[DropReason, ...] = tuple(
            _drop_reason(transform) for transform in self._transforms
        )
        self._timeout_s = timeout_s

    async def run(self) -> None:
        """Process until the inbox is drained."""
        inbox = self._inbox
        observe = self._metrics.processing_seconds.observe_n
        while True:
            batch = await inbox.get_batch(MAX_BATCH)
            if not batch:
                if inbox.drained:
                    return
                continue
            if not self._transforms:
                for envelope in batch:
                    await self._store.put(envelope)
                continue
            for envelope in batch:
                started = time.perf_counter()
                # One envelope, one set of steps: a reload swaps them between envelopes only.
                kept, rejected = await self._apply(envelope.body, started + self._timeout_s)
                readings = len(envelope.body)
                observe((time.perf_counter() - started) / readings, readings)
                await self._pass_on(envelope, kept, rejected)

    async def _apply(
        self, readings: list[Reading], deadline: float
    ) -> tuple[list[Reading], list[tuple[Reading, RejectReason, str]]]:
        """Run every step over `readings`: (kept, rejected with reason and detail)."""
        rejected: list[tuple[Reading, RejectReason, str]] = []
        # Taken once: a reload during an awaited step changes the next envelope's steps only.
        transforms, drop_reasons = self._transforms, self._drop_reasons
        for index, transform in enumerate(transforms):
            if not readings:
                break
            if time.perf_counter() > deadline:
                detail = f"steps took over {self._timeout_s}s"
                rejected.extend((reading, "timeout", detail) for reading in readings)
                return [], rejected
            verdict = await self._run_step(transform, readings, deadline)
            if verdict is None:  # past the deadline while awaiting the step
                detail = f"steps took over {self._timeout_s}s"
                rejected.extend((reading, "timeout", detail) for reading in readings)
                return [], rejected
            if verdict.dropped:
                self._metrics.dropped[drop_reasons[index]].inc(verdict.dropped)
                self._metrics.in_flight.dec(verdict.dropped)
            rejected.extend(verdict.rejected)
            readings = verdict.kept
        return readings, rejected

    async def _run_step(
        self, transform: Transform, readings: list[Reading], deadline: float
    ) -> Verdict | None:
        """One step over the batch; None when an awaited step passed the deadline."""
        try:
            returned = transform(readings)
            result: Verdict | None
            if inspect.isawaitable(returned):
                result = await self._await(returned, deadline)
                if result is None:
                    return None
            else:
                result = returned
            if not isinstance(result, Verdict):
                raise TypeError(f"a step returned {type(result).__name__}, not a Verdict")
            return result
        except Exception as exc:
            self._warn(exc)
        if len(readings) == 1:
            return Verdict([], [(readings[0], "transform_error", "the step raised an error")])
        # Find the readings it cannot handle: each on its own.
        merged = Verdict([])
        for reading in readings:
            verdict = await self._run_step(transform, [reading], deadline)
            if verdict is None:
                return None
            merged.kept.extend(verdict.kept)
            merged.rejected.extend(verdict.rejected)
            merged.dropped += verdict.dropped
        return merged

    @staticmethod
    async def _await(awaiting: Awaitable[Verdict], deadline: float) -> Verdict | None:
        try:
            # Past the deadline already: the timeout cancels the await at once.
            async with asyncio.timeout(deadline - time.perf_counter()):
                return await awaiting
        except TimeoutError:
            return None

    async def _pass_on(
        self,
        envelope: Envelope[Reading],
        kept: list[Reading],
        rejected: list[tuple[Reading, RejectReason, str]],
    ) -> None:
        """Hand the kept readings to the store and the rejected to the dead-letter sink; each new
        envelope holds a part of the burst's ack, and the one taken from the inbox lets go."""
        ack = envelope.ack
        # Both parts may keep any of the envelope's payloads alive: each weighs as the whole.
        nbytes = envelope.nbytes
        if kept:
            await self._store.put(Envelope(kept, ack.hold(), nbytes=nbytes))
        if rejected:
            records = [
                Rejection(r.topic, r.payload, reason, detail, r.received_at)
                for r, reason, detail in rejected
            ]
            await self._rejects.put(Envelope(records, ack.hold(), nbytes=nbytes))
        ack.release()

    def _warn(self, exc: Exception) -> None:
        name = type(exc).__name__
        if name not in self._warned:
            self._warned.add(name)
            log.warning("a processing step raised %s; such readings are dead-lettered", name)


def _drop_reason(transform: Transform) -> DropReason:
    reason = getattr(transform, "drop_reason", "filtered")
    return reason if reason in DROP_REASONS else "filtered"  # type: ignore[return-value]
