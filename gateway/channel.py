"""Bounded Channel; put() waits when full (backpressure); get_batch()."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class ChannelClosedError(Exception):
    """Raised when putting into a closed channel."""


class Channel(Generic[T]):
    """A bounded FIFO between two steps; producers wait when it is full.

    Items move in batches: one wake-up per batch, not per item. After `close()`, consumers get
    what is left and then an empty batch, which means "done".
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def drained(self) -> bool:
        """Closed and empty: the consumer is done."""
        return self._closed and not self._items

    async def put_many(self, items: list[T]) -> None:
        """Append all items, waiting for room as needed; order is kept."""
        start = 0
        while start < len(items):
            if self._closed:
                raise ChannelClosedError("channel closed")
            room = self.capacity - len(self._items)
            if room <= 0:
                self._writable.clear()
                await self._writable.wait()
                continue
            self._items.extend(items[start : start + room])
            start += room
            self._readable.set()

    async def put(self, item: T) -> None:
        await self.put_many([item])

    def put_dropping(self, items: Iterable[T], droppable: Callable[[T], bool]) -> list[T]:
        """Append without waiting, making room by removing the oldest droppable item.

        For the drop_oldest policy: callers pass only droppable (QoS 0) items. When the channel
        is full and holds no droppable item, the incoming item itself is dropped. Returns what
        was dropped; the caller settles and counts it.
        """
        dropped: list[T] = []
        for item in items:
            if len(self._items) >= self.capacity:
                victim = next((x for x in self._items if droppable(x)), None)
                if victim is None:
                    dropped.append(item)
                    continue
                self._items.remove(victim)
                dropped.append(victim)
            self._items.append(item)
        self._readable.set()
        return dropped

    async def get_batch(self, max_items: int, timeout_s: float | None = None) -> list[T]:
        """Wait for at least one item and take up to max_items.

        An empty batch means the timeout passed or the channel is `drained`.
        """
        while not self._items:
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
        items = self._items
        if len(items) <= max_items:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(max_items)]
        self._writable.set()
        return batch

    def close(self) -> None:
        """No more puts; consumers drain what is left and then get an empty batch."""
        self._closed = True
        self._readable.set()
        self._writable.set()
