"""Children: every process a benchmark starts, stopped on purpose or killed on the way out."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time

from benchmarks.proc_stats import status_bytes
from harness.launch import Plain

POLL_S = 0.005


class Children(Plain):
    """Starts processes in their own process group, so a process and whatever it spawned can be
    stopped together, and kills every group still alive when the benchmark ends (even on Ctrl-C,
    from the caller's `finally`).

    A process group of its own: a terminal's Ctrl-C reaches only us, and we decide the order in
    which things stop (a gateway must get its SIGTERM, not a SIGINT mid-drain). Not a session of
    its own: with autogroup scheduling each session is scheduled as one group, which would make
    `nice` meaningless between our processes."""

    process_group = 0

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        self._procs.append(proc)

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
        """SIGTERM the process (it stops its own children), wait at most `timeout_s`, then kill
        its whole group. Returns the exit code (negative: the signal that ended it)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        self._kill_group(proc)
        return proc.wait(timeout=10)

    def wait(self, proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
        """The exit code, or None when it is still running after `timeout_s`."""
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill_all(self) -> None:
        for proc in self._procs:
            self._kill_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs = [p for p in self._procs if p.returncode is None]

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        # The group outlives its leader while any member lives (e.g. a simulator's workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def wait_with_rusage(
    proc: subprocess.Popen[bytes], timeout_s: float
) -> tuple[float, float, int] | None:
    """Reap `proc` and return (when it ended on the monotonic clock, its CPU seconds, its peak
    RSS in bytes); None if it is still running after `timeout_s`.

    CPU comes from wait4(), the only way to read it once a child has exited. The peak is
    VmHWM read while it runs: wait4's ru_maxrss would count the parent's memory, which the
    child shares between fork and exec."""
    deadline = time.monotonic() + timeout_s
    peak = 0
    while True:
        peak = max(peak, status_bytes(proc.pid, "VmHWM"))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        now = time.monotonic()
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return now, usage.ru_utime + usage.ru_stime, peak
        if now > deadline:
            return None
        time.sleep(POLL_S)


def wait_or_stop(
    children: Children, proc: subprocess.Popen[bytes], timeout_s: float
) -> tuple[tuple[float, float, int], str | None]:
    """wait_with_rusage, and when the deadline passes: stop it and say "timed out"."""
    ended = wait_with_rusage(proc, timeout_s)
    if ended is not None:
        return ended, None
    children.stop(proc)
    return wait_with_rusage(proc, 5) or (time.monotonic(), math.nan, 0), "timed out"
