"""`python -m benchmarks.compaction`: compact an hour of readings to Parquet; time, memory, size.

Writes N readings of a fleet (1,000 devices; temperature, humidity and battery, a unit each, a
site tag, a flag on 1 in 50) as the file sink would — one hour partition, segments rotated at
`files.rotate_bytes` — then runs `gateway compact` on it as a separate process and reports its
wall time, its peak RSS (from wait4), the JSON Lines bytes before, the Parquet bytes after, and
the same JSON Lines gzipped (the sink's `files.gzip`) for comparison. Several sizes show whether
memory grows with the partition (it should not: one record batch at a time).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import FilesConfig
from gateway.layout import SEALED_SUFFIX, segment_name
from gateway.model import Reading
from gateway.sinks.lines import LineEncoder
from gateway.sinks.segment import GZIP_LEVEL

RESULTS = Path(__file__).resolve().parent / "results"
# 2026-11-25T11:00:00Z: long past, so the partition is closed whatever the grace.
HOUR = datetime(2026, 11, 25, 11, tzinfo=UTC).timestamp()
DEVICES = 1000


def write_partition(data_dir: Path, readings: int, seed: int = 7) -> tuple[int, int]:
    """One hour of `readings`, in segments of at most rotate_bytes; (bytes, segments)."""
    rng = random.Random(seed)
    directory = data_dir / "date=2026-11-25" / "hour=11"
    directory.mkdir(parents=True)
    rotate = FilesConfig().rotate_bytes
    per_device = -(-readings // DEVICES)
    step_s = 3600.0 / per_device
    base = [(20 + rng.random() * 5, 40 + rng.random() * 20) for _ in range(DEVICES)]
    total = segments = size = 0
    out = None
    encode = LineEncoder()  # the file sink's own encoder
    for seq in range(per_device):
        lines = []
        for device in range(min(DEVICES, readings - seq * DEVICES)):
            temp, humidity = base[device]
            ts = HOUR + seq * step_s + device * step_s / DEVICES
            lines.append(
                Reading(
                    device_id=f"dev-{device:05d}",
                    ts=ts,
                    received_at=ts + 0.002 + rng.random() * 0.01,
                    metrics={
                        "temperature": round(temp + rng.gauss(0, 0.3), 2),
                        "humidity": round(humidity + rng.gauss(0, 1), 1),
                        "battery": round(100 - seq * 0.01, 2),
                    },
                    seq=seq,
                    units={"temperature": "Cel", "humidity": "%RH", "battery": "%"},
                    tags={"site": f"site-{device % 20:02d}"},
                    flags=["out_of_range:temperature"] if rng.random() < 0.02 else None,
                )
            )
        chunk = b"".join(encode(lines).values())
        if out is None or size + len(chunk) > rotate:
            if out is not None:
                out.close()
            segments += 1
            out = open(directory / f"{segment_name('bench', segments)}{SEALED_SUFFIX}", "wb")  # noqa: SIM115
            size = 0
        out.write(chunk)
        size += len(chunk)
        total += len(chunk)
    if out is not None:
        out.close()
    return total, segments


def gzipped_bytes(data_dir: Path) -> int:
    """What the same segments take with files.gzip = true."""
    total = 0
    for path in sorted(data_dir.glob(f"date=*/hour=*/*{SEALED_SUFFIX}")):
        total += len(gzip.compress(path.read_bytes(), compresslevel=GZIP_LEVEL, mtime=0))
    return total


def compact(data_dir: Path) -> dict[str, Any]:
    """`gateway compact` as its own process: its summary, wall seconds and peak RSS (wait4)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "compact", "--data-dir", str(data_dir), "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"gateway compact failed: {err.read().decode()[-2000:]}")
    # ru_maxrss is in KiB on Linux.
    return {"summary": json.loads(out), "seconds": seconds, "peak_rss_kb": usage.ru_maxrss}


def run(readings: int, gzip_too: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as scratch:
        data_dir = Path(scratch) / "data"
        jsonl_bytes, segments = write_partition(data_dir, readings)
        gz = gzipped_bytes(data_dir) if gzip_too else None
        result = compact(data_dir)
        (partition,) = result["summary"]["compacted"]
        parquet = next(data_dir.glob("date=*/hour=*/*.parquet")).stat().st_size
        if partition["rows"] != readings:
            raise RuntimeError(f"compacted {partition['rows']} rows of {readings}")
    return {
        "readings": readings,
        "segments": segments,
        "seconds": round(result["seconds"], 2),
        "readings_per_s": round(readings / result["seconds"]),
        "peak_rss_mb": round(result["peak_rss_kb"] / 1024, 1),
        "jsonl_bytes": jsonl_bytes,
        "jsonl_gzip_bytes": gz,
        "parquet_bytes": parquet,
        "ratio_vs_jsonl": round(jsonl_bytes / parquet, 1),
        "ratio_vs_gzip": round(gz / parquet, 2) if gz else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compaction", description=__doc__)
    parser.add_argument(
        "--readings",
        type=int,
        nargs="+",
        default=[1_000_000, 250_000],
        help="partition sizes, one run each",
    )
    parser.add_argument("--no-gzip", action="store_true", help="skip the gzip comparison")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where compaction.json goes")
    args = parser.parse_args(argv)
    rows = []
    for n in args.readings:
        row = run(n, gzip_too=not args.no_gzip)
        rows.append(row)
        gz = (
            f", gzip {row['jsonl_gzip_bytes']:,} ({row['ratio_vs_gzip']}x)"
            if row["jsonl_gzip_bytes"]
            else ""
        )
        print(
            f"{n:>10,} readings: {row['seconds']:6.2f} s ({row['readings_per_s']:,}/s), "
            f"peak RSS {row['peak_rss_mb']} MB, JSON Lines {row['jsonl_bytes']:,} B -> Parquet "
            f"{row['parquet_bytes']:,} B ({row['ratio_vs_jsonl']}x){gz}",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compaction.json").write_text(
        json.dumps({"machine": os.uname().nodename, "runs": rows}, indent=1), encoding="utf-8"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
