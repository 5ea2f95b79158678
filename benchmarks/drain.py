"""Time a consumer emptying a backlog: the reference, or one or more gateways side by side."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import proc_stats, reference
from benchmarks.broker import BenchBroker
from benchmarks.gateway_proc import BenchGateway, GatewaySetup
from benchmarks.procs import Children, wait_or_stop
from benchmarks.profile import Profiler
from gateway.audit import audit as audit_files
from harness.scrape import merge, stored

# Scrape slowly while far from done (a scrape costs the gateway ~1-3 ms), fast at the start and
# near the end.
POLL_FAR_S = 0.1
POLL_NEAR_S = 0.01
NEAR = 0.9
# A gateway that stores nothing for this long will not finish: say so instead of waiting.
STALL_S = 30.0


@dataclass
class Drain:
    """One consumer's drain of one backlog."""

    consumer: str
    expected: int
    delivered: int
    elapsed_s: float  # from the consumer's spawn until all `expected` were in its output
    cpu_s: float  # the consumer's user + system time until then (its whole process tree)
    peak_rss_bytes: int
    startup_s: float | None = None  # gateway: spawn until /metrics first answered
    # Gateway: CPU seconds from that first answer (imports done) until done; None: not known.
    cpu_running_s: float | None = None
    broker_cpu_s: float | None = None  # Mosquitto's CPU seconds over `elapsed_s`
    # Several gateways: spawn until the first of them answered (none consumed before that).
    first_answer_s: float | None = None
    audit: dict[str, Any] | None = None  # gateway: what the audit found in its files
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.delivered >= self.expected and self.error is None

    @property
    def ok(self) -> bool:
        """Everything arrived, and for a gateway the audit found nothing missing."""
        return self.complete and (self.audit is None or bool(self.audit["ok"]))

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def running_rate(self) -> float:
        """msg/s once started: from the first /metrics answer of any of the gateways (each
        answers before it connects, so nothing was consumed earlier) until done; the plain rate
        when there is no such figure."""
        first = self.first_answer_s if self.first_answer_s is not None else self.startup_s
        if first is None:
            return self.rate
        running_s = self.elapsed_s - first
        return self.delivered / running_s if running_s > 0 else math.nan

    @property
    def broker_cpu_share(self) -> float:
        """The broker's CPU per second of the drain (1.0 = one core busy)."""
        if self.broker_cpu_s is None or self.elapsed_s <= 0:
            return math.nan
        return self.broker_cpu_s / self.elapsed_s

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu_s / self.delivered * 100_000 if self.delivered else math.nan

    @property
    def cpu_us_per_message(self) -> float:
        """CPU per message once started (the gateway's imports left out; mosquitto_sub: its
        whole life, which is all message handling)."""
        cpu = self.cpu_running_s if self.cpu_running_s is not None else self.cpu_s
        return cpu / self.delivered * 1e6 if self.delivered else math.nan

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            ok=self.ok,
            rate=self.rate,
            running_rate=self.running_rate,
            cpu_s_per_100k=self.cpu_per_100k,
            cpu_us_per_message=self.cpu_us_per_message,
            broker_cpu_share=self.broker_cpu_share,
        )
        return out


def timeout_for(expected: int) -> float:
    """Generous: a consumer at 2,000 msg/s still finishes."""
    return 60 + expected / 2000


def drain_reference(
    children: Children,
    broker: BenchBroker,
    *,
    client_id: str,
    qos: int,
    expected: int,
    workdir: Path,
) -> Drain:
    """mosquitto_sub resumes its session and exits at the `expected`-th message."""
    out_path = workdir / f"{client_id}.out"
    broker_cpu = proc_stats.cpu_seconds(broker.pid)
    with out_path.open("wb") as out:
        start = time.monotonic()
        proc = children.spawn(reference.drain_command(broker, client_id, qos, expected), stdout=out)
    ended, error = wait_or_stop(children, proc, timeout_for(expected))
    broker_cpu = proc_stats.cpu_seconds(broker.pid) - broker_cpu
    finished, cpu_s, peak = ended
    delivered = reference.count_lines(out_path)
    out_path.unlink()
    return Drain(
        "mosquitto_sub",
        expected,
        delivered,
        finished - start,
        cpu_s,
        peak,
        error=error,
        broker_cpu_s=broker_cpu,
    )


