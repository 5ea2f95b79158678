"""Loopback TCP ports: one that nothing listens on, and waiting until something does.

Shipped for the demo (its broker) and the supervisor (its workers' metrics ports); the test and
benchmark harness uses these too rather than keeping copies.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"
POLL_S = 0.02


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    host: str = LOOPBACK,
    timeout_s: float = 10.0,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Until a TCP connect to `host:port` succeeds. TimeoutError after `timeout_s`;
    ChildProcessError as soon as `alive()` (the process that should listen) says it has gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise ChildProcessError(f"the process that should listen on {host}:{port} exited")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(POLL_S)  # a poll with a deadline: nothing to wait on but the port itself
