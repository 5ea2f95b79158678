"""Profiler: py-spy sampling a gateway during a drain; its hottest functions by self time."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import Children

# `function (path/to/file.py:123)`: keep the function and the file, drop the line.
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
RATE_HZ = 250


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """`py-spy record` of a process (and its children) to a collapsed-stack file until stop()."""

    def __init__(self, children: Children, pid: int, out: Path) -> None:
        self._children = children
        self.out = out
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed")
        self._proc = children.spawn(
            [
                *(exe, "record", "--pid", str(pid), "--rate", str(RATE_HZ)),
                *("--format", "raw", "--output", str(out), "--subprocesses"),
            ],
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        # py-spy writes its output when interrupted, as after a Ctrl-C.
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        if self._children.wait(self._proc, 30) is None:
            self._children.stop(self._proc)


@dataclass
class HotFunction:
    function: str
    file: str
    self_share: float  # of all samples, 0..1
    total_share: float  # samples with the function anywhere on the stack

    def as_dict(self) -> dict[str, object]:
        return {
            "function": self.function,
            "file": self.file,
            "self_share": self.self_share,
            "total_share": self.total_share,
        }


def by_package(functions: Counter[tuple[str, str]]) -> dict[str, int]:
    """Self samples per package: `gateway/<package or module>` for ours, the top-level name for
    others."""
    out: Counter[str] = Counter()
    for (_, file), count in functions.items():
        parts = file.split("/")
        if parts[0] == "gateway" and len(parts) > 1:
            package = "gateway/" + parts[1].removesuffix(".py")
        elif len(parts) > 1:
            package = parts[0]
        else:
            package = "stdlib" if file.endswith(".py") else file  # asyncio/x.py is caught above
        out[package] += count
    return dict(out.most_common())


def hottest(collapsed: Path, top: int = 15) -> tuple[list[HotFunction], int, dict[str, int]]:
    """The `top` functions by self samples from py-spy's raw output, the sample count, and the
    self samples per package."""
    own: Counter[tuple[str, str]] = Counter()
    anywhere: Counter[tuple[str, str]] = Counter()
    samples = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in map(_frame, stack.split(";")) if f is not None]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if not samples:
        return [], 0, {}
    hot = [
        HotFunction(func, file, n / samples, anywhere[(func, file)] / samples)
        for (func, file), n in own.most_common(top)
    ]
    return hot, samples, by_package(own)


def _frame(text: str) -> tuple[str, str] | None:
    match = FRAME.match(text.strip())
    if match is None:
        return None  # a process or thread label, not a frame
    return match["func"], _short(match["file"])


def _short(path: str) -> str:
    """site-packages/paho/mqtt/client.py -> paho/mqtt/client.py; our files from the repo."""
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for marker in ("/gateway/", "/simulators/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path
