"""Child processes that die with their parent: Linux's parent-death signal, prctl(2).

A process whose parent is SIGKILLed is adopted by init and runs on: a worker of
`--processes N` would keep its broker session and files and fight the workers of the next
supervisor; the demo's broker would keep its port. PR_SET_PDEATHSIG makes the kernel signal the
child when its parent dies, however the parent dies. From prctl(2): the signal comes when the
parent *thread* that created the child ends, so start such children from the main thread; and
it is cleared when the child changes its user or group ids, so a broker started as root must be
told to stay that user. Elsewhere than Linux nothing is asked, and False says so.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# For a command that is not Python: ask, make sure the parent is still the one that started
# us (else it died before we asked: take the signal now), then become the command. A
# preexec_fn would do the same between fork and exec, which is unsafe with threads running.
_ASK_THEN_EXEC = (
    "import ctypes, os, sys\n"
    "signum, parent = int(sys.argv[1]), int(sys.argv[2])\n"
    f"ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, signum, 0, 0, 0)\n"
    "if os.getppid() != parent:\n"
    "    os.kill(os.getpid(), signum)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """In a started child: `signum` when the parent dies, now if `parent_pid` already has."""
    supported = sys.platform == "linux"
    if supported:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)
    return supported


def dying_with_us(cmd: list[str], signum: int = signal.SIGTERM) -> list[str]:
    """`cmd` wrapped so that, started by this process, it gets `signum` when we die."""
    if sys.platform != "linux":
        return cmd
    return [sys.executable, "-c", _ASK_THEN_EXEC, str(int(signum)), str(os.getpid()), *cmd]
