"""The processes a test session started, found through /proc, so that none is left behind.

pytest makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER, Linux): a process whose
parent dies (a gateway worker whose supervisor was SIGKILLed, a daemon a script left behind) is
adopted by pytest instead of init, so it is still found among pytest's descendants.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str  # R, S, D, ... Z (zombie: dead, not yet reaped)
    cmdline: str

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def become_subreaper() -> bool:
    """Adopt the orphans of our descendants. False where unsupported."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def read_proc(pid: int) -> Proc | None:
    """One process from /proc; None once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    # `pid (comm) state ppid ...`; comm may hold spaces and parentheses: split at the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return Proc(pid, int(fields[1]), fields[0], cmdline)


def is_alive(pid: int) -> bool:
    """Running (a zombie has died: it only waits for its parent to reap it)."""
    proc = read_proc(pid)
    return proc is not None and proc.alive


def descendants(root: int) -> list[Proc]:
    """Every process below `root`, dead or alive."""
    children: dict[int, list[Proc]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (proc := read_proc(int(entry.name))) is not None:
            children.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    todo = [root]
    while todo:
        for proc in children.get(todo.pop(), ()):
            found.append(proc)
            todo.append(proc.pid)
    return found


def reap_zombies(root: int) -> None:
    """Collect our dead children (adopted orphans have no one else to do it)."""
    for proc in descendants(root):
        if proc.ppid == root and not proc.alive:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, os.WNOHANG)


def kill_all(procs: list[Proc]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
