"""Retrying with capped exponential backoff and jitter: the one owner of tenacity.

Two loops retry here: the MQTT session (reconnect after every session end) and the sinks (a
failed write or fsync, until the disk takes it). Both never give up on their own; only a stop
(cancellation, or the caller's `sleep` returning early) ends the wait.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
    wait_random_exponential,
)
from tenacity.wait import wait_base

# (the error that is retried, the delay before the next attempt in seconds, its number)
BeforeSleep = Callable[[BaseException | None, float, int], None]


def backoff(
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    min_s: float,
    max_s: float,
    jitter: Literal["added", "full"],
    sleep: Callable[[float], Awaitable[None]] | None = None,
    before_sleep: BeforeSleep | None = None,
) -> AsyncRetrying:
    """An `async for attempt in backoff(...): with attempt: ...` loop that retries `retry_on`.

    jitter "added": min_s doubling up to max_s, plus up to min_s at random (reconnects: never
    sooner than min_s). jitter "full": anywhere between min_s and a window doubling up to max_s
    (sinks sharing a disk do not retry in lockstep).
    """
    wait: wait_base
    if jitter == "added":
        # wait_exponential + wait_random, not wait_exponential_jitter: its arguments differ
        # between tenacity 8.2, 9.1 and 9.2.
        wait = wait_exponential(multiplier=min_s, max=max_s) + wait_random(0, min_s)
    else:
        wait = wait_random_exponential(multiplier=min_s, min=min_s, max=max_s)
    hook = None
    if before_sleep is not None:
        tell = before_sleep

        def hook(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            # next_action.sleep, not upcoming_sleep: the latter is new in tenacity 8.2.3.
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            tell(error, delay, state.attempt_number)

    kwargs: dict[str, object] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait,
        before_sleep=hook,
        reraise=True,
        **kwargs,  # type: ignore[arg-type]
    )
