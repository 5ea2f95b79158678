"""AckWindow: PUBACKs leave in arrival order, whatever order the bursts are stored in."""

from __future__ import annotations

from gateway.sources.acks import AckWindow


def test_acks_wait_for_every_earlier_burst_and_leave_together() -> None:
    writes: list[list[int]] = []
    window = AckWindow(writes.append)
    settle = {burst: window.track([burst * 10 + 1, burst * 10 + 2]) for burst in (1, 2, 3, 4)}
    assert len(window) == 8
    settle[3]()
    settle[2]()
    assert writes == [], "burst 1 is not stored yet, so nothing may be acked"
    settle[1]()
    assert writes == [[11, 12, 21, 22, 31, 32]], "one write, in arrival order"
    assert len(window) == 2
    settle[4]()
    assert writes[-1] == [41, 42]
    assert len(window) == 0


def test_settling_twice_acks_once() -> None:
    writes: list[list[int]] = []
    window = AckWindow(writes.append)
    first = window.track([7])
    first()
    first()
    assert writes == [[7]]


def test_a_burst_of_qos0_only_never_holds_back_the_next() -> None:
    writes: list[list[int]] = []
    window = AckWindow(writes.append)
    qos0 = window.track([])
    later = window.track([5])
    later()
    assert writes == [[5]]
    qos0()
    assert writes == [[5]]


def test_a_closed_window_never_acks_on_a_new_connection() -> None:
    writes: list[list[int]] = []
    window = AckWindow(writes.append)
    late = window.track([1])
    window.track([2, 3])
    assert window.close() == 3
    late()
    assert writes == []
    assert len(window) == 0
