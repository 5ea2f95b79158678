"""Lab: what every case gets — the processes it starts, a scratch dir, the plan, a log line."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.plan import Plan
from benchmarks.procs import Children


@dataclass
class Lab:
    children: Children
    workdir: Path  # scratch, removed at the end
    out: Path  # results (latest.json, latest.md, profiles), kept
    plan: Plan
    started: float = field(default_factory=time.monotonic)

    def scratch(self, *parts: str) -> Path:
        """A fresh, empty directory under the work dir."""
        path = self.workdir.joinpath(*parts)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def say(self, text: str) -> None:
        """Progress, to stderr: the table on stdout stays clean."""
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)
