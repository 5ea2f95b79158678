"""AckWindow: PUBACKs in arrival order once each burst of messages is stored."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class _Slot:
    """One burst's QoS 1 packet ids; calling it marks them stored."""

    __slots__ = ("done", "packet_ids", "window")

    def __init__(self, window: AckWindow, packet_ids: list[int]) -> None:
        self.window = window
        self.packet_ids = packet_ids
        self.done = False

    def __call__(self) -> None:
        self.window._settle(self)


class AckWindow:
    """Send each PUBACK once its message is stored, in arrival order. One per connection.

    MQTT 3.1.1 §4.6 (and MQTT 5 §4.6) require PUBACKs in the order the PUBLISHes arrived, but our
    sinks complete out of order (a burst's rejections may be durable before its readings, or a
    later burst before an earlier one), so finished slots wait here until every earlier one is
    finished too; then all the packet ids that became sendable leave in one `send_pubacks` call
    (one socket write). When the connection is lost the window is closed: packet ids belong to
    that connection, so late settles must not ack on a new one — the broker redelivers instead.
    """

    def __init__(self, send_pubacks: Callable[[list[int]], object]) -> None:
        self._send_pubacks = send_pubacks
        self._pending: deque[_Slot] = deque()
        self._unacked = 0
        self._closed = False

    def __len__(self) -> int:
        """QoS 1 messages received and not yet acked."""
        return self._unacked

    def track(self, packet_ids: list[int]) -> Callable[[], None]:
        """Register a burst's QoS 1 messages in arrival order; call the result once stored."""
        slot = _Slot(self, packet_ids)
        if packet_ids:
            self._pending.append(slot)
            self._unacked += len(packet_ids)
        else:
            slot.done = True  # nothing to ack (QoS 0 only): never holds back later bursts
        return slot

    def close(self) -> int:
        """Forget everything unacked (connection lost); returns how many messages were dropped."""
        self._closed = True
        dropped = self._unacked
        self._pending.clear()
        self._unacked = 0
        return dropped

    def _settle(self, slot: _Slot) -> None:
        if self._closed or slot.done:
            return
        slot.done = True
        pending = self._pending
        if pending[0] is not slot:
            return  # an earlier burst is still on its way
        ready: list[int] = []
        while pending and pending[0].done:
            ready.extend(pending.popleft().packet_ids)
        self._unacked -= len(ready)
        self._send_pubacks(ready)
