"""BufferedSocket: paho's socket read in chunks and written once per loop pass, in order."""

from __future__ import annotations

import asyncio
import socket
import threading

from gateway.sources.paho_client import BufferedSocket
from tests.support.poll import eventually


def pair(
    loop: asyncio.AbstractEventLoop, errors: list[str]
) -> tuple[BufferedSocket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    return BufferedSocket(ours, loop, threading.get_ident(), errors.append), theirs


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "peer closed early"
        data += chunk
    return data


async def test_writes_on_the_loop_are_sent_together_in_order() -> None:
    errors: list[str] = []
    buffered, peer = pair(asyncio.get_running_loop(), errors)
    try:
        acks = [bytes([0x40, 0x02, n >> 8, n & 0xFF]) for n in range(1, 1001)]
        for ack in acks:
            assert buffered.send(ack) == 4  # paho sees each write complete
        assert buffered.unsent == 4000  # nothing sent yet: once, on the next loop pass
        await eventually(lambda: buffered.unsent == 0)
        assert await asyncio.to_thread(receive, peer, 4000) == b"".join(acks)
        assert errors == []
    finally:
        buffered.close()
        peer.close()


async def test_reads_are_served_from_one_large_recv() -> None:
    buffered, peer = pair(asyncio.get_running_loop(), [])
    try:
        peer.sendall(b"\x30\x05hello" * 3)  # a socketpair: readable as soon as this returns
        got = [buffered.recv(1), buffered.recv(1), buffered.recv(5)]
        assert got == [b"\x30", b"\x05", b"hello"]
        assert buffered.buffered == 14  # the other two packets came with the first recv
    finally:
        buffered.close()
        peer.close()


async def test_a_failed_send_is_reported_and_later_sends_refused() -> None:
    errors: list[str] = []
    buffered, peer = pair(asyncio.get_running_loop(), errors)
    peer.close()  # the broker went away
    buffered.send(b"\x40\x02\x00\x01")
    await eventually(lambda: bool(errors))
    assert errors[0].startswith("send failed")
    try:
        buffered.send(b"\x40\x02\x00\x02")
    except ConnectionError:
        pass
    else:
        raise AssertionError("a send after a failure must raise, so paho sees the loss")
    buffered.close()


async def test_close_sends_what_is_buffered_first() -> None:
    """paho closes the socket right after it has written a DISCONNECT: it must still go out."""
    buffered, peer = pair(asyncio.get_running_loop(), [])
    try:
        buffered.send(b"\x40\x02\x00\x07")
        buffered.send(b"\xe0\x00")  # DISCONNECT
        buffered.close()
        assert await asyncio.to_thread(receive, peer, 6) == b"\x40\x02\x00\x07\xe0\x00"
        assert await asyncio.to_thread(peer.recv, 1) == b""  # then the close
    finally:
        peer.close()
