"""SubscriptionWatch: per subscription, when a message last arrived and whether it went silent.

A subscription can be granted and still deliver nothing: Mosquitto 2.0.11 grants the SUBACK of a
filter its ACL denies and then sends nothing, to MQTT 3.1.1 and 5 clients alike (shown by
tests/test_e2e_silence.py), and a frozen broker sends nothing until the keepalive ends the
connection. Only silence tells, so each
subscription is watched on its own: one busy filter must not hide a starved one. Subscriptions
are named by their configured `name` or their index, never by topic text from the network.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import SubscriptionConfig
from gateway.metrics import GatewayMetrics
from gateway.topics import filter_matches, unshared

log = logging.getLogger(__name__)

# Topics whose matching subscriptions are remembered; past this many the memory is cleared.
TOPIC_MEMORY = 16_384


@dataclass(frozen=True, slots=True)
class Silence:
    """A silent subscription, as /readyz names it."""

    subscription: str
    filter: str
    silent_s: float


class SubscriptionWatch:
    """Which subscriptions have had no message for longer than `stall_timeout_s` (0: never).

    Silence counts from a subscription's last message, or from when the current session
    subscribed if that is later (a reconnect after an outage starts the clock again). The
    metric, gateway_subscription_silence_seconds, counts from the last message only (or from
    the first subscribe when there was none): it is what an alert reads.
    """

    def __init__(
        self,
        subscriptions: Sequence[SubscriptionConfig],
        stall_timeout_s: float,
        metrics: GatewayMetrics,
        now: float,
    ) -> None:
        self._labels = [sub.label(index) for index, sub in enumerate(subscriptions)]
        self._configured = [sub.effective_filter for sub in subscriptions]
        # Delivered topics never carry the `$share/<group>/` prefix.
        self._filters = [unshared(f) for f in self._configured]
        self._limit = stall_timeout_s
        self._heard = [now] * len(subscriptions)  # until the first subscribe: process start
        self._first_subscribed: float | None = None
        self._subscribed_at: float | None = None
        self._silent: set[int] = set()
        self._by_topic: dict[str, tuple[int, ...]] = {}
        self._single = len(subscriptions) == 1
        self._metrics = metrics
        self._now = now
        for index, label in enumerate(self._labels):
            metrics.track_subscription(label, functools.partial(self._age, index))

    def renewed(
        self, subscriptions: Sequence[SubscriptionConfig], stall_timeout_s: float
    ) -> SubscriptionWatch:
        """The watch of a reloaded config: what it keeps is judged from what this one heard; a
        removed subscription's series is gone from the metric."""
        renewed = SubscriptionWatch(subscriptions, stall_timeout_s, self._metrics, self._now)
        heard = dict(zip(self._configured, self._heard, strict=True))
        renewed._heard = [heard.get(f, self._now) for f in renewed._configured]
        renewed._first_subscribed = self._first_subscribed
        renewed._subscribed_at = self._subscribed_at
        for label in set(self._labels) - set(renewed._labels):
            self._metrics.untrack_subscription(label)
        return renewed

    @property
    def silent(self) -> list[Silence]:
        """The subscriptions silent at the last check."""
        return [
            Silence(self._labels[i], self._configured[i], round(self._silence(i), 1))
            for i in sorted(self._silent)
        ]

    def heard(self, topics: list[str], now: float) -> None:
        """A burst arrived (once per read of the socket)."""
        heard = self._heard
        if self._single:
            heard[0] = now
        else:
            by_topic = self._by_topic
            for topic in topics:
                indices = by_topic.get(topic)
                if indices is None:
                    indices = self._match(topic)
                for index in indices:
                    heard[index] = now
        if self._silent:
            self._speaking_again(now)

    def subscribed(self, now: float) -> None:
        """The current session holds our subscriptions (SUBACK, or a resumed session)."""
        if self._first_subscribed is None:
            self._first_subscribed = now
            self._heard = [max(at, now) for at in self._heard]
        self._subscribed_at = now

    def unsubscribed(self) -> None:
        """The session ended: silence is not judged until the next one subscribes."""
        self._subscribed_at = None
        self._silent.clear()

    def check(self, now: float) -> bool:
        """Judge every subscription (about once a second, `now` from time.monotonic()); True
        when one is silent."""
        self._now = now
        if not self._limit or self._subscribed_at is None:
            return False
        for index in range(len(self._heard)):
            silence = self._silence(index)
            if silence > self._limit and index not in self._silent:
                self._silent.add(index)
                self._metrics.mqtt_stalls.inc()
                log.warning(
                    "subscription %s (%r) has had no message for %.0fs: silent, not ready. "
                    "Are devices publishing to it? A broker ACL that denies the filter grants "
                    "the subscription and then delivers nothing (mqtt.stall_timeout_s = %g)",
                    self._labels[index],
                    self._configured[index],
                    silence,
                    self._limit,
                )
        return bool(self._silent)

    def _age(self, index: int) -> float:
        """Seconds since the subscription's last message (read at scrape time)."""
        return time.monotonic() - self._heard[index]

    def _silence(self, index: int) -> float:
        since = self._heard[index]
        if self._subscribed_at is not None:
            since = max(since, self._subscribed_at)
        return self._now - since

    def _speaking_again(self, now: float) -> None:
        self._now = now
        for index in sorted(self._silent):
            if self._silence(index) <= self._limit:
                self._silent.discard(index)
                log.info(
                    "subscription %s (%r): messages flowing again",
                    self._labels[index],
                    self._configured[index],
                )

    def _match(self, topic: str) -> tuple[int, ...]:
        indices = tuple(i for i, f in enumerate(self._filters) if filter_matches(f, topic))
        if len(self._by_topic) >= TOPIC_MEMORY:
            self._by_topic.clear()
        self._by_topic[topic] = indices
        return indices
