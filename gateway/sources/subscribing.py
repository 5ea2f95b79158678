"""The broker's answers to SUBSCRIBE and UNSUBSCRIBE: what it refused or downgraded, and how
long to wait for them (a backlog may hold them back: only silence counts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from gateway.config import SubscriptionConfig
from gateway.errors import BrokerError
from gateway.sources.wire import SubscribeOutcome

log = logging.getLogger(__name__)


def check_suback(
    wanted: Sequence[SubscriptionConfig],
    outcomes: Sequence[SubscribeOutcome],
    warned_qos: set[str],
) -> BrokerError | None:
    """The SUBACK's verdict: the error naming each refused filter and why, or None. A QoS
    lower than asked is allowed, and said once per filter (`warned_qos` remembers which)."""
    refused = [o for o in outcomes if o.failure is not None]
    if refused:
        names = "; ".join(f"{o.topic_filter!r}: {o.failure}" for o in refused)
        return BrokerError(
            "subscribe_refused",
            f"the broker refused the subscription to {names} (check its ACL for this "
            "client; the gateway is not ready until every filter is granted)",
        )
    for subscription, outcome in zip(wanted, outcomes, strict=False):
        granted = outcome.granted_qos
        if (
            granted is not None
            and granted < subscription.qos
            and subscription.filter not in warned_qos
        ):
            warned_qos.add(subscription.filter)
            log.warning(
                "the broker granted QoS %d for %r (asked %d): at most once for that filter",
                granted,
                subscription.effective_filter,
                subscription.qos,
            )
    return None


async def answer(
    waiter: asyncio.Future[list[SubscribeOutcome]],
    what: str,
    timeout_s: float,
    last_message_at: Callable[[], float],
) -> list[SubscribeOutcome]:
    """The broker's answer to a (UN)SUBSCRIBE sent on the live session. A backlog may hold
    it back: only silence (no message since `last_message_at()`) counts against `timeout_s`."""
    sent_at = time.monotonic()
    while not waiter.done():
        quiet = time.monotonic() - max(sent_at, last_message_at())
        if quiet > timeout_s:
            waiter.cancel()
            raise BrokerError("suback_timeout", f"no {what} within the subscribe timeout")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await asyncio.shield(waiter)
    if waiter.cancelled():
        raise BrokerError("connection_lost", f"the session ended before the {what}")
    return waiter.result()


def log_unsubscribed(filters: list[str], done: asyncio.Future[list[SubscribeOutcome]]) -> None:
    """Say what an UNSUBSCRIBE of filters no longer configured came to."""
    if done.cancelled() or done.exception() is not None:
        return
    refused = [o for o in done.result() if o.failure is not None]
    if refused:
        log.warning(
            "could not unsubscribe %s",
            "; ".join(f"{o.topic_filter!r}: {o.failure}" for o in refused),
        )
    else:
        log.info("unsubscribed from %s (no longer configured)", ", ".join(filters))
