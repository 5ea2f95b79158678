"""`python -m benchmarks.dedupe`: what storing each reading once costs (issue 16).

1. The check on the hot path: `DedupeWindow.claim` over batches of 1,000 decoded readings
   (1,000 devices, the sink's batch size), the window full (every claim also forgets the oldest),
   CPU µs per reading; beside it the line encoder on the same batches, the work the sink does for
   every reading anyway.
2. Memory per remembered identity: tracemalloc and RSS across filling a window with 1,000,000
   identities of 10,000 devices (whose id strings the window shares) and of 1,000,000 devices
   (nothing to share).
3. Seeding at start, with 1,000,000 readings written in the span (the compaction benchmark's
   hour of readings, four 64 MiB segments): reading their identities from plain and from gzip
   segments, in a process of its own (seconds, peak RSS); and a whole `gateway run` from spawn
   to /readyz on an empty data directory and on that one (the window seeded with 1M).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.broker import BenchBroker
from benchmarks.compaction import HOUR, write_partition
from benchmarks.procs import Children
from gateway.config import DedupeConfig, GatewayConfig
from gateway.decode import SubscriptionDecoders
from gateway.layout import SEALED_SUFFIX
from gateway.model import Reading, format_ts
from gateway.ports import free_port
from gateway.sinks.dedupe import DedupeWindow
from gateway.sinks.lines import LineEncoder
from gateway.sinks.recovery import recover_segments
from gateway.sinks.seed import seed_identities
from gateway.sinks.segment import gzip_sealed

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 1000
CLIENT = "bench"  # benchmarks.compaction names its segments so


def decoded_batches(batches: int) -> list[list[Reading]]:
    """Readings as the decoder makes them from simulator-like payloads (canonical ts)."""
    config = GatewayConfig()
    decode = SubscriptionDecoders(config.mqtt.subscriptions, config.limits)
    out = []
    for b in range(batches):
        batch = []
        for d in range(BATCH):
            ts = format_ts(HOUR + b + d / BATCH)
            payload = (
                f'{{"device_id":"dev-{d:05d}","ts":"{ts}","seq":{b},'
                f'"metrics":{{"temperature":21.5,"humidity":40.1}},"units":{{"temperature":"Cel"}}}}'
            )
            batch += decode(f"sensors/site-1/dev-{d:05d}/telemetry", payload.encode(), HOUR + b)
        out.append(batch)
    return out


def check_cost(batches: int, rounds: int) -> dict[str, float]:
    """CPU µs per reading of claim (window full: each claim forgets as much) and of encoding."""
    data = decoded_batches(batches)
    readings = batches * BATCH
    claim_us: list[float] = []
    encode_us: list[float] = []
    encode = LineEncoder()
    for _ in range(rounds):
        # Full from the start: max_identities is a tenth of what is claimed.
        window = DedupeWindow(DedupeConfig(max_identities=readings // 10))
        gc.collect()
        started = time.process_time()
        for batch in data:
            window.claim(batch)
        claim_us.append((time.process_time() - started) / readings * 1e6)
        started = time.process_time()
        for batch in data:
            encode(batch)
        encode_us.append((time.process_time() - started) / readings * 1e6)
    repeats = DedupeWindow(DedupeConfig())
    for batch in data[:100]:
        repeats.claim(batch)
    started = time.process_time()
    for batch in data[:100]:
        repeats.claim(batch)  # every reading a repeat
    repeat_us = (time.process_time() - started) / (100 * BATCH) * 1e6
    return {
        "claim_us_per_reading": round(min(claim_us), 3),
        "repeat_us_per_reading": round(repeat_us, 3),
        "encode_us_per_reading": round(min(encode_us), 3),
    }


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise KeyError(field)


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_identity(identities: int, devices: int) -> dict[str, float]:
    """Bytes per identity held by a window of `identities`, readings of `devices` devices
    (each reading with its own id string, as decoded)."""
    window = DedupeWindow(DedupeConfig(max_identities=identities))
    gc.collect()
    rss_before = _rss()
    tracemalloc.start()
    for start in range(0, identities, BATCH):
        batch = [
            Reading(f"dev-{n % devices:07d}", HOUR + n / 1000, HOUR, {}, 1_000 + n // devices)
            for n in range(start, start + BATCH)
        ]
        window.claim(batch)
        del batch
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = _rss() - rss_before
    assert len(window) == identities
    return {
        "devices": devices,
        "tracemalloc_bytes": round(held / identities, 1),
        "rss_bytes": round(rss / identities, 1),
    }


def seed_in_child(data_dir: Path) -> dict[str, Any]:
    """Seed a window from `data_dir` in a process of its own: seconds and peak RSS."""
    code = (
        "import json, sys, time; from pathlib import Path\n"
        "from benchmarks.dedupe import seed_here\n"
        "print(json.dumps(seed_here(Path(sys.argv[1]))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(done.stdout)


def seed_here(data_dir: Path) -> dict[str, Any]:
    """Recovery's listing, then seeding into a window of 1M, as a starting gateway does."""
    rss_before = _rss()
    started = time.perf_counter()
    found = recover_segments(data_dir, "date=*/hour=*", CLIENT, compress=False)
    listed = time.perf_counter()
    config = DedupeConfig(max_identities=1_000_000)
    seeded = seed_identities(
        data_dir,
        found.segments,
        client_id=CLIENT,
        window_s=config.window_s,
        max_identities=config.max_identities,
    )
    window = DedupeWindow(config)
    window.seed(seeded.chunks)
    done = time.perf_counter()
    del seeded
    gc.collect()
    return {
        "identities": len(window),
        "recovery_listing_s": round(listed - started, 3),
        "seed_s": round(done - listed, 3),
        "rss_after_mb": round((_rss() - rss_before) / 2**20, 1),
        # VmHWM, not ru_maxrss: after fork and exec, ru_maxrss starts from the parent's peak.
        "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
    }


