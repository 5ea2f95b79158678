"""Bounded Channel of envelopes; put() waits when full (backpressure); get_batch()."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from gateway.model import Envelope

T = TypeVar("T")


class ChannelClosedError(Exception):
    """Raised when putting into a closed channel."""


class Channel(Generic[T]):
    """A bounded FIFO of envelopes between two steps; producers wait when it is full.

    Full means `capacity` values (readings or rejections) or `max_bytes` bytes (what the
    envelopes keep alive, `Envelope.nbytes`), whichever comes first: a count alone lets a few
    thousand large payloads take hundreds of MB. An envelope is never split: it goes in when it
    fits, or when the channel is empty (so one larger than either bound still moves). After
    `close()`, consumers get what is left and then an empty batch, which means "done".
    """

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._byte_limit = max_bytes if max_bytes is not None else float("inf")
        self._envelopes: deque[Envelope[T]] = deque()
        self._values = 0
        self._bytes = 0
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        """Values waiting (not envelopes)."""
        return self._values

    @property
    def nbytes(self) -> int:
        """Bytes the waiting envelopes keep alive."""
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def drained(self) -> bool:
        """Closed and empty: the consumer is done."""
        return self._closed and not self._envelopes

    def _fits(self, size: int, nbytes: int) -> bool:
        return not self._envelopes or (
            self._values + size <= self.capacity and self._bytes + nbytes <= self._byte_limit
        )

    async def put(self, envelope: Envelope[T]) -> None:
        """Append one envelope, waiting for room; order is kept."""
        size = len(envelope.body)
        nbytes = envelope.nbytes
        while True:
            if self._closed:
                raise ChannelClosedError("channel closed")
            if self._fits(size, nbytes):
                break
            self._writable.clear()
            await self._writable.wait()
        self._envelopes.append(envelope)
        self._values += size
        self._bytes += nbytes
        self._readable.set()

    def put_dropping(self, envelope: Envelope[T]) -> list[Envelope[T]]:
        """Append without waiting, making room by removing the oldest droppable envelopes.

        For the drop_oldest policy: callers pass only droppable (QoS 0) envelopes. When the
        channel is full and holds nothing droppable, the incoming envelope itself is dropped.
        Returns what was dropped; the caller counts it and releases its ack.
        """
        dropped: list[Envelope[T]] = []
        if len(envelope.body) > self.capacity:
            # Larger than the whole channel: its oldest values go first (they share its ack).
            excess = len(envelope.body) - self.capacity
            dropped.append(Envelope(envelope.body[:excess], envelope.ack.hold(), droppable=True))
            envelope.body = envelope.body[excess:]
        size = len(envelope.body)
        nbytes = envelope.nbytes
        if not self._fits(size, nbytes):
            kept: deque[Envelope[T]] = deque()
            for queued in self._envelopes:
                if queued.droppable and not self._fits(size, nbytes):
                    dropped.append(queued)
                    self._values -= len(queued.body)
                    self._bytes -= queued.nbytes
                else:
                    kept.append(queued)
            self._envelopes = kept
            if not self._fits(size, nbytes):
                dropped.append(envelope)
                return dropped
        self._envelopes.append(envelope)
        self._values += size
        self._bytes += nbytes
        self._readable.set()
        return dropped

    async def get_batch(self, max_values: int, timeout_s: float | None = None) -> list[Envelope[T]]:
        """Wait for at least one envelope and take envelopes up to `max_values` values in all
        (at least one, whatever its size).

        An empty batch means the timeout passed or the channel is `drained`.
        """
        while not self._envelopes:
            if self._closed:
                return []
            self._readable.clear()
            if timeout_s is None:
                await self._readable.wait()
            else:
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._readable.wait()
                except TimeoutError:
                    return []
        envelopes = self._envelopes
        first = envelopes.popleft()
        batch = [first]
        taken = len(first.body)
        nbytes = first.nbytes
        while envelopes and taken + len(envelopes[0].body) <= max_values:
            envelope = envelopes.popleft()
            batch.append(envelope)
            taken += len(envelope.body)
            nbytes += envelope.nbytes
        self._values -= taken
        self._bytes -= nbytes
        self._writable.set()
        return batch

    def close(self) -> None:
        """No more puts; consumers drain what is left and then get an empty batch."""
        self._closed = True
        self._readable.set()
        self._writable.set()
