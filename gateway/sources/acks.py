"""AckWindow: PUBACKs in arrival order once each message is stored."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class _Slot:
    __slots__ = ("done", "mid", "window")

    def __init__(self, window: AckWindow, mid: int) -> None:
        self.window = window
        self.mid = mid
        self.done = False

    def __call__(self) -> None:
        self.window._settle(self)


class AckWindow:
    """Send each PUBACK once its message is stored, in arrival order. One per connection.

    MQTT 3.1.1 §4.6 requires PUBACKs in the order the PUBLISHes arrived, but our sinks complete
    out of order (a reading may wait on a slow step while a later one is written), so finished
    slots wait here until every earlier one is finished too. When the connection is lost the
    window is closed: packet ids belong to that connection, so late settles must not ack on a
    new one — the broker redelivers instead.
    """

    def __init__(self, send_puback: Callable[[int], object]) -> None:
        self._send_puback = send_puback
        self._pending: deque[_Slot] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    def track(self, mid: int) -> Callable[[], None]:
        """Register a QoS 1 message in arrival order; call the result once it is stored."""
        slot = _Slot(self, mid)
        self._pending.append(slot)
        return slot

    def close(self) -> int:
        """Forget everything unacked (connection lost); returns how many were dropped."""
        self._closed = True
        dropped = len(self._pending)
        self._pending.clear()
        return dropped

    def _settle(self, slot: _Slot) -> None:
        if self._closed or slot.done:
            return
        slot.done = True
        pending = self._pending
        while pending and pending[0].done:
            self._send_puback(pending.popleft().mid)
