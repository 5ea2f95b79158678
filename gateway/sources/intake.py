"""PendingBursts: what the wire delivered and the run loop has not handed on yet, counted in
messages and bytes (the session stops reading the socket above either bound)."""

from __future__ import annotations

import collections

from gateway.model import Inbound

# Topic and payload bytes handed to the handler at once: it decodes them all before the first
# wait for room, and decoded readings weigh several times their payload.
HANDOFF_BYTES = 1024 * 1024


class PendingBursts:
    """Bursts in arrival order, with their total messages and bytes."""

    def __init__(self) -> None:
        self._pending: collections.deque[Inbound] = collections.deque()
        self.messages = 0
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, burst: Inbound) -> None:
        self._pending.append(burst)
        self.messages += len(burst)
        self.nbytes += burst.nbytes

    def over(self, max_messages: int, max_bytes: int) -> bool:
        """At or above either bound."""
        return self.messages >= max_messages or self.nbytes >= max_bytes

    def hand_off(self) -> tuple[list[Inbound], int]:
        """The oldest bursts, up to HANDOFF_BYTES of them (at least one), and their messages:
        decoded, a reading weighs several times its share of the payload, so the intake is
        handed on in slices."""
        pending = self._pending
        bursts = [pending.popleft()]
        nbytes, messages = bursts[0].nbytes, len(bursts[0])
        while pending and nbytes + pending[0].nbytes <= HANDOFF_BYTES:
            burst = pending.popleft()
            bursts.append(burst)
            nbytes += burst.nbytes
            messages += len(burst)
        self.messages -= messages
        self.nbytes -= nbytes
        return bursts, messages
