"""DedupeWindow: the identities of recently written readings, so that each is stored once.

A reading's identity is `(device_id, seq, ts)`, for readings that carry a seq (the ts keeps a
device that restarts its counter from 1 apart from its earlier readings). `ts` is the time the
data line holds, in integer epoch milliseconds (`line_ms`), so that an identity read back from a
file at start (sinks/seed.py) equals the one of the same reading redelivered, whatever form the
device sent its time in.

Where it is consulted, and why there: the file sink claims a batch's identities just before it
encodes and writes the batch, and the sink is one task that commits one batch after another. So
- two readings of one batch with the same identity are written once (the second is a repeat);
- a redelivered reading whose first copy is still on its way through the pipeline reaches the
  sink after it (a device's readings keep their order through one worker) and is dropped there,
  once that copy's commit has been written — its ack is released with its own commit, after the
  first copy is durable (fsync policies included), never before;
- an identity claimed for a write that then fails for good is withdrawn; a crash between claim
  and write takes the whole window with it, and at the next start the window is seeded only from
  what the files hold. "Seen but not written" therefore never makes a redelivery look like a
  repeat.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from gateway.config import DedupeConfig
from gateway.model import Reading
from gateway.sinks.lines import line_ms

# (device_id, seq, ts as the data line holds it: integer epoch milliseconds)
Identity = tuple[str, int, int]


class DedupeWindow:
    """Remembers identities for `window_s` after they were claimed, at most `max_identities`.

    Claims are kept in order, one list per batch; the oldest whole batches are forgotten once
    the window holds more than `max_identities` or they are older than `window_s`, so memory is
    bounded by `max_identities` plus one batch. A batch whose readings are all new (the common
    case) costs two set operations over the batch, looping in C (is it disjoint from the window?
    then add it), one dict look-up per reading for the shared device id, and later one removal;
    a batch with a repeat is claimed reading by reading (one insertion each, `len` before and
    after telling a repeat).
    """

    __slots__ = ("_claims", "_clock", "_max", "_names", "_seen", "_window_s")

    def __init__(self, config: DedupeConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = config.window_s
        self._max = config.max_identities
        self._clock = clock
        self._seen: set[Identity] = set()
        self._claims: deque[tuple[float, list[Identity]]] = deque()
        self._names: dict[str, str] = {}

    def reconfigure(self, config: DedupeConfig) -> None:
        """A reload's window_s and max_identities: the window shrinks at the next claim."""
        self._window_s = config.window_s
        self._max = config.max_identities

    def __len__(self) -> int:
        """Identities remembered."""
        return len(self._seen)

    def claim(self, readings: list[Reading]) -> tuple[list[Reading], list[Identity]]:
        """(the readings to write, their identities, now claimed): a reading whose identity is
        remembered, or came earlier in `readings`, is left out. Readings without seq are kept."""
        name = self._names.setdefault
        identities = [
            (name(r.device_id, r.device_id), r.seq, round(r.ts * 1_000_000) // 1000)  # line_ms
            for r in readings
            if r.seq is not None
        ]
        seen = self._seen
        # The common case, all new, in two set operations that loop in C.
        if seen.isdisjoint(identities):
            before = len(seen)
            seen.update(identities)
            if len(seen) - before == len(identities):
                if identities:
                    self._remember(identities)
                return readings, identities
            # One identity twice in this batch: take back exactly what it added (none of its
            # identities was remembered before), and go one by one.
            seen.difference_update(identities)
        return self._claim_each(readings)

    def _claim_each(self, readings: list[Reading]) -> tuple[list[Reading], list[Identity]]:
        seen = self._seen
        add = seen.add
        name = self._names.setdefault
        kept: list[Reading] = []
        claimed: list[Identity] = []
        for reading in readings:
            seq = reading.seq
            if seq is None:
                kept.append(reading)
                continue
            device = reading.device_id
            identity = (name(device, device), seq, line_ms(reading.ts))
            before = len(seen)
            add(identity)
            if len(seen) == before:
                continue  # a repeat
            claimed.append(identity)
            kept.append(reading)
        if claimed:
            self._remember(claimed)
        return kept, claimed

    def withdraw(self, claimed: list[Identity]) -> None:
        """Forget a claim whose write did not happen (the batch will not be written)."""
        if not claimed:
            return
        self._seen.difference_update(claimed)
        claims = self._claims
        for index in range(len(claims) - 1, -1, -1):
            if claims[index][1] is claimed:
                del claims[index]
                break

    def seed(self, chunks: Iterable[list[Identity]]) -> int:
        """Remember identities read from the files at start (oldest chunk first), as if written
        now; returns how many were new. The chunks become the window's own lists (no copy)."""
        seen = self._seen
        name = self._names.setdefault
        added = 0
        for chunk in chunks:
            before = len(seen)
            if seen.isdisjoint(chunk):
                seen.update(chunk)
                # A reading twice in the files (written with dedupe off): remember it once.
                fresh = chunk if len(seen) - before == len(chunk) else list(dict.fromkeys(chunk))
            else:
                fresh = []
                for identity in chunk:
                    size = len(seen)
                    seen.add(identity)
                    if len(seen) != size:
                        fresh.append(identity)
            for device, _, _ in fresh:
                name(device, device)
            if fresh:
                added += len(fresh)
                self._remember(fresh)
        return added

    def _remember(self, claimed: list[Identity]) -> None:
        now = self._clock()
        claims = self._claims
        claims.append((now, claimed))
        seen = self._seen
        horizon = now - self._window_s
        while claims and (len(seen) > self._max or claims[0][0] < horizon):
            seen.difference_update(claims.popleft()[1])
        # Shared device id strings: one object per device instead of one per identity (~60
        # bytes each). More devices than identities means they are not shared anyway: start over
        # (only sharing is lost, never an identity).
        if len(self._names) > self._max:
            self._names.clear()
