"""Child processes that die with their parent: Linux's parent-death signal, prctl(2).

A process whose parent is SIGKILLed is adopted by init and runs on: a worker of
`--processes N` would keep its broker session and files and fight the workers of the next
supervisor; the demo's broker would keep its port. PR_SET_PDEATHSIG makes the kernel signal the
child when its parent dies, however the parent dies. From prctl(2): the signal comes when the
parent *thread* that created the child ends, so start such children from the main thread; and
it is cleared when the child changes its user or group ids, so a broker started as root must be
told to stay that user.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ParentDeathSignal:
    """`signum` for this process when its parent dies. Build it in the parent (loading libc
    between fork and exec is not safe) and call it in the child: it is a Popen `preexec_fn`."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self._signum = signum
        self._prctl: Callable[..., int] | None = None
        if sys.platform == "linux":
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            self._prctl = libc.prctl

    @property
    def supported(self) -> bool:
        return self._prctl is not None

    def __call__(self) -> None:
        if self._prctl is not None:
            self._prctl(PR_SET_PDEATHSIG, self._signum, 0, 0, 0)

    def arm(self, parent_pid: int) -> bool:
        """In a started child: ask for the signal, and take it now if `parent_pid` already died
        (then we were adopted before asking). False where unsupported (not Linux)."""
        self()
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), self._signum)
        return self.supported
