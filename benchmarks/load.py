"""Load: gateway-sim runs that fill a backlog or blast a live load (its raw transport), pace a
live stream, flood, or hold many devices."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.broker import BenchBroker
from benchmarks.procs import Children
from gateway.manifest import read_header
from simulators.cli import command

SUMMARY_RATE = re.compile(r"in ([\d.]+) s: ([\d,]+) msg/s")
# Devices in the backlog and live cases: readings of ~150 bytes over this many topics.
DEVICES = 1000
# Publisher processes sending a backlog or a live load flat out (devices split as gateway-sim).
BLAST_PROCESSES = 2
# The raw transport's QoS 1 messages unacked per connection at most, and its connections per
# process: a wide window, so that the broker, not the publisher's waiting, sets the pace.
BLAST_WINDOW = 1000
BLAST_CONNECTIONS = 4


@dataclass
class Published:
    """What a simulator run says it sent (from its manifest) and how fast (from its summary)."""

    sent: int
    unacked: int
    publish_s: float
    rate: float
    exit_code: int | None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.unacked == 0


def sim_command(
    broker: BenchBroker,
    *,
    qos: int,
    devices: int,
    manifest: Path | None,
    processes: int = 1,
    **options: object,
) -> list[str]:
    """gateway-sim over pooled connections, quiet, with these options (simulators.cli.command
    checks them here, before anything starts)."""
    return command(
        broker=broker.url,
        devices=devices,
        qos=qos,
        connections="pool",
        processes=processes,
        quiet=True,
        manifest=manifest,
        **options,
    )


def start_sim(children: Children, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return children.spawn(cmd, stdout=out, stderr=out)


def finish_sim(
    children: Children,
    proc: subprocess.Popen[bytes],
    log: Path,
    manifest: Path | None,
    timeout_s: float,
) -> Published:
    """Wait for a simulator to end by itself (its --count or --duration), within a deadline."""
    code = children.wait(proc, timeout_s)
    if code is None:
        code = children.stop(proc, timeout_s=30)
    text = log.read_text(encoding="utf-8", errors="replace")
    match = SUMMARY_RATE.search(text)
    publish_s, rate = (float(match[1]), float(match[2].replace(",", ""))) if match else (0.0, 0.0)
    sent = unacked = 0
    if manifest is not None and manifest.exists():
        header = read_header(manifest)
        sent, unacked = header.messages_sent, header.messages_unacked
    return Published(sent, unacked, publish_s, rate, code)


def start_blast(
    children: Children, broker: BenchBroker, *, qos: int, total: int, workdir: Path, name: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start publishing `total` readings (DEVICES devices, ~150-byte JSON) flat out from
    BLAST_PROCESSES processes with gateway-sim's raw transport: its prebuilt blast (same
    messages, same manifest) at near zero CPU, so the broker, not the publisher, is the limit.
    Returns (process, manifest, log)."""
    manifest = workdir / f"{name}.jsonl"
    log = workdir / f"{name}.log"
    cmd = sim_command(
        broker,
        qos=qos,
        devices=DEVICES,
        manifest=manifest,
        processes=BLAST_PROCESSES,
        count=blast_count(total),
        prebuilt=True,
        transport="raw",
        pool_size=BLAST_CONNECTIONS,
        inflight=BLAST_WINDOW,
    )
    return start_sim(children, cmd, log), manifest, log


def blast_count(total: int) -> int:
    """Readings per device for about `total` in all (a multiple of DEVICES)."""
    return max(1, total // DEVICES)


def finish_blast(
    children: Children, proc: subprocess.Popen[bytes], log: Path, manifest: Path, total: int
) -> Published:
    published = finish_sim(children, proc, log, manifest, timeout_s=120 + total / 5000)
    if not published.ok or published.sent != blast_count(total) * DEVICES:
        raise RuntimeError(
            f"publish failed (exit {published.exit_code}, sent {published.sent:,}, "
            f"unacked {published.unacked:,}); see {log}"
        )
    return published


def publish_backlog(
    children: Children, broker: BenchBroker, *, qos: int, total: int, workdir: Path
) -> tuple[Published, Path]:
    """Publish `total` readings flat out (start_blast) and wait until done; return what was
    sent and the manifest for the audit."""
    proc, manifest, log = start_blast(
        children, broker, qos=qos, total=total, workdir=workdir, name=f"backlog-qos{qos}"
    )
    return finish_blast(children, proc, log, manifest, total), manifest


def start_paced(
    children: Children,
    broker: BenchBroker,
    *,
    rate_hz: float,
    duration_s: float,
    lead_s: float,
    workdir: Path,
    name: str,
) -> tuple[subprocess.Popen[bytes], Path, Path, float]:
    """A live stream of DEVICES devices at `rate_hz` each, QoS 1, payloads prebuilt, the
    device clock starting `lead_s` ahead: the simulator paces from that start (it does when the
    start is within a minute), so a reading leaves when its ts says. Returns (process,
    manifest, log, start)."""
    manifest = workdir / f"{name}.jsonl"
    log = workdir / f"{name}.log"
    start_at = time.time() + lead_s
    cmd = sim_command(
        broker,
        qos=1,
        devices=DEVICES,
        manifest=manifest,
        rate=f"{rate_hz:g}",
        duration=f"{duration_s:g}",
        prebuilt=True,
        start_time=f"{start_at:.3f}",
    )
    return start_sim(children, cmd, log), manifest, log, start_at