def drain_gateways(
    children: Children,
    broker: BenchBroker,
    setups: Sequence[GatewaySetup],
    *,
    expected: int,
    manifest: Path,
    workdir: Path,
    label: str,
    profile_to: Path | None = None,
) -> Drain:
    """Start the gateways together; done when their readings written + rejected add up to
    `expected`; then stop them (they seal their files) and audit the files."""
    gateways = [BenchGateway(children, broker, s, workdir / s.client_id) for s in setups]
    broker_cpu = proc_stats.cpu_seconds(broker.pid)
    start = time.monotonic()
    for gateway in gateways:
        gateway.start()
    profiler: list[Profiler] = []

    def answered() -> None:  # from here on: the drain, not the imports
        if profile_to is not None:
            profiler.append(Profiler(children, gateways[0].pid, profile_to))

    try:
        watch = watch_stored(gateways, expected, start, on_first_answer=answered)
    finally:
        for p in profiler:
            p.stop()
    broker_cpu = proc_stats.cpu_seconds(broker.pid) - broker_cpu
    result = finish_gateways(gateways, watch, label=label, expected=expected, manifest=manifest)
    result.broker_cpu_s = broker_cpu
    return result


@dataclass
class Watch:
    """What scraping running gateways saw until they had stored what was expected (or not)."""

    start: float  # monotonic
    stored: int = 0
    finished: float = math.nan  # monotonic: when `stored` reached the count, or gave up
    startup_s: float | None = None  # from `start` until every /metrics first answered
    first_answer_s: float | None = None  # from `start` until any /metrics first answered
    cpu_s: float = math.nan  # CPU seconds of the gateways' trees when done (minus `cpu_from`)
    cpu_at_start: float | None = None  # CPU seconds of the trees when every /metrics answered
    cpu_running_s: float | None = None  # CPU seconds from then until done
    peak_rss_bytes: int = 0
    error: str | None = None


def watch_stored(
    gateways: Sequence[BenchGateway],
    expected: int,
    start: float,
    *,
    cpu_from: float = 0.0,
    on_first_answer: Callable[[], None] | None = None,
) -> Watch:
    """Scrape the gateways (slowly while far from done, fast near the end) until their written +
    rejected counters add up to `expected`, they stall, exit, or run out of time."""
    watch = Watch(start)
    deadline = start + timeout_for(expected)
    progress_at = start
    while True:
        scrapes = [g.try_scrape() for g in gateways]
        now = time.monotonic()
        if watch.first_answer_s is None and any(s is not None for s in scrapes):
            watch.first_answer_s = now - start
        if all(s is not None for s in scrapes) and all(g.answered_all for g in gateways):
            if watch.startup_s is None:
                watch.startup_s = now - start
                watch.cpu_at_start = sum(g.cpu_seconds() for g in gateways)
                if on_first_answer is not None:
                    on_first_answer()
            now_stored = int(stored(merge(s for s in scrapes if s)))
            if now_stored > watch.stored:
                watch.stored, progress_at = now_stored, now
        if watch.stored >= expected:
            watch.finished = now
            # Before anything stops: what it took to get here.
            cpu_total = sum(g.cpu_seconds() for g in gateways)
            watch.cpu_s = cpu_total - cpu_from
            if watch.cpu_at_start is not None:
                watch.cpu_running_s = cpu_total - watch.cpu_at_start
            watch.peak_rss_bytes = sum(g.tree_peak_rss_bytes() for g in gateways)
            return watch
        if now - progress_at > STALL_S:
            watch.error = f"stalled: nothing stored for {STALL_S:.0f} s; log: " + _tails(gateways)
        elif now > deadline:
            watch.error = "timed out"
        elif not all(g.running for g in gateways):
            watch.error = "exited: " + _tails(gateways)
        if watch.error is not None:
            watch.finished = now
            return watch
        # Fast while starting (the first answer starts the "once started" clock) and near the
        # end; slowly between, where a scrape would only cost the gateways CPU.
        fast = watch.startup_s is None or watch.stored >= NEAR * expected
        time.sleep(POLL_NEAR_S if fast else POLL_FAR_S)


def finish_gateways(
    gateways: Sequence[BenchGateway],
    watch: Watch,
    *,
    label: str,
    expected: int,
    manifest: Path,
    elapsed_s: float | None = None,
) -> Drain:
    """Stop the gateways (SIGTERM: they drain and seal their files), audit their files against
    the manifest, and sum it up; `elapsed_s` defaults to the watch's start to finish."""
    codes = [g.stop() for g in gateways]
    error = watch.error
    if error is None and any(code != 0 for code in codes):
        error = f"exit codes {codes}: " + _tails(gateways)
    audit = None
    if manifest.exists():  # else the load failed, and said so
        audit = audit_files(manifest, [g.data_dir for g in gateways])
    return Drain(
        label,
        expected,
        watch.stored,
        watch.finished - watch.start if elapsed_s is None else elapsed_s,
        watch.cpu_s,
        watch.peak_rss_bytes,
        startup_s=watch.startup_s,
        cpu_running_s=watch.cpu_running_s,
        first_answer_s=watch.first_answer_s,
        audit=audit.summary() if audit else None,
        error=error,
    )


def _tails(gateways: Sequence[BenchGateway]) -> str:
    return "; ".join(f"{g.setup.client_id}: {g.log_tail()}" for g in gateways)