def gateway_startup(data_dir: Path, broker: BenchBroker, children: Children) -> dict[str, Any]:
    """`gateway run` on `data_dir`: seconds from spawn to /readyz 200, and its RSS then."""
    port = free_port()
    log = data_dir.parent / f"gateway-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_DEDUPE__MAX_IDENTITIES"] = "1000000"
    env["GATEWAY_COMPACTION__ENABLED"] = "false"
    argv = [
        sys.executable, "-m", "gateway", "run", "--broker", broker.url,
        "--client-id", CLIENT, "--data-dir", str(data_dir),
        "--metrics-addr", f"127.0.0.1:{port}", "--topic", "bench/+/+/telemetry",
    ]  # fmt: skip
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = children.spawn(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.perf_counter() - started > 120:
                raise RuntimeError(f"gateway did not get ready: {log.read_text()[-2000:]}")
            time.sleep(0.01)
        ready_s = time.perf_counter() - started
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        children.stop(proc)
    seeded = [line for line in log.read_text().splitlines() if "dedupe window seeded" in line]
    return {
        "ready_s": round(ready_s, 2),
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "log": seeded[0].split("gateway.sinks.files: ")[-1] if seeded else "nothing to seed",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dedupe", description=__doc__)
    parser.add_argument("--readings", type=int, default=1_000_000, help="readings in the span")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the check (best taken)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where dedupe.json goes")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"machine": os.uname().nodename}

    cost = result["check"] = check_cost(batches=200, rounds=args.rounds)
    print(
        f"check: {cost['claim_us_per_reading']} µs per new reading "
        f"({cost['repeat_us_per_reading']} µs per repeat); the line encoder on the same "
        f"readings: {cost['encode_us_per_reading']} µs",
        flush=True,
    )
    memory = result["memory"] = [
        memory_per_identity(1_000_000, 10_000),
        memory_per_identity(1_000_000, 1_000_000),
    ]
    for m in memory:
        print(
            f"memory, 1,000,000 identities of {m['devices']:,} devices: "
            f"{m['tracemalloc_bytes']} B each (tracemalloc), {m['rss_bytes']} B (RSS)",
            flush=True,
        )

    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dedupe-") as scratch:
            root = Path(scratch)
            with BenchBroker(children, root / "broker") as broker:
                empty = root / "empty"
                empty.mkdir()
                startup = result["startup"] = {"empty": gateway_startup(empty, broker, children)}
                data_dir = root / "data"
                jsonl_bytes, segments = write_partition(data_dir, args.readings)
                result["span"] = {"readings": args.readings, "segments": segments}
                result["seed_plain"] = seed_in_child(data_dir)
                startup["plain"] = gateway_startup(data_dir, broker, children)
                for path in sorted(data_dir.glob(f"date=*/hour=*/*{SEALED_SUFFIX}")):
                    gzip_sealed(path)
                result["seed_gzip"] = seed_in_child(data_dir)
                startup["gzip"] = gateway_startup(data_dir, broker, children)
    finally:
        children.kill_all()
    span = f"{args.readings:,} readings in {segments} segments ({jsonl_bytes / 2**20:.0f} MiB)"
    for kind in ("plain", "gzip"):
        s = result[f"seed_{kind}"]
        print(
            f"seeding from {span}, {kind}: {s['seed_s']} s (+ {s['recovery_listing_s']} s "
            f"recovery), {s['identities']:,} identities, window {s['rss_after_mb']} MB, "
            f"peak RSS {s['peak_rss_mb']} MB",
            flush=True,
        )
    for kind, s in startup.items():
        print(
            f"gateway run -> /readyz, {kind}: {s['ready_s']} s, RSS {s['rss_mb']} MB ({s['log']})"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dedupe.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
