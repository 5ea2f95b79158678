"""AckWindow: PUBACKs leave in arrival order, whatever order the messages are stored in."""

from __future__ import annotations

from gateway.sources.acks import AckWindow


def test_acks_wait_for_every_earlier_message() -> None:
    sent: list[int] = []
    window = AckWindow(sent.append)
    settle = {mid: window.track(mid) for mid in (1, 2, 3, 4)}
    settle[3]()
    settle[2]()
    assert sent == [], "message 1 is not stored yet, so nothing may be acked"
    settle[1]()
    assert sent == [1, 2, 3]
    assert len(window) == 1
    settle[4]()
    assert sent == [1, 2, 3, 4]
    assert len(window) == 0


def test_settling_twice_acks_once() -> None:
    sent: list[int] = []
    window = AckWindow(sent.append)
    first = window.track(7)
    first()
    first()
    assert sent == [7]


def test_a_closed_window_never_acks_on_a_new_connection() -> None:
    sent: list[int] = []
    window = AckWindow(sent.append)
    late = window.track(1)
    window.track(2)
    assert window.close() == 2
    late()
    assert sent == []
    assert len(window) == 0
