"""The demo's terminal: a live status line read from the gateway's /metrics over HTTP, with log
lines kept above it, and under `make demo` a foreground process group of the demo's own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from gateway.top.scrape import Scrape, counter_rate, fetch, quantile, why, window

# Without a terminal (CI, a pipe) the line is printed as a log line this often instead.
PLAIN_EVERY_S = 5.0
_CLEAR_LINE = "\r\x1b[K"


def status_text(cur: Scrape, prev: Scrape | None) -> str:
    """One line from two scrapes of the gateway's /metrics, as `gateway top` reads them."""
    received = cur.value("gateway_messages_received_total")
    before = prev.value("gateway_messages_received_total") if prev is not None else None
    rate = counter_rate(received, before, cur, prev)
    buckets, _ = window(cur, prev, "gateway_end_to_end_latency_seconds")
    p99 = quantile(buckets, 0.99)
    return (
        f"in {rate or 0:7.0f} msg/s | "
        f"written {cur.value('gateway_readings_written_total'):9.0f} | "
        f"dead-lettered {cur.value('gateway_readings_rejected_total'):6.0f} | "
        f"unacked {cur.value('gateway_unacked_messages'):5.0f} | "
        f"depth {cur.value('gateway_channel_depth'):5.0f} | "
        f"p99 e2e {'-' if p99 is None else f'{p99[0] * 1000:7.1f} ms'}"
    )


class Metrics:
    """The gateway's /metrics over HTTP, as `gateway top` reads it (never its registry)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.last: Scrape | None = None

    async def status(self) -> str:
        prev = self.last
        try:
            self.last = await asyncio.to_thread(fetch, self._url)
        except (OSError, ValueError) as exc:
            self.last = None
            return f"cannot read {self._url}/metrics: {why(exc)}"
        return status_text(self.last, prev)

    async def took(self, sent: int) -> bool:
        """The gateway received at least `sent` messages and has nothing left in flight."""
        await self.status()
        return self.last is not None and (
            self.last.value("gateway_messages_received_total") >= sent
            and self.last.value("gateway_readings_in_flight") == 0
        )


class StatusLine:
    """A stream for everything the demo and its logs print, under a live status line.

    On a terminal the status line is redrawn in place; a log line or message first clears it,
    is printed on its own line, and the status line is drawn again below it. Elsewhere the
    status is printed as a plain line every PLAIN_EVERY_S.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._status = ""
        self._printed_at = -PLAIN_EVERY_S

    def show(self, text: str) -> None:
        if self._tty:
            self._status = text
            self._out.write(_CLEAR_LINE + text)
        elif time.monotonic() - self._printed_at >= PLAIN_EVERY_S:
            self._printed_at = time.monotonic()
            self._out.write(text + "\n")
        self._out.flush()

    def write(self, text: str) -> int:
        """What logging's StreamHandler calls: one whole record per call."""
        if self._status:
            self._out.write(_CLEAR_LINE)
        self._out.write(text)
        if self._status and text.endswith("\n"):
            self._out.write(self._status)
        self._out.flush()
        return len(text)

    def say(self, message: str) -> None:
        self.write(message + "\n")

    def flush(self) -> None:
        self._out.flush()

    def end(self) -> None:
        """Leave the status line where it is; what follows starts on a line of its own."""
        if self._status:
            self._out.write("\n")
            self._out.flush()
        self._status = ""


@contextlib.contextmanager
def foreground_group() -> Iterator[None]:
    """While the demo runs, its process group alone is the terminal's foreground group.

    Ctrl-C is delivered to the whole foreground group. Under `make demo` that includes make,
    which dies of it once the demo returns (exit 130 after a clean stop and an OK audit). In a
    group of its own the demo alone gets Ctrl-C, and make exits with the demo's code. Nothing
    changes when the demo already leads its group (started from a shell) or has no terminal.
    """
    if not (
        sys.stdin.isatty()
        and os.getpgrp() != os.getpid()
        and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    ):
        yield
        return
    tty = sys.stdin.fileno()
    before = os.getpgrp()
    os.setpgid(0, 0)
    _set_foreground(tty, os.getpgrp())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # the old group may have gone
            _set_foreground(tty, before)


def _set_foreground(tty: int, group: int) -> None:
    # A background group that sets the foreground gets SIGTTOU (stopped) unless it ignores it.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(tty, group)
    finally:
        signal.signal(signal.SIGTTOU, previous)
