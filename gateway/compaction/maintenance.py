"""Maintenance: compaction to Parquet and retention of one data directory.

In the gateway (`run()`), every `compaction.interval_s`:
- a scan of the partitions (directory listings only) tells whether a partition due for
  compaction changed since the last compaction; if one did, `gateway compact` runs as a child
  process and its JSON summary sets the metrics;
- retention runs in a thread.
Why a child process: pyarrow (~40 MB of RSS once imported, ~100 MB more while compacting) and
decoding every JSON line (seconds of CPU holding the GIL per million readings) stay out of the
process that acks messages. The child stops if the gateway dies (it checks its parent between
row groups), and a kill at any step is safe (compact.py).

`gateway compact` (cron, one-off) runs the same pass in its own process: `run_pass()`.
Both take the data directory's lock, so gateways sharing it and cron take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.compaction.partitions import (
    Partition,
    dead_letter_partitions,
    hour_partitions,
    tree_lock,
)
from gateway.compaction.retention import Kept, apply_limits
from gateway.compaction.steps import Step, no_step
from gateway.config import CompactionConfig, LoggingConfig, RetentionConfig
from gateway.errors import COMPACTION_ERROR_REASONS, GatewayError, compaction_error
from gateway.metrics import StorageMetrics

if TYPE_CHECKING:
    from gateway.compaction.compact import PassResult

log = logging.getLogger(__name__)

Summary = dict[str, Any]


class StoppedError(GatewayError):
    """Raised inside a pass that must stop (its gateway is gone): the temp file is left for the
    next pass to remove."""

    reason = "stopped"


@dataclass(slots=True)
class Report:
    """One pass: None for a part that did not run (the lock was held elsewhere)."""

    compaction: Summary | None
    data: Kept | None
    dead_letter: Kept | None


def summarize(result: PassResult) -> Summary:
    """A pass as JSON-ready data: what `gateway compact --json` prints and the gateway reads."""
    return {
        "compacted": [
            {
                "partition": p.name,
                "rows": c.written.rows if c.written else 0,
                "jsonl_bytes": c.written.input_bytes if c.written else 0,
                "parquet_bytes": c.written.output_bytes if c.written else 0,
                "jsonl_deleted": c.deleted,
                "seconds": round(c.seconds, 3),
            }
            for p, c in result.compacted
        ],
        "errors": [
            {"partition": p.name, "reason": e.reason, "detail": e.detail} for p, e in result.errors
        ],
        "lag_s": round(result.lag_s, 3),
    }


def _signature(partition: Partition) -> tuple[object, ...]:
    return (
        frozenset((stem, frozenset(suffixes)) for stem, suffixes in partition.sealed.items()),
        frozenset(partition.open),
        partition.parquet,
        partition.parquet_tmp,
    )


class Maintenance:
    """Compaction and retention of one data directory."""

    def __init__(
        self,
        data_dir: Path,
        compaction: CompactionConfig,
        retention: RetentionConfig,
        metrics: StorageMetrics,
        logging_config: LoggingConfig | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._compaction = compaction
        self._retention = retention
        self._metrics = metrics
        self._logging = logging_config or LoggingConfig()
        self._warned: dict[str, str] = {}  # partition -> reason last logged
        # Due partitions as the last compaction left them: unchanged ones need no new pass.
        self._seen: dict[str, tuple[object, ...]] = {}
        self._retry = True  # the last pass failed somewhere (or none ran yet)
        self._lag: tuple[float, float] = (0.0, 0.0)  # (lag, when measured)
        metrics.max_bytes["files"].set(retention.max_bytes)
        metrics.max_bytes["dead_letter"].set(retention.dead_letter_max_bytes)

    def reconfigure(
        self,
        compaction: CompactionConfig,
        retention: RetentionConfig,
        logging_config: LoggingConfig,
    ) -> None:
        """Settings from the next pass on (a reload)."""
        self._compaction = compaction
        self._retention = retention
        self._logging = logging_config
        self._metrics.max_bytes["files"].set(retention.max_bytes)
        self._metrics.max_bytes["dead_letter"].set(retention.dead_letter_max_bytes)

    # -- one process: `gateway compact` ---------------------------------------------------

    def run_pass(
        self,
        *,
        now: float | None = None,
        step: Step | None = None,
        wait: bool = False,
        retention: bool = True,
    ) -> Report:
        """Compact what is due, then apply retention, in this process. Blocking.

        Without `wait`, a part whose lock another process holds is skipped (None)."""
        when = time.time() if now is None else now
        summary = self.compact(now=when, step=step, wait=wait)
        kept = self.apply_retention(now=when, wait=wait) if retention else None
        return Report(summary, *(kept or (None, None)))

    def compact(
        self, *, now: float | None = None, step: Step | None = None, wait: bool = False
    ) -> Summary | None:
        """One compaction pass in this process (it imports pyarrow). Blocking."""
        # Here, not at the top: the gateway process imports this module and never pyarrow.
        from gateway.compaction.compact import compact_due  # noqa: PLC0415

        if not self._data_dir.is_dir():
            return None
        with tree_lock(self._data_dir, exclusive=True, wait=wait) as locked:
            if not locked:
                return None
            result = compact_due(
                hour_partitions(self._data_dir),
                self._compaction,
                keep_jsonl=self._retention.keep_jsonl,
                now=time.time() if now is None else now,
                step=step or no_step,
            )
        summary = summarize(result)
        self.observe(summary)
        return summary

    def apply_retention(
        self, *, now: float | None = None, wait: bool = False
    ) -> tuple[Kept, Kept] | None:
        """Delete what retention says must go; set the disk gauges. Blocking."""
        if not self._data_dir.is_dir():
            return None
        when = time.time() if now is None else now
        r = self._retention
        with tree_lock(self._data_dir, exclusive=True, wait=wait) as locked:
            if not locked:
                return None
            data = apply_limits(
                hour_partitions(self._data_dir),
                max_age_s=r.max_age_s,
                max_bytes=r.max_bytes,
                now=when,
            )
            dead = apply_limits(
                dead_letter_partitions(self._data_dir),
                max_age_s=r.dead_letter_max_age_s,
                max_bytes=r.dead_letter_max_bytes,
                now=when,
            )
        self._observe_kept("files", data)
        self._observe_kept("dead_letter", dead)
        return data, dead

    # -- the gateway ---------------------------------------------------------------------

    async def run(self) -> None:
        """Every interval_s until cancelled: compaction in a child when something changed,
        then retention."""
        while True:
            try:
                await self._pass(time.time())
            except OSError as exc:
                # The files are safe whatever failed here; ingest goes on, the next pass retries.
                self._retry = True
                error = compaction_error(exc)
                self._metrics.errors[error.reason].inc()
                if self._warned.get("") != error.reason:
                    self._warned[""] = error.reason
                    log.warning("maintenance pass failed (%s): %s", error.reason, error.detail)
            await asyncio.sleep(self._compaction.interval_s)

    async def _pass(self, now: float) -> None:
        if await asyncio.to_thread(self._compaction_wanted, now):
            await self._compact_in_child()
            self._seen = await asyncio.to_thread(self._due_signatures, time.time())
        else:
            lag, measured = self._lag
            self._metrics.lag.set(lag + (now - measured) if lag else 0.0)
        await asyncio.to_thread(self.apply_retention, now=now)
        self._warned.pop("", None)

    def _due_signatures(self, now: float) -> dict[str, tuple[object, ...]]:
        if not self._data_dir.is_dir():
            return {}
        grace = self._compaction.grace_s
        return {
            p.name: _signature(p) for p in hour_partitions(self._data_dir) if p.end + grace <= now
        }

    def _compaction_wanted(self, now: float) -> bool:
        """A due partition holds JSON Lines or a temp file, and is not as the last pass left it
        (or the last pass failed)."""
        for name, signature in self._due_signatures(now).items():
            sealed, _, _, tmp = signature
            if (sealed or tmp) and (self._retry or self._seen.get(name) != signature):
                return True
        return False

    def child_argv(self) -> list[str]:
        """`gateway compact` with this gateway's settings, stopping if this process dies."""
        c, r, lg = self._compaction, self._retention, self._logging
        argv = [
            sys.executable, "-m", "gateway", "compact",
            "--data-dir", str(self._data_dir),
            "--grace-s", repr(c.grace_s),
            "--batch-rows", str(c.batch_rows),
            "--log-level", lg.level, "--log-format", lg.format,
            "--parent-pid", str(os.getpid()),
            "--no-retention", "--json",
        ]  # fmt: skip
        if r.keep_jsonl:
            argv.append("--keep-jsonl")
        return argv

    async def _compact_in_child(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.child_argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
        try:
            # No deadline: a first pass over weeks of JSON Lines may rightly take hours. It
            # holds nothing the gateway waits for, and stops with the gateway.
            out, _ = await proc.communicate()
        except asyncio.CancelledError:
            # Stopping: a kill at any step is safe, and the next pass finishes the job.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        try:
            summary = json.loads(out)
        except ValueError:
            self._retry = True
            self._metrics.errors["process_failed"].inc()
            log.warning("compaction process exited with %s and no result", proc.returncode)
            return
        self.observe(summary)

    def observe(self, summary: Summary) -> None:
        """Metrics and logs of one compaction pass (this process's or a child's)."""
        m = self._metrics
        for item in summary["compacted"]:
            self._warned.pop(item["partition"], None)
            m.files_deleted[("files", "compacted")].inc(item["jsonl_deleted"])
            if not item["parquet_bytes"]:
                continue
            m.partitions.inc()
            m.rows.inc(item["rows"])
            m.input_bytes.inc(item["jsonl_bytes"])
            m.output_bytes.inc(item["parquet_bytes"])
            m.seconds.observe(item["seconds"])
            m.ratio.set(item["jsonl_bytes"] / item["parquet_bytes"])
            log.info(
                "compacted %s: %d readings, %d -> %d bytes in %.1fs",
                item["partition"],
                item["rows"],
                item["jsonl_bytes"],
                item["parquet_bytes"],
                item["seconds"],
            )
        for error in summary["errors"]:
            reason = error["reason"]
            if reason in COMPACTION_ERROR_REASONS:
                m.errors[reason].inc()
            # One line per partition and cause, not one per pass.
            if self._warned.get(error["partition"]) != reason:
                self._warned[error["partition"]] = reason
                log.warning(
                    "cannot compact %s (%s): %s; its JSON Lines stay, retried every %.0fs",
                    error["partition"],
                    reason,
                    error["detail"],
                    self._compaction.interval_s,
                )
        self._retry = bool(summary["errors"])
        self._lag = (summary["lag_s"], time.time())
        m.lag.set(summary["lag_s"])

    def _observe_kept(self, sink: str, kept: Kept) -> None:
        self._metrics.disk_bytes[sink].set(kept.size_bytes)
        for reason, files in kept.deleted.items():
            self._metrics.files_deleted[(sink, reason)].inc(files)
        if kept.partitions_deleted:
            log.info(
                "retention: deleted %d %s partitions (%s)",
                kept.partitions_deleted,
                sink,
                ", ".join(f"{n} files {why}" for why, n in kept.deleted.items()),
            )
