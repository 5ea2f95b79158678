"""drop_duplicates: drop a reading whose (device_id, seq) was seen recently."""

from __future__ import annotations

from collections import OrderedDict, deque

from gateway.config import DropDuplicatesStep
from gateway.model import Reading
from gateway.transforms.verdict import Verdict


class _Recent:
    """The last `window` seq numbers of one device: a set to ask, a deque to forget in order."""

    __slots__ = ("order", "seen")

    def __init__(self, window: int) -> None:
        self.seen: set[int] = set()
        self.order: deque[int] = deque(maxlen=window)


class DropDuplicates:
    """Drops a reading whose (device_id, seq) is among the device's last `window` seq numbers.

    Redelivery after a reconnect (at least once) is the usual source of duplicates. Memory is
    bounded: `window` seq numbers for each of at most `max_devices` devices, the least recently
    seen device forgotten first. Readings without seq pass. A device whose seq restarts (e.g.
    after a reboot) loses readings whose seq is still in its window.
    """

    __slots__ = ("_devices", "_max_devices", "_window")

    drop_reason = "duplicate"

    def __init__(self, step: DropDuplicatesStep) -> None:
        self._window = step.window
        self._max_devices = step.max_devices
        self._devices: OrderedDict[str, _Recent] = OrderedDict()

    def __call__(self, readings: list[Reading]) -> Verdict:
        kept = [reading for reading in readings if self.is_new(reading)]
        return Verdict(kept, dropped=len(readings) - len(kept))

    def is_new(self, reading: Reading) -> bool:
        """False for a repeat (remembering the reading otherwise)."""
        seq = reading.seq
        if seq is None:
            return True
        devices = self._devices
        recent = devices.get(reading.device_id)
        if recent is None:
            recent = _Recent(self._window)
            devices[reading.device_id] = recent
            if len(devices) > self._max_devices:
                devices.popitem(last=False)
        else:
            devices.move_to_end(reading.device_id)
            if seq in recent.seen:
                return False
        order = recent.order
        if len(order) == self._window:
            recent.seen.discard(order[0])  # the deque drops it on append
        order.append(seq)
        recent.seen.add(seq)
        return True

    def __len__(self) -> int:
        """Devices remembered."""
        return len(self._devices)
