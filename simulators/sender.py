"""Sender: each device's messages over its connection, flat out or each at its due time."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Coroutine, Iterator

from simulators.hub import Hub
from simulators.publisher import Publisher
from simulators.record import DeviceLog
from simulators.spec import RunSpec
from simulators.stream import Message

# Between two flushes of the fast path; enough to amortise a write pass, small enough that a
# socket buffer (~2.5 MB on loopback) is never the limit.
BLAST_CHUNK = 512


# A clock start further away than this was set on purpose (--start-time): pace from now.
CATCH_UP_MAX_S = 60.0


class Sender:
    """One process's devices, their connections and what they sent."""

    def __init__(
        self,
        *,
        spec: RunSpec,
        logs: list[DeviceLog],
        conns: list[Publisher],
        plans: list[Iterator[Message]],
        hub: Hub,
        stop: asyncio.Event,
    ) -> None:
        self.spec = spec
        self.logs = logs
        self.conns = conns
        self.plans = plans
        self.hub = hub
        self.stop = stop
        self.sent = 0
        self.errors = 0
        self.first_at: float | None = None
        # QoS 1: at most this many unacked per connection before a sender waits.
        self.window = max(2 * spec.broker.inflight, 64)

    async def _unless_stopped(self, wait: Coroutine[object, object, None]) -> bool:
        """Wait for a connection (to come back, to get acks); False when the run was stopped
        meanwhile: a broker that went away must not make Ctrl-C hang."""
        self.hub.flush()
        waiting = asyncio.ensure_future(wait)
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        stopped.cancel()
        return not self.stop.is_set()

    async def blast(self) -> None:
        """--rate 0: every device in turn, as fast as the connections take it (the benchmark
        path: paho queues each publish, and one write pass per chunk sends them)."""
        loop = asyncio.get_running_loop()
        duration = self.spec.duration_s
        deadline = loop.time() + duration if duration else math.inf
        qos = self.spec.qos
        window = self.window
        plans, conns, hub = self.plans, self.conns, self.hub
        self.first_at = time.time()
        active = list(range(len(plans)))
        since_flush = 0
        while active and not self.stop.is_set():
            still = []
            for d in active:
                message = next(plans[d], None)
                if message is None:
                    continue
                still.append(d)
                conn = conns[d]
                if not conn.ready and not await self._unless_stopped(conn.wait_ready()):
                    return
                self._publish(d, conn, message)
                if message.disconnect_after:
                    hub.flush()
                    await conn.drop()
                if (
                    qos
                    and conn.unacked >= window
                    and not await self._unless_stopped(conn.wait_acks_below(window // 2))
                ):
                    return
                since_flush += 1
                if since_flush >= BLAST_CHUNK:
                    since_flush = 0
                    hub.flush()
                    await asyncio.sleep(0)  # let PUBACKs, pings and writers in
                    if self.stop.is_set() or loop.time() >= deadline:
                        return
            active = still

    def _publish(self, d: int, conn: Publisher, message: Message) -> None:
        if conn.publish(message.topic, message.payload, self.spec.qos):
            self.logs[d].sent(message)
            self.sent += 1
        else:
            self.errors += 1

    async def paced(self) -> None:
        """--rate HZ: each message at its due time (device clock, from when this process is
        connected); one timer for the whole process, not one task per device."""
        loop = asyncio.get_running_loop()
        qos = self.spec.qos
        window = self.window
        end_ms = self.spec.duration_s * 1000 if self.spec.duration_s else math.inf
        plans, conns, hub = self.plans, self.conns, self.hub
        pending: list[Message | None] = [None] * len(plans)
        heap: list[tuple[float, int]] = []
        for d, plan in enumerate(plans):
            message = next(plan, None)
            if message is not None and message.due_ms < end_ms:
                pending[d] = message
                heap.append((message.due_ms, d))
        heapq.heapify(heap)
        # Due times count from the device clock's start (a reading's ts). When that start is near
        # (connecting took a while since, or --start-time is a moment ahead so that several
        # processes start together), count from it on the wall clock: readings are then sent
        # when their ts says, not all late by the connect time.
        lag_s = time.time() - self.spec.start_ms / 1000
        t0 = loop.time() - (lag_s if abs(lag_s) < CATCH_UP_MAX_S else 0.0)
        self.first_at = time.time()
        while heap and not self.stop.is_set():
            now_ms = (loop.time() - t0) * 1000
            while heap and heap[0][0] <= now_ms:
                _, d = heapq.heappop(heap)
                message = pending[d]
                assert message is not None
                conn = conns[d]
                if not conn.ready or (qos and conn.unacked >= window):
                    heapq.heappush(heap, (now_ms + 50, d))  # late rather than lost
                    continue
                self._publish(d, conn, message)
                if message.disconnect_after:
                    hub.flush()
                    hub.spawn(conn.drop())
                following = next(plans[d], None)
                if following is not None and following.due_ms < end_ms:
                    pending[d] = following
                    heapq.heappush(heap, (following.due_ms, d))
                else:
                    pending[d] = None
            hub.flush()
            if heap:
                # Wake for the next due message, or now and then to notice a stop.
                await asyncio.sleep(min(max(0.0, (heap[0][0] - now_ms) / 1000), 0.25))
