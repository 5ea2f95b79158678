"""Hub: one process's MQTT connections -- opened together, written in batches, kept alive."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.publisher import ConnectError, Publisher
from simulators.spec import BrokerSpec

# Connects in flight at once: enough to hide a LAN round trip, few enough not to swamp a broker.
CONNECT_CONCURRENCY = 64
CONNECT_THREADS = 16


def ssl_context(broker: BrokerSpec) -> ssl.SSLContext:
    """One context for every connection: loading a CA bundle per client would cost seconds."""
    ctx = ssl.create_default_context(cafile=broker.ca_file)
    if broker.cert_file:
        ctx.load_cert_chain(broker.cert_file, broker.key_file)
    if broker.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Hub:
    """The connections of one process: batches their writes, keeps them alive, counts them."""

    def __init__(self, broker: BrokerSpec, qos: int) -> None:
        self.broker = broker
        self.qos = qos
        self.loop = asyncio.get_running_loop()
        self.publishers: list[Publisher] = []
        self.reconnects = 0
        self.acked = 0
        self.unacked = 0  # QoS 1, over all connections
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self.writing: set[Publisher] = set()  # waiting for their socket to take more
        self._all_written = asyncio.Event()
        self._all_written.set()
        self._dirty: set[Publisher] = set()
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(CONNECT_THREADS, thread_name_prefix="sim-connect")
        self._ssl = ssl_context(broker) if broker.tls else None

    # --- writes ---------------------------------------------------------------------------------

    def mark_dirty(self, publisher: Publisher) -> None:
        self._dirty.add(publisher)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand every queued packet to its socket: one pass, whatever published meanwhile."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for publisher in dirty:
            publisher.write()

    # --- lifecycle ------------------------------------------------------------------------------

    def new_client(self, client_id: str) -> mqtt.Client:
        b = self.broker
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.max_inflight_messages_set(b.inflight)
        client.max_queued_messages_set(0)
        client.connect_timeout = b.connect_timeout_s
        if b.username is not None:
            client.username_pw_set(b.username, b.password)
        if self._ssl is not None:
            client.tls_set_context(self._ssl)
            if b.insecure:
                client.tls_insecure_set(True)
        return client

    async def open(self, client_ids: Sequence[str]) -> list[Publisher]:
        """Connect a publisher per id, CONNECT_CONCURRENCY at a time; ConnectError if one fails."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        publishers = [Publisher(self, cid) for cid in client_ids]
        self.publishers.extend(publishers)

        async def one(p: Publisher) -> None:
            async with gate:
                await p.connect()

        try:
            async with asyncio.TaskGroup() as tg:
                for p in publishers:
                    tg.create_task(one(p))
        except ExceptionGroup as group:
            # One refused connection is the story; the rest were cancelled because of it.
            refused = group.subgroup(ConnectError)
            if refused is None:
                raise
            first: BaseException = refused
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        return publishers

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Run a coroutine the hub owns (a reconnect, a dropped connection); close() cancels it."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def keepalive(self) -> None:
        """Let paho send PINGREQs and notice dead connections; runs until cancelled."""
        period = max(0.5, min(5.0, self.broker.keepalive_s / 4))
        while True:
            await asyncio.sleep(period)
            for p in self.publishers:
                p.misc()

    @property
    def connected(self) -> int:
        return sum(1 for p in self.publishers if p.ready)

    def count_published(self, qos: int) -> None:
        if qos:
            self.unacked += 1
            self._all_acked.clear()

    def count_acked(self) -> None:
        self.acked += 1
        self.unacked -= 1
        if self.unacked == 0:
            self._all_acked.set()

    def set_writing(self, publisher: Publisher, writing: bool) -> None:
        if writing:
            self.writing.add(publisher)
            self._all_written.clear()
        else:
            self.writing.discard(publisher)
            if not self.writing:
                self._all_written.set()

    async def written(self) -> None:
        """Wait until every queued packet is in a socket (QoS 0 has no other 'sent')."""
        self.flush()
        await self._all_written.wait()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the broker acknowledged every QoS 1 message; False at the deadline."""
        self.flush()
        try:
            async with asyncio.timeout(timeout_s):
                await self._all_acked.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect cleanly (DISCONNECT after everything written), then release the threads."""
        for task in list(self._tasks):
            task.cancel()
        for p in self.publishers:
            p.start_close()
        self.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for p in self.publishers:
                    await p.closed.wait()
        for p in self.publishers:
            p.force_close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def blocking(self, fn: Callable[..., object], *args: object) -> object:
        return await self.loop.run_in_executor(self._executor, fn, *args)
