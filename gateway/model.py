"""Reading, Rejection, Inbound, Envelope, Ack: the values that flow.

Readings are msgspec Structs (STYLE §5: pydantic for configuration, msgspec for payloads): one is
made per stored reading, so it must be cheap to build (~0.1 µs, not ~0.5 µs for a dataclass).
`gc=False`: a Reading holds only strings, numbers, dicts and lists, never a reference back to
something that holds it, so it cannot be part of a cycle and the collector may skip it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

# What a metric name may be: it names a Parquet column and may become a label.
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
# Printable ASCII without spaces ("Cel", "%RH", "m/s2"): units are stored and may become labels.
UNIT_NAME = re.compile(r"[!-~]{1,32}")
# Whole seconds already formatted (readings arrive in time order, mostly within a few seconds).
_SECOND_MEMORY = 4096


class _Seconds(dict[int, str]):
    """`%Y-%m-%dT%H:%M:%S` of whole epoch seconds, remembered; cleared when it grows too large."""

    def __missing__(self, whole: int) -> str:
        if len(self) >= _SECOND_MEMORY:
            self.clear()
        text = self[whole] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        return text


def make_ts_formatter() -> Callable[[float], str]:
    """A `format_ts` with its own memory of formatted seconds (one per sink: no globals)."""
    seconds = _Seconds()

    def format_ts(epoch_s: float) -> str:
        """ISO 8601 UTC with milliseconds and a `Z`, the form every file line uses.

        Microseconds are rounded first and then cut to milliseconds, so a time parsed from
        `...12.027Z` prints as `.027` again (not `.026`), and `.0279` as `.027`.
        """
        whole, micros = divmod(round(epoch_s * 1_000_000), 1_000_000)
        return f"{seconds[whole]}.{micros // 1000:03d}Z"

    return format_ts


def format_ts(epoch_s: float) -> str:
    """ISO 8601 UTC with milliseconds and a `Z` (uncached; sinks use `make_ts_formatter`)."""
    whole, micros = divmod(round(epoch_s * 1_000_000), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros // 1000:03d}Z"


class Reading(msgspec.Struct, gc=False):
    """One validated device message: who, when, what was measured, and where it came from.

    Times are epoch seconds (UTC): `ts` is the device's clock, `received_at` the gateway's.
    `ts_text` is the device's own timestamp when it was already in the canonical form of the files
    (`2026-11-25T11:00:00.123Z`), so the line encoder need not format it again; a transform that
    changes `ts` must clear it. Transforms may change `metrics`, `units` and `flags` in place.
    `topic` and `payload` are the broker message the reading came from, for a later dead-letter
    record; they are never written to the data files. `tags` may be shared by the readings of one
    topic, and `flags` is None until a step flags the reading: steps replace them, never change
    them in place.
    """

    device_id: str
    ts: float
    received_at: float
    metrics: dict[str, float]
    seq: int | None = None
    units: dict[str, str] = {}
    tags: dict[str, str] = {}
    flags: list[str] | None = None
    topic: str = ""
    payload: bytes = b""
    ts_text: str | None = None


class Rejection(msgspec.Struct, gc=False):
    """What the dead-letter file stores for a message or reading that was refused.

    `payload` may be only a prefix of what arrived (an oversized message is released at once);
    `payload_bytes` and `payload_sha256` then describe the whole.
    """

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_at: float
    payload_bytes: int | None = None
    payload_sha256: str | None = None


def rejection_of(  # noqa: PLR0917 - the Rejection's own fields, in its order
    topic: str, payload: bytes, reason: str, detail: str, received_at: float, keep_bytes: int
) -> Rejection:
    """A Rejection that holds at most `keep_bytes` of the payload.

    A longer payload keeps its prefix, its size and its SHA-256 (so it can be recognised, e.g.
    against what a device says it sent), and the rest is released at once: an oversized message
    neither stays in memory while it waits for the dead-letter file nor fills that file.
    """
    if len(payload) <= keep_bytes:
        return Rejection(topic, payload, reason, detail, received_at)
    return Rejection(
        topic,
        payload[:keep_bytes],
        reason,
        detail,
        received_at,
        payload_bytes=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
    )


class Inbound:
    """A burst of broker messages, as one read of the socket delivered them, in arrival order.

    Parallel lists rather than an object per message: a burst holds hundreds of messages and
    this is the hottest path. `ack` settles the burst's QoS 1 messages once everything made of
    them is durable (or deliberately dropped); `nbytes` counts topic and payload bytes.
    """

    __slots__ = ("ack", "nbytes", "payloads", "qos", "topics")

    def __init__(
        self,
        topics: list[str],
        payloads: list[bytes],
        qos: list[int],
        ack: Ack,
        nbytes: int,
    ) -> None:
        self.topics = topics
        self.payloads = payloads
        self.qos = qos
        self.ack = ack
        self.nbytes = nbytes

    def __len__(self) -> int:
        return len(self.topics)


def _nothing() -> None:
    return None


class Ack:
    """Counts the pieces a burst became; calls `done` when the last one is settled.

    A burst is split into envelopes (per worker, readings and rejections); each envelope holds
    one part and releases it when its values are durable or dropped. The burst itself holds one
    part while it is being split, so that an envelope settled early cannot finish the count.
    """

    __slots__ = ("_done", "_left")

    def __init__(self, done: Callable[[], None] = _nothing) -> None:
        self._done = done
        self._left = 1

    def hold(self) -> Ack:
        """One more part to wait for; returns self, for `Envelope(values, ack.hold())`."""
        self._left += 1
        return self

    def release(self) -> None:
        """One part is settled (call once per hold, and once for the burst)."""
        self._left -= 1
        if self._left == 0:
            self._done()

    @property
    def settled(self) -> bool:
        return self._left <= 0


T = TypeVar("T")


class Envelope(Generic[T]):
    """Values in flight (a batch) plus the ack of the burst they came from.

    `ack.release()` must be called exactly once, when every value is durable or deliberately
    dropped. `droppable` marks QoS 0 values that the drop_oldest policy may discard. `nbytes` is
    what the values keep alive: the topic and payload bytes of the messages they came from (a
    reading holds its message's payload until it is written, for a later dead-letter record), so
    that channels can be bounded in bytes as well as in values.
    """

    __slots__ = ("ack", "body", "droppable", "nbytes")

    def __init__(self, body: list[T], ack: Ack, droppable: bool = False, nbytes: int = 0) -> None:
        self.body = body
        self.ack = ack
        self.droppable = droppable
        self.nbytes = nbytes

    def __len__(self) -> int:
        return len(self.body)

    def __repr__(self) -> str:
        return f"Envelope({len(self.body)} values, {self.nbytes} bytes, droppable={self.droppable})"
