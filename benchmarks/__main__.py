"""`python -m benchmarks`: run the cases, print the table, write results/latest.{json,md}."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.broker import MOSQUITTO
from benchmarks.cases import latency, live, memory, scale_out, throughput
from benchmarks.lab import Lab
from benchmarks.plan import CASES, FULL, QUICK, SMOKE, Plan
from benchmarks.procs import Children
from benchmarks.report import Section, render_text, write_results
from gateway import __version__ as gateway_version

RESULTS = Path(__file__).resolve().parent / "results"
RUNNERS = {
    "live": live.run,
    "throughput": throughput.run,
    "scale_out": scale_out.run,
    "latency": latency.run,
    "memory": memory.run,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="The gateway side by side with mosquitto_sub on a Mosquitto of its own.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="every case, small: about a minute")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="live load and drain only, a few thousand messages (the test suite)",
    )
    parser.add_argument("--rounds", type=int, help="rounds of live load, drain and scale-out")
    parser.add_argument(
        "--only", action="append", choices=CASES, metavar="CASE", help=f"one of {CASES}"
    )
    parser.add_argument("--profile", action="store_true", help="one extra QoS 1 drain under py-spy")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.* go")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser


def plan_from(args: argparse.Namespace) -> Plan:
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.rounds is not None:
        plan = replace(plan, rounds=max(1, args.rounds))
    if args.only:
        plan = replace(plan, cases=tuple(c for c in CASES if c in args.only))
    if args.profile:
        plan = replace(plan, profile=True)
    return plan


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same way out as Ctrl-C: through every `finally`


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_from(args)
    signal.signal(signal.SIGTERM, _terminate)
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    lab = Lab(children, workdir, args.out, plan)
    started_at = datetime.now(UTC)
    sections: list[Section] = []
    try:
        for case in plan.cases:
            lab.say(f"case {case}")
            sections += RUNNERS[case](lab)
    except KeyboardInterrupt:
        lab.say("interrupted: stopping every process started")
        return 130
    finally:
        children.kill_all()
        if args.keep:
            lab.say(f"scratch kept in {workdir}")
        else:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
    meta = _meta(argv, plan, started_at, time.monotonic() - lab.started)
    print(render_text(sections))
    md = write_results(args.out, sections, meta)
    print(f"\nwrote {md} and {md.with_suffix('.json')}")
    return 1 if any(s.failed for s in sections) else 0


def _meta(
    argv: list[str] | None, plan: Plan, started_at: datetime, duration_s: float
) -> dict[str, Any]:
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": shlex.join(["python", "-m", "benchmarks", *args]),
        "started_at": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": duration_s,
        "plan": plan.as_dict(),
        "host": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "kernel": f"{platform.system()} {platform.release()}",
            "load_avg_at_end": os.getloadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "mosquitto": _mosquitto_version(),
            "paho-mqtt": version("paho-mqtt"),
            "gateway": gateway_version,
        },
    }


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"model name\s*:\s*(.+)", text)
    return match[1].strip() if match else "unknown"


def _mosquitto_version() -> str:
    out = subprocess.run(
        [MOSQUITTO, "-h"], capture_output=True, text=True, check=False, timeout=10
    ).stdout
    match = re.search(r"mosquitto version (\S+)", out)
    return match[1] if match else "unknown"


if __name__ == "__main__":
    sys.exit(main())
