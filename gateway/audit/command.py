"""`gateway audit`: the command line of the audit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.audit.compare import audit
from gateway.audit.table import format_table


def main_audit(argv: list[str] | None = None) -> int:
    """`gateway audit --manifest FILE --data-dir DIR [--data-dir DIR ...] [--json]`: exit 0 only
    when ok. Several data directories (one per gateway of a scale-out) are audited as one."""
    parser = argparse.ArgumentParser(
        prog="gateway audit",
        description="Check that everything a simulator run sent was stored or dead-lettered.",
    )
    parser.add_argument("--manifest", type=Path, required=True, help="gateway-sim --manifest file")
    parser.add_argument(
        "--data-dir",
        type=Path,
        action="append",
        required=True,
        help="a gateway's files.data_dir; repeat it for the gateways of one run",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = audit(args.manifest, args.data_dir)
    except (OSError, ValueError) as exc:
        print(f"gateway audit: {exc}", file=sys.stderr)
        return 1
    print(report.to_json() if args.json else format_table(report))
    return 0 if report.ok else 1
