"""Channel: bounded, waits when full, hands out batches, drains after close."""

from __future__ import annotations

import asyncio

import pytest

from gateway.channel import Channel, ChannelClosedError
from tests.support.poll import eventually


async def test_put_waits_while_full_and_resumes_when_room_is_made() -> None:
    channel: Channel[int] = Channel(3)
    putter = asyncio.create_task(channel.put_many([1, 2, 3, 4, 5]))
    await eventually(lambda: len(channel) == 3)
    assert not putter.done(), "a full channel makes the producer wait"
    assert await channel.get_batch(2) == [1, 2]
    await asyncio.wait_for(putter, 5)
    assert await channel.get_batch(10) == [3, 4, 5]


async def test_get_batch_returns_empty_after_close_and_drain() -> None:
    channel: Channel[int] = Channel(10)
    await channel.put_many([1, 2])
    channel.close()
    assert not channel.drained
    assert await channel.get_batch(10) == [1, 2]
    assert channel.drained
    assert await channel.get_batch(10) == []
    with pytest.raises(ChannelClosedError):
        await channel.put(3)


async def test_get_batch_times_out_empty_without_closing() -> None:
    channel: Channel[int] = Channel(10)
    assert await channel.get_batch(10, timeout_s=0.01) == []
    assert not channel.drained


def await_all(channel: Channel[tuple[str, bool]]) -> list[tuple[str, bool]]:
    return asyncio.run(channel.get_batch(100))


def test_put_dropping_removes_the_oldest_droppable_item() -> None:
    channel: Channel[tuple[str, bool]] = Channel(3)
    channel.put_dropping([("a", True), ("b", False), ("c", True)], lambda x: x[1])
    dropped = channel.put_dropping([("d", True)], lambda x: x[1])
    assert dropped == [("a", True)]
    assert channel.put_dropping([], lambda x: x[1]) == []
    assert await_all(channel) == [("b", False), ("c", True), ("d", True)]


def test_put_dropping_drops_the_newcomer_when_nothing_old_may_go() -> None:
    channel: Channel[tuple[str, bool]] = Channel(1)
    assert channel.put_dropping([("keep", False)], lambda x: x[1]) == []
    dropped = channel.put_dropping([("new", True)], lambda x: x[1])
    assert dropped == [("new", True)]
    assert len(channel) == 1
