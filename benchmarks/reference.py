"""The reference consumer: mosquitto_sub (C, libmosquitto), writing what it gets to a file.

It acks each QoS 1 message as soon as it has read it and never fsyncs its output: it is the
fastest a consumer on this machine can be, not a durable one.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from pathlib import Path

from benchmarks.broker import HOST, MOSQUITTO_SUB, BenchBroker

TS = re.compile(rb'"ts":"([^"]+)"')


def drain_command(broker: BenchBroker, client_id: str, qos: int, count: int) -> list[str]:
    """Resume `client_id`'s persistent session and exit after `count` messages."""
    return [
        MOSQUITTO_SUB,
        *("-h", HOST, "-p", str(broker.port), "-t", "sensors/#", "-q", str(qos)),
        *("-c", "-i", client_id, "-C", str(count)),
    ]


def capture_command(broker: BenchBroker, client_id: str) -> list[str]:
    """Every message as `<receive time, unix s with ns> <payload>`, QoS 1, clean session."""
    return [
        MOSQUITTO_SUB,
        *("-h", HOST, "-p", str(broker.port), "-t", "sensors/#", "-q", "1"),
        *("-i", client_id, "-F", "%U %p"),
    ]


def count_lines(path: Path) -> int:
    total = 0
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            total += chunk.count(b"\n")
    return total


def latencies(path: Path, since: float) -> list[float]:
    """Receive time minus the payload's `ts`, in seconds, for messages received at `since`
    (unix s) or later, sorted. `ts` has millisecond resolution, so each figure can be up to
    1 ms higher than the true one (the same holds for the gateway's)."""
    epoch_of_second: dict[bytes, int] = {}
    out: list[float] = []
    with path.open("rb") as src:
        for line in src:
            stamp, _, payload = line.partition(b" ")
            received = float(stamp)
            if received < since:
                continue
            match = TS.search(payload)  # the simulator's layout; else parse the JSON fully
            ts = match[1] if match else str(json.loads(payload)["ts"]).encode()
            out.append(received - _parse_ts(ts, epoch_of_second))
    out.sort()
    return out


def _parse_ts(ts: bytes, cache: dict[bytes, int]) -> float:
    """`2026-11-25T11:00:00.123Z` -> unix seconds (UTC). One strptime per distinct second."""
    second, _, rest = ts.partition(b".")
    base = cache.get(second)
    if base is None:
        base = calendar.timegm(time.strptime(second.decode(), "%Y-%m-%dT%H:%M:%S"))
        cache[second] = base
    fraction = rest.rstrip(b"Z")
    return base + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)
