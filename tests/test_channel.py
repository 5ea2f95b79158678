"""Channel: bounded in values and bytes, waits when full, hands out batches, drains after close."""

from __future__ import annotations

import asyncio

import pytest

from gateway.channel import Channel, ChannelClosedError
from gateway.model import Ack, Envelope


def env(*values: str, droppable: bool = False, nbytes: int = 0) -> Envelope[str]:
    return Envelope(list(values), Ack(), droppable=droppable, nbytes=nbytes)


def values(batch: list[Envelope[str]]) -> list[str]:
    return [value for envelope in batch for value in envelope.body]


async def test_put_waits_while_full_and_resumes_when_room_is_made() -> None:
    channel: Channel[str] = Channel(3)
    await channel.put(env("1", "2"))
    putter = asyncio.create_task(channel.put(env("3", "4")))
    done, _ = await asyncio.wait({putter}, timeout=0.1)
    assert not done, "an envelope that does not fit makes the producer wait"
    assert len(channel) == 2
    assert values(await channel.get_batch(2)) == ["1", "2"]
    await asyncio.wait_for(putter, 5)
    assert values(await channel.get_batch(10)) == ["3", "4"]


async def test_an_envelope_larger_than_the_capacity_still_moves_through_an_empty_channel() -> None:
    channel: Channel[str] = Channel(2)
    await asyncio.wait_for(channel.put(env("a", "b", "c")), 5)
    assert len(channel) == 3
    assert values(await channel.get_batch(1)) == ["a", "b", "c"], "never split"


async def test_get_batch_takes_whole_envelopes_up_to_max_values() -> None:
    channel: Channel[str] = Channel(10)
    for value in ("a", "b", "c"):
        await channel.put(env(value, value))
    batch = await channel.get_batch(4)
    assert values(batch) == ["a", "a", "b", "b"]
    assert len(channel) == 2


async def test_get_batch_returns_empty_after_close_and_drain() -> None:
    channel: Channel[str] = Channel(10)
    await channel.put(env("1", "2"))
    channel.close()
    assert not channel.drained
    assert values(await channel.get_batch(10)) == ["1", "2"]
    assert channel.drained
    assert await channel.get_batch(10) == []
    with pytest.raises(ChannelClosedError):
        await channel.put(env("3"))


async def test_get_batch_times_out_empty_without_closing() -> None:
    channel: Channel[str] = Channel(10)
    assert await channel.get_batch(10, timeout_s=0.01) == []
    assert not channel.drained


async def test_put_dropping_removes_the_oldest_droppable_envelope() -> None:
    channel: Channel[str] = Channel(3)
    first = env("a", droppable=True)
    assert channel.put_dropping(first) == []
    await channel.put(env("b"))
    assert channel.put_dropping(env("c", droppable=True)) == []
    dropped = channel.put_dropping(env("d", droppable=True))
    assert dropped == [first]
    assert values(await channel.get_batch(100)) == ["b", "c", "d"]


def test_put_dropping_drops_the_newcomer_when_nothing_old_may_go() -> None:
    channel: Channel[str] = Channel(1)
    channel.put_dropping(env("keep"))
    newcomer = env("new", droppable=True)
    assert channel.put_dropping(newcomer) == [newcomer]
    assert len(channel) == 1


def test_put_dropping_an_envelope_larger_than_the_channel_keeps_its_newest_values() -> None:
    channel: Channel[str] = Channel(2)
    big = env("a", "b", "c", "d", droppable=True)
    [cut] = channel.put_dropping(big)
    assert cut.body == ["a", "b"]
    assert len(channel) == 2
    assert big.body == ["c", "d"]


async def test_put_waits_while_the_bytes_are_full_though_the_values_are_not() -> None:
    """Large payloads fill a channel long before its count does: bytes bound it too."""
    channel: Channel[str] = Channel(1000, max_bytes=100)
    await channel.put(env("a", nbytes=60))
    putter = asyncio.create_task(channel.put(env("b", nbytes=60)))
    done, _ = await asyncio.wait({putter}, timeout=0.1)
    assert not done, "over max_bytes the producer waits"
    assert (len(channel), channel.nbytes) == (1, 60)
    assert values(await channel.get_batch(10)) == ["a"]
    await asyncio.wait_for(putter, 5)
    assert channel.nbytes == 60
    assert values(await channel.get_batch(10)) == ["b"]
    assert channel.nbytes == 0


async def test_an_envelope_over_max_bytes_still_moves_through_an_empty_channel() -> None:
    channel: Channel[str] = Channel(10, max_bytes=10)
    await asyncio.wait_for(channel.put(env("huge", nbytes=1000)), 5)
    assert channel.nbytes == 1000
    assert values(await channel.get_batch(10)) == ["huge"]


def test_put_dropping_makes_room_in_bytes_too() -> None:
    channel: Channel[str] = Channel(100, max_bytes=100)
    first = env("a", droppable=True, nbytes=80)
    assert channel.put_dropping(first) == []
    assert channel.put_dropping(env("b", droppable=True, nbytes=80)) == [first]
    assert channel.nbytes == 80
