"""Wait for a condition with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# Generous by default: CI machines are 2-core and shared. A passing test returns as soon as the
# condition holds, so a long deadline costs nothing when things work.
DEFAULT_TIMEOUT_S = 30.0


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.02,
    message: str = "",
) -> None:
    """Poll `predicate` until it is true; fail with `message` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s}s: {message or predicate}")
        await asyncio.sleep(interval_s)


def eventually_sync(
    predicate: Callable[[], bool], timeout_s: float = DEFAULT_TIMEOUT_S, message: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s}s: {message or predicate}")
        time.sleep(0.02)
