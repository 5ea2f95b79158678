"""`gateway compact`: one compaction and retention pass, for cron; `gateway seal`: POST /seal;
`gateway identities`: recent Parquet rows for a starting gateway's dedupe window (internal)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.compaction.maintenance import Maintenance, Report, StoppedError
from gateway.compaction.steps import STEPS, Step
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.logs import setup_logging
from gateway.metrics import Registry, StorageMetrics

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _steps(pause_at: str | None, parent_pid: int | None) -> Step:
    """Called at each step of a compaction: stop when the gateway that started us is gone; for
    crash tests, at step `pause_at`, say so on stdout and wait to be killed (SIGKILL)."""

    def step(name: str) -> None:
        if parent_pid is not None and os.getppid() != parent_pid:
            raise StoppedError("the gateway that started this compaction is gone")
        if name == pause_at:
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
    parser.add_argument("--data-dir", type=Path, help="files.data_dir")
    parser.add_argument("--grace-s", type=float, help="compaction.grace_s")
    parser.add_argument("--batch-rows", type=int, help="compaction.batch_rows")
    parser.add_argument("--keep-jsonl", action="store_true", help="retention.keep_jsonl = true")
    parser.add_argument("--no-retention", action="store_true", help="compact only")
    parser.add_argument("--log-format", choices=("text", "json"), help="logging.format")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # the gateway's
    parser.add_argument("--pause-at", choices=STEPS, help="testing: stop at this step until killed")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["files"] = {"data_dir": args.data_dir}
    compaction = {"grace_s": args.grace_s, "batch_rows": args.batch_rows}
    if any(v is not None for v in compaction.values()):
        overrides["compaction"] = {k: v for k, v in compaction.items() if v is not None}
    if args.keep_jsonl:
        overrides["retention"] = {"keep_jsonl": True}
    logs = {"format": args.log_format, "level": args.log_level}
    if any(v is not None for v in logs.values()):
        overrides["logging"] = {k: v for k, v in logs.items() if v is not None}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gateway compact: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging.level, config.logging.format)
    data_dir = config.files.data_dir
    if not data_dir.is_dir():
        print(f"gateway compact: {data_dir}: not a directory", file=sys.stderr)
        return EXIT_FAILURE
    maintenance = Maintenance(
        data_dir, config.compaction, config.retention, StorageMetrics(Registry())
    )
    try:
        report = maintenance.run_pass(
            step=_steps(args.pause_at, args.parent_pid), wait=True, retention=not args.no_retention
        )
    except StoppedError as exc:
        print(f"gateway compact: stopped: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    _print(report, args.json)
    return EXIT_FAILURE if report.compaction is None or report.compaction["errors"] else EXIT_OK


def _print(report: Report, as_json: bool) -> None:
    summary = report.compaction or {"compacted": [], "errors": [], "lag_s": 0.0}
    kept = {
        sink: {"deleted": k.deleted, "bytes": k.size_bytes}
        for sink, k in (("files", report.data), ("dead_letter", report.dead_letter))
        if k is not None
    }
    if as_json:
        print(json.dumps({**summary, "retention": kept}, indent=1))
        return
    for item in summary["compacted"]:
        print(
            f"{item['partition']}: {item['rows']:,} readings, {item['jsonl_bytes']:,} -> "
            f"{item['parquet_bytes']:,} bytes, {item['jsonl_deleted']} JSON Lines files "
            f"deleted, {item['seconds']}s"
        )
    for item in summary["errors"]:
        print(f"{item['partition']}: NOT compacted ({item['reason']}): {item['detail']}")
    sizes = ", ".join(f"{sink} {k['bytes']:,} bytes" for sink, k in kept.items())
    print(
        f"{len(summary['compacted'])} partitions compacted, "
        f"{len(summary['errors'])} failed" + (f"; {sizes}" if sizes else "")
    )


def post_seal(url: str, timeout_s: float = 60) -> dict[str, int]:
    """POST <url>/seal to a running gateway (or supervisor): segments sealed, per sink."""
    request = urllib.request.Request(f"{url.rstrip('/')}/seal", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        sealed = json.loads(response.read())["sealed"]
    return {str(sink): int(count) for sink, count in sealed.items()}


def post_reload(url: str, timeout_s: float = 120) -> tuple[int, dict[str, Any]]:
    """POST <url>/reload to a running gateway (or supervisor): (HTTP status, its answer)."""
    request = urllib.request.Request(f"{url.rstrip('/')}/reload", method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:  # refused (409) or failed (500): the body says why
        body = exc.read()
        try:
            return exc.code, dict(json.loads(body))
        except ValueError:
            return exc.code, {"result": "failed", "message": body.decode(errors="replace")[:200]}


def main_reload(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway reload",
        description="Ask a running gateway to read its config file and environment again and "
        "apply what changed (POST /reload; the same as SIGHUP). Exit 0 when applied or "
        "unchanged, 1 when refused (the running config stays) or failed.",
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:9108", help="the gateway's metrics address"
    )
    args = parser.parse_args(argv)
    try:
        status, outcome = post_reload(args.url)
    except (OSError, ValueError) as exc:
        print(f"gateway reload: {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if status == 404:
        print(
            f"gateway reload: {args.url}: reloads over HTTP are off (http.reload)", file=sys.stderr
        )
        return EXIT_FAILURE
    print(json.dumps(outcome, indent=2))
    return EXIT_OK if outcome.get("result") in ("applied", "unchanged") else EXIT_FAILURE


def main_seal(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway seal",
        description="Ask a running gateway to seal every open segment now (POST /seal).",
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:9108", help="the gateway's metrics address"
    )
    args = parser.parse_args(argv)
    try:
        sealed = post_seal(args.url)
    except (OSError, ValueError, KeyError) as exc:
        print(f"gateway seal: {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps({"sealed": sealed}))
    return EXIT_OK


def main_identities(argv: list[str]) -> int:
    """Print the identity lines of recent Parquet rows (run by a starting gateway)."""
    parser = argparse.ArgumentParser(
        prog="gateway identities",
        description="Print device_id, ts, received_at and seq of the rows with a seq received "
        "since a time, from Parquet files that hold segments of a client id (one JSON line each; "
        "a starting gateway seeds its dedupe window with them).",
    )
    parser.add_argument("--client-id", required=True, help="whose segments count")
    parser.add_argument("--since", type=float, required=True, help="epoch seconds")
    parser.add_argument("files", nargs="*", type=Path, help="readings.parquet files")
    args = parser.parse_args(argv)
    # Here, not at the top: only this command (a child process) imports pyarrow.
    from gateway.columnar.identities import identity_lines  # noqa: PLC0415

    out = sys.stdout.buffer
    failed = 0
    for path in args.files:
        try:
            for lines in identity_lines(path, args.client_id, args.since):
                out.write(lines)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            print(f"gateway identities: {path}: {exc}", file=sys.stderr)
            failed += 1
    out.flush()
    return EXIT_FAILURE if failed else EXIT_OK
