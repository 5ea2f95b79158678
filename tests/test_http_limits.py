"""The metrics port cannot starve the gateway: a connection cap kept below the file limit, idle
and slow connections closed, size limits, and bad requests logged once per cause without a
traceback. (With 1,100 idle connections under a 1024-file limit: the reliability matrix,
tests/test_faults_hostile.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import HttpConfig
from gateway.connections import QUIET_S, SWEEP_S
from gateway.http import FD_HEADROOM, LISTEN_BACKLOG, HttpServer, connection_cap, listen_backlog
from harness.scrape import get


@contextlib.asynccontextmanager
async def serving(**http: object) -> AsyncIterator[tuple[HttpServer, CollectorRegistry]]:
    registry = CollectorRegistry()
    server = HttpServer(HttpConfig.model_validate({"port": 0, **http}), registry, dict)
    await server.start()
    try:
        yield server, registry
    finally:
        await server.stop()


def rejected(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("gateway_http_rejected_total", {"reason": reason}) or 0.0


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the server closes the connection within `timeout_s` (sending nothing more)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await reader.read(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_a_connection_that_sends_no_request_is_closed_after_the_header_timeout() -> None:
    async with serving(header_timeout_s=0.5) as (server, registry):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        # Closed by the sweep (every SWEEP_S) once the header timeout is past, not before it.
        assert await closed_by_server(reader, timeout_s=0.5 + SWEEP_S + 1.0)
        assert time.monotonic() - started >= 0.4
        writer.close()
        assert rejected(registry, "header_timeout") == 1


async def test_a_header_sent_a_byte_at_a_time_is_cut_at_the_header_timeout() -> None:
    async with serving(header_timeout_s=1.0) as (server, registry):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: 1\r\n" * 50
        for byte in request:
            if writer.is_closing() or reader.at_eof():
                break
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionResetError):
                await writer.drain()
            await asyncio.sleep(0.02)
        assert await closed_by_server(reader, timeout_s=max(0.0, started + 4 - time.monotonic()))
        writer.close()
        assert rejected(registry, "header_timeout") == 1


async def test_over_the_cap_an_idle_connection_makes_room_for_a_request() -> None:
    async with serving(max_connections=4) as (server, registry):
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
        for _ in range(3):
            status, body = await get(f"{server.url}/healthz")
            assert (status, body) == (200, '{"status": "alive"}')
        closed = [await closed_by_server(r, timeout_s=0.2) for r, _ in idle]
        # The first request took the oldest idle one's place; each closed after its answer.
        assert closed == [True, False, False, False]
        for _, writer in idle:
            writer.close()
        assert rejected(registry, "max_connections") == 1


async def test_over_the_cap_requests_in_progress_are_not_cut_a_newcomer_gets_503() -> None:
    async with serving(max_connections=2) as (server, registry):
        busy = []
        for _ in range(2):  # kept-alive, and they just asked: being answered, not idle
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b'alive"}')).startswith(b"HTTP/1.1 200")
            busy.append((reader, writer))
        status, _ = await get(f"{server.url}/healthz")
        assert status == 503
        assert not any([await closed_by_server(r, timeout_s=0.1) for r, _ in busy])
        await asyncio.sleep(QUIET_S + 0.2)  # past the quiet time (a product window): one gives way
        status, _ = await get(f"{server.url}/healthz")
        assert status == 200
        for _, writer in busy:
            writer.close()
        assert rejected(registry, "max_connections") == 2


async def test_bad_requests_get_400_or_413_and_one_log_line_per_cause_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.http")
    async with serving(max_header_bytes=1024, max_body_bytes=16) as (server, registry):

        async def send(raw: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            await writer.drain()
            answer = await reader.read(64)
            writer.close()
            return answer

        for _ in range(20):
            assert (await send(b"\x16\x03\x01 not http\r\n\r\n")).startswith(b"HTTP/1.0 400")
            long_line = b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            assert (await send(long_line)).startswith(b"HTTP/1.0 400")
        body = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
        # No endpoint takes a body here: 405 from the route, before the body is read.
        assert (await send(body)).startswith(b"HTTP/1.1 405 ")
        assert rejected(registry, "bad_request") == 40  # a 405 is an answer, not a bad request
    lines = [r for r in caplog.records if r.name == "gateway.http" and "bad request" in r.message]
    assert len(lines) == 2, [r.message for r in lines]  # one per cause: BadHttpMethod, LineTooLong
    assert all(r.exc_info is None for r in lines), "no traceback for a client's mistake"
    assert "aaaa" not in caplog.text, "never the request's own text"


def test_the_connection_cap_stays_below_the_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10**9) == soft - FD_HEADROOM
    assert connection_cap(16) == 16


def test_the_listen_backlog_leaves_room_for_four_bursts_under_the_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for limit in (256, 1024, 4096):  # a systemd service's default soft limit is 1024
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
            cap = connection_cap(64)
            backlog = listen_backlog(cap)
            assert 8 <= backlog <= LISTEN_BACKLOG
            assert cap + 4 * backlog <= min(limit, hard) - FD_HEADROOM
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
