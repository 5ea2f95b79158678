"""SegmentStore: group commit into partitioned segments, per the fsync and rotation policies."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from gateway.channel import Channel
from gateway.config import FilesConfig
from gateway.metrics import GatewayMetrics
from gateway.model import Envelope
from gateway.sinks.recovery import recover_segments
from gateway.sinks.segment import Segment, segment_name
from gateway.sinks.write_retry import SinkName, WriteRetry

T = TypeVar("T")
# Partition key (a relative directory such as `date=2026-11-25/hour=11`) -> the bytes to append.
Parts = dict[str, bytes]
# The longest the run loop sleeps: age rotation and interval fsync are checked at least this often.
MAX_IDLE_S = 1.0


class SegmentStore:
    """Durable JSON Lines segments under `root`, one open segment per partition.

    A commit appends each partition's bytes with one write, then makes them durable per
    `config.fsync` and only then calls its `settle` (which acks):
    always: fsync every commit; interval: settle at the next fsync, at most fsync_interval_s
    after the write; never: settle after write(). Failed operations are undone and retried by
    WriteRetry, so a half-written batch never leaves a torn or duplicated line.
    """

    def __init__(
        self,
        root: Path,
        *,
        partition_glob: str,
        sink: SinkName,
        client_id: str,
        config: FilesConfig,
        metrics: GatewayMetrics,
    ) -> None:
        self._root = root
        self._partition_glob = partition_glob
        self._sink: SinkName = sink
        self._client_id = client_id
        self._config = config
        self._metrics = metrics
        self._retry = WriteRetry(sink, config, metrics)
        self._open: OrderedDict[str, Segment] = OrderedDict()  # least recently written first
        # Committed but not yet fsynced (always/interval): kept to be written again if fsync fails.
        self._pending: list[tuple[Parts, Callable[[], None]]] = []
        self._pending_since = 0.0
        self._rewrite = False
        self._next_seq: int | None = None
        # `seal_now()` callers, answered by the run loop (the only task that touches segments).
        self._seal_requests: list[asyncio.Future[int]] = []
        # A new client id for the segments (a reload changed it), applied by the run loop too.
        self._rename: tuple[str, asyncio.Future[None]] | None = None
        self._closed = False

    @property
    def writable(self) -> bool:
        return self._retry.writable

    async def recover(self) -> list[Path]:
        """Seal what a crash of this client id left open and continue its segment numbering;
        returns this client id's sealed segments."""
        # One thread for the whole scan; no deadline, since a timed-out scan would keep running
        # beside its retry. At start nothing waits on it but the start itself.
        found = await self._retry.run(
            lambda: asyncio.to_thread(
                recover_segments,
                self._root,
                self._partition_glob,
                self._client_id,
                self._config.gzip,
            )
        )
        self._metrics.torn_lines[self._sink].inc(found.torn_lines)
        self._metrics.segments_sealed[self._sink].inc(found.sealed)
        self._next_seq = found.next_seq
        return found.segments

    async def run(
        self,
        channel: Channel[T],
        encode: Callable[[list[Envelope[T]]], Parts],
        settle: Callable[[list[Envelope[T]]], None],
    ) -> None:
        """Group commit until the channel is drained, then seal every open segment."""
        if self._next_seq is None:
            await self.recover()
        while True:
            batch = await channel.get_batch(self._config.max_batch, timeout_s=self._next_due_s())
            if batch:
                await self.commit(encode(batch), functools.partial(settle, batch))
            elif channel.drained:
                break
            await self.tick()
            if self._seal_requests:
                await self._seal_requested()
            if self._rename is not None:
                await self._renamed()
        await self._seal_requested()  # close() seals everything; tell whoever asked meanwhile
        self._closed = True

    async def seal_now(self) -> int:
        """Seal every open segment within about a second (the run loop does it); return how many.

        For `gateway seal` and audits: readers that skip `.open` files then see every reading
        stored so far.
        """
        if self._closed:
            return 0
        request = asyncio.get_running_loop().create_future()
        self._seal_requests.append(request)
        return await request

    def reconfigure(self, config: FilesConfig) -> None:
        """Rotation, fsync, batch and retry settings from now on (a reload). The root never
        changes while running."""
        self._config = config
        self._retry.reconfigure(config)

    async def rename(self, client_id: str) -> None:
        """Seal every open segment and name later ones after `client_id` (a reload changed the
        client id; its lock is the caller's), recovering what that id may have left first."""
        if self._closed:
            self._client_id = client_id
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rename = (client_id, done)
        await done

    async def _renamed(self) -> None:
        assert self._rename is not None
        (client_id, done), self._rename = self._rename, None
        try:
            await self.close()
            self._client_id = client_id
            await self.recover()
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc)
            raise
        done.set_result(None)

    async def _seal_requested(self) -> None:
        sealed = len(self._open)
        requests, self._seal_requests = self._seal_requests, []
        try:
            await self.close()
        except BaseException:
            for request in requests:
                request.cancel()
            raise
        for request in requests:
            if not request.done():
                request.set_result(sealed)

    async def commit(self, parts: Parts, settle: Callable[[], None]) -> None:
        """Write one batch (one write per partition), make it durable per policy, then settle."""
        await self._make_room(parts.keys())
        started = time.perf_counter()
        await self._retry.run(lambda: self._write(parts))
        self._metrics.bytes_written[self._sink].inc(sum(map(len, parts.values())))
        if self._config.fsync == "never":
            settle()
        else:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append((parts, settle))
            if self._config.fsync == "always":
                await self._sync()
        self._metrics.write_seconds[self._sink].observe(time.perf_counter() - started)
        for key in [k for k in parts if self._open[k].size >= self._config.rotate_bytes]:
            await self._seal(key)
        while len(self._open) > self._config.max_open_segments:  # one batch had many partitions
            await self._seal(next(iter(self._open)))

    async def tick(self) -> None:
        """Apply the interval fsync and age rotation that are due."""
        now = time.monotonic()
        if self._pending and now >= self._pending_since + self._config.fsync_interval_s:
            await self._sync()
        for key in [
            k for k, s in self._open.items() if now - s.opened_at >= self._config.rotate_age_s
        ]:
            await self._seal(key)

    async def close(self) -> None:
        """Make everything durable, settle it, and seal every open segment."""
        await self._sync()
        for key in list(self._open):
            await self._seal(key)

    def _next_due_s(self) -> float:
        now = time.monotonic()
        due = MAX_IDLE_S
        if self._pending:
            due = min(due, self._pending_since + self._config.fsync_interval_s - now)
        for segment in self._open.values():
            due = min(due, segment.opened_at + self._config.rotate_age_s - now)
        return max(due, 0.0)

    async def _write(self, parts: Parts) -> None:
        """One attempt: append every part; on failure undo this attempt's writes."""
        marks: list[tuple[Segment, int]] = []
        try:
            for key, data in parts.items():
                segment = self._open.get(key) or await self._create(key)
                marks.append((segment, segment.size))
                await segment.write(data)
                self._open.move_to_end(key)
        except OSError:
            for segment, size in marks:
                segment.rewind(size)
            raise

    async def _create(self, key: str) -> Segment:
        if self._next_seq is None:
            raise RuntimeError("recover() must run before the first write")
        segment = Segment(
            self._root / key,
            segment_name(self._client_id, self._next_seq),
            self._config.write_timeout_s,
        )
        self._next_seq += 1  # even if create fails: a name once tried is never reused
        await segment.create()
        self._open[key] = segment
        return segment

    async def _sync(self) -> None:
        """fsync every open segment holding pending bytes, then settle the pending commits."""
        if self._pending:
            await self._retry.run(self._sync_once)
            pending, self._pending = self._pending, []
            for _, settle in pending:
                settle()

    async def _sync_once(self) -> None:
        if self._rewrite:
            # A failed fsync may have lost the written pages while reporting the error only once
            # (Linux drops dirty pages on writeback error): write the pending bytes again.
            for segment in self._open.values():
                segment.rewind(segment.durable_size)
            for parts, _ in self._pending:
                await self._write(parts)
            self._rewrite = False
        try:
            for segment in self._open.values():
                await segment.sync()
        except OSError:
            self._rewrite = True
            raise

    async def _seal(self, key: str) -> None:
        # Pending bytes are settled before any seal, so a rewrite only ever targets open segments.
        await self._sync()
        segment = self._open[key]
        if await self._retry.run(lambda: segment.seal(self._config.gzip)):
            self._metrics.segments_sealed[self._sink].inc()
        del self._open[key]

    async def _make_room(self, keys: Iterable[str]) -> None:
        """Seal least recently written segments so this batch's new partitions fit the cap."""
        wanted = set(keys)
        new = len(wanted - self._open.keys())
        while len(self._open) + new > self._config.max_open_segments:
            victim = next((k for k in self._open if k not in wanted), None)
            if victim is None:
                break
            await self._seal(victim)
