"""The live one-line status on a terminal, and the summary printed at the end of every run."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from simulators.fleet import FleetResult
from simulators.worker import Progress


class StatusLine:
    """Rewrites one line of a terminal at most a few times a second; silent when disabled."""

    def __init__(self, enabled: bool, out: TextIO = sys.stderr, every_s: float = 0.25) -> None:
        self.enabled = enabled
        self.out = out
        self.every_s = every_s
        self._started = time.monotonic()
        self._last_print = 0.0
        self._last_sent = 0
        self._last_t = self._started
        self._rate = 0.0
        self._printed = False

    def update(self, progress: Progress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_print < self.every_s:
            return
        if now > self._last_t:
            self._rate = (progress.sent - self._last_sent) / (now - self._last_t)
        self._last_sent, self._last_t, self._last_print = progress.sent, now, now
        line = (
            f"{now - self._started:6.1f}s  sent {progress.sent:,}  {self._rate:,.0f} msg/s  "
            f"errors {progress.errors:,}  connections {progress.connections:,}  "
            f"reconnects {progress.reconnects:,}"
        )
        self.out.write("\r\x1b[2K" + line)
        self.out.flush()
        self._printed = True

    def close(self) -> None:
        if self._printed:
            self.out.write("\n")
            self.out.flush()


def summary(result: FleetResult) -> str:
    """A few lines for people: what was sent, how fast, what went wrong, where the manifest is."""
    spec = result.spec
    sent = result.total("messages_sent")
    lines = [
        f"gateway-sim: sent {sent:,} messages ({result.total('readings_sent'):,} readings) "
        f"from {spec.devices:,} devices in {result.publish_window_s:.2f} s: "
        f"{result.rate:,.0f} msg/s",
        f"  format {spec.format}, qos {spec.qos}, seed {spec.seed}, profile {spec.profile.name}, "
        f"{spec.processes} process(es), {result.total('connections'):,} connection(s) "
        f"({spec.connections}), wall time {result.finished_at - result.started_at:.2f} s",
        f"  errors {result.total('errors'):,}, reconnects {result.total('reconnects'):,}, "
        f"unacknowledged {result.total('unacked'):,}",
    ]
    done = [w.done_at for w in result.workers if w.done_at is not None]
    firsts = [w.first_at for w in result.workers if w.first_at is not None]
    if done and firsts:  # --transport raw: when the broker had it all, and at what CPU cost
        done_s = max(done) - min(firsts)
        cpu_s = sum(w.cpu_s for w in result.workers)
        lines.append(
            f"  broker had all in {done_s:.2f} s ({'acked' if spec.qos else 'read to EOF'}): "
            f"{sent / done_s if done_s > 0 else 0:,.0f} msg/s; publisher CPU {cpu_s:.2f} s "
            f"({cpu_s / done_s if done_s > 0 else 0:.0%} of one CPU)"
        )
    faults = result.faults
    if faults:
        lines.append(
            "  faults: " + ", ".join(f"{kind} {n:,}" for kind, n in sorted(faults.items()))
        )
    if result.manifest is not None:
        lines.append(f"  manifest: {result.manifest}")
    lines.extend(f"  FAILED {error}" for error in result.errors)
    return "\n".join(lines)
