"""A SIGKILL at each step of a compaction loses nothing and counts nothing twice.

A real `gateway compact` process is stopped at a named step (`--pause-at`: it prints where it
is and waits there, doing nothing else) and killed with SIGKILL. The audit then finds every
reading exactly once; a second `gateway compact` finishes the job and the audit still does.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit import audit
from gateway.compaction.steps import STEPS
from gateway.layout import PARQUET_NAME, PARQUET_TMP_NAME
from gateway.model import Reading
from tests.support.manifests import write_manifest_for
from tests.support.partitions import T0, fleet, hour_dir, reading, write_segment

ROOT = Path(__file__).resolve().parents[1]
DEVICES, PER_DEVICE = 10, 300  # 3,000 readings: three record batches of 1,024


def compact_cmd(data: Path, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "gateway", "compact",
        "--data-dir", str(data), "--config", str(config), *extra,
    ]  # fmt: skip


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for_line(proc: subprocess.Popen[bytes], wanted: bytes, timeout_s: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = b""
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise AssertionError(f"no {wanted!r} from gateway compact; saw {seen[-2000:]!r}")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            seen += os.read(proc.stdout.fileno(), 4096)


def assert_each_reading_counted_once(manifest: Path, data: Path, total: int) -> None:
    report = audit(manifest, data)
    t = report.total
    assert (t.found, t.missing, t.duplicated, t.unexpected) == (total, 0, 0, 0), t
    assert report.bad_lines == 0


@pytest.mark.parametrize("merge", [False, True], ids=["first", "merge"])
@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_loses_nothing_and_counts_nothing_twice(
    step: str, merge: bool, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gateway.toml"
    config.write_text("[compaction]\nbatch_rows = 1024\n", encoding="utf-8")
    readings: list[Reading] = fleet(DEVICES, PER_DEVICE)
    late: list[Reading] = []
    if merge:  # a Parquet file exists already; late readings arrived after it
        write_segment(data, "gw-00000001", readings)
        subprocess.run(
            compact_cmd(data, config), check=True, capture_output=True, timeout=120, cwd=ROOT
        )
        late = [reading(d, PER_DEVICE + n, T0) for n in range(200) for d in range(DEVICES)]
        segments = [late[:700], late[700:1400], late[1400:]]
    else:
        segments = [readings[:1000], readings[1000:2000], readings[2000:]]
    for n, part in enumerate(segments, start=2):
        write_segment(data, f"gw-{n:08d}", part, suffix=".jsonl.gz" if n == 3 else ".jsonl")
    everything = readings + late
    last_seq: dict[str, int] = {}
    for r in everything:
        assert r.seq is not None
        last_seq[r.device_id] = max(last_seq.get(r.device_id, 0), r.seq)
    manifest = tmp_path / "sent.manifest.jsonl"
    write_manifest_for(manifest, last_seq)
    assert_each_reading_counted_once(manifest, data, len(everything))

    proc = subprocess.Popen(
        compact_cmd(data, config, "--pause-at", step),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    processes.append(proc)
    wait_for_line(proc, f"paused at {step}".encode())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    directory = hour_dir(data, T0)
    names = set(os.listdir(directory))
    if step in ("write", "fsync"):
        assert PARQUET_TMP_NAME in names
    if step in ("rename", "fsync_dir", "delete"):
        assert PARQUET_TMP_NAME not in names
        assert any(n.endswith((".jsonl", ".jsonl.gz")) for n in names), "killed before all went"
    assert_each_reading_counted_once(manifest, data, len(everything))

    done = subprocess.run(
        compact_cmd(data, config),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(directory)) == [PARQUET_NAME]
    assert_each_reading_counted_once(manifest, data, len(everything))
    audited = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "--manifest", str(manifest),
         "--data-dir", str(data)],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert f"{len(everything):,} lines" in audited.stdout


def test_a_compaction_whose_gateway_is_gone_stops_and_the_next_pass_finishes(
    tmp_path: Path,
) -> None:
    """The gateway runs `gateway compact --parent-pid <its pid>`: when that is no longer its
    parent (the gateway died), it stops at the next step, leaving a state the next pass fixes."""
    data = tmp_path / "data"
    config = tmp_path / "gateway.toml"
    config.write_text("[compaction]\nbatch_rows = 1024\n", encoding="utf-8")
    readings = fleet(DEVICES, PER_DEVICE)
    write_segment(data, "gw-00000001", readings)
    orphan = subprocess.run(
        compact_cmd(data, config, "--parent-pid", str(os.getpid() + 1_000_000)),
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert orphan.returncode == 1
    assert "stopped" in orphan.stderr
    assert not (hour_dir(data, T0) / PARQUET_NAME).exists()
    subprocess.run(compact_cmd(data, config), check=True, capture_output=True, timeout=120)
    assert sorted(os.listdir(hour_dir(data, T0))) == [PARQUET_NAME]
