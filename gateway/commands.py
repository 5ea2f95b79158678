"""`gateway compact`: one compaction and retention pass, for cron; `gateway seal`: POST /seal."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.compaction.compact import STEPS
from gateway.compaction.maintenance import Maintenance
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.logs import setup_logging
from gateway.metrics import Registry, StorageMetrics

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _pause_at(wanted: str) -> Any:
    """For crash tests: at step `wanted`, say so on stdout and wait to be killed (SIGKILL)."""

    def step(name: str) -> None:
        if name == wanted:
            print(f"paused at {name}", flush=True)
            while True:
                signal.pause()

    return step


def main_compact(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway compact",
        description="Compact every closed partition to Parquet and apply retention, once.",
    )
    parser.add_argument("--config", type=Path, help="TOML config file (compaction, retention)")
    parser.add_argument("--data-dir", type=Path, help="the gateway's files.data_dir")
    parser.add_argument("--grace-s", type=float, help="compaction.grace_s")
    parser.add_argument(
        "--keep-jsonl", action="store_true", default=None, help="retention.keep_jsonl"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--pause-at", choices=STEPS, help="testing: stop at this step until killed")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["files"] = {"data_dir": args.data_dir}
    if args.grace_s is not None:
        overrides["compaction"] = {"grace_s": args.grace_s}
    if args.keep_jsonl:
        overrides["retention"] = {"keep_jsonl": True}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gateway compact: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging.level, config.logging.format)
    return _compact(config, args.json, args.pause_at)


def _compact(config: GatewayConfig, as_json: bool, pause_at: str | None) -> int:
    data_dir = config.files.data_dir
    if not data_dir.is_dir():
        print(f"gateway compact: {data_dir}: not a directory", file=sys.stderr)
        return EXIT_FAILURE
    maintenance = Maintenance(
        data_dir, config.compaction, config.retention, StorageMetrics(Registry())
    )
    step = _pause_at(pause_at) if pause_at else None
    report = maintenance.run_pass(step=step, wait=True)
    assert report.compaction is not None
    assert report.data is not None
    assert report.dead_letter is not None
    summary = {
        "compacted": [
            {
                "partition": p.name,
                "rows": c.written.rows if c.written else 0,
                "jsonl_bytes": c.written.input_bytes if c.written else 0,
                "parquet_bytes": c.written.output_bytes if c.written else 0,
                "jsonl_deleted": c.deleted,
                "seconds": round(c.seconds, 3),
            }
            for p, c in report.compaction.compacted
        ],
        "errors": [
            {"partition": p.name, "reason": e.reason, "detail": e.detail}
            for p, e in report.compaction.errors
        ],
        "lag_s": round(report.compaction.lag_s, 1),
        "retention": {
            "files": {"deleted": report.data.deleted, "bytes": report.data.size_bytes},
            "dead_letter": {
                "deleted": report.dead_letter.deleted,
                "bytes": report.dead_letter.size_bytes,
            },
        },
    }
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        for item in summary["compacted"]:
            print(
                f"{item['partition']}: {item['rows']:,} readings, {item['jsonl_bytes']:,} -> "
                f"{item['parquet_bytes']:,} bytes, {item['jsonl_deleted']} JSON Lines files "
                f"deleted, {item['seconds']}s"
            )
        for item in summary["errors"]:
            print(f"{item['partition']}: NOT compacted ({item['reason']}): {item['detail']}")
        print(
            f"{len(summary['compacted'])} partitions compacted, {len(summary['errors'])} "
            f"failed; data {report.data.size_bytes:,} bytes, dead letters "
            f"{report.dead_letter.size_bytes:,} bytes"
        )
    return EXIT_FAILURE if report.compaction.errors else EXIT_OK


def main_seal(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway seal",
        description="Ask a running gateway to seal every open segment now (POST /seal).",
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:9108", help="the gateway's metrics address"
    )
    args = parser.parse_args(argv)
    request = urllib.request.Request(f"{args.url.rstrip('/')}/seal", method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        print(f"gateway seal: {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(body)
    return EXIT_OK
