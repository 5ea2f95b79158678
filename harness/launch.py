"""How the harness starts and stops its processes: plainly, or through a caller's launcher
(benchmarks/procs.py's Children puts each in a process group it kills on the way out)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol


class Launcher(Protocol):
    def spawn(
        self,
        args: Sequence[str | Path],
        *,
        stdout: IO[bytes] | int | None = ...,
        stderr: IO[bytes] | int | None = ...,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]: ...

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = ...) -> int: ...


class Plain:
    """subprocess.Popen; stop = SIGTERM, then SIGKILL if it outlives `timeout_s`."""

    # None: the caller's process group. 0: one of its own (see benchmarks/procs.py).
    process_group: int | None = None

    def spawn(
        self,
        args: Sequence[str | Path],
        *,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        stderr: IO[bytes] | int | None = subprocess.DEVNULL,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            process_group=self.process_group,
        )
        self.started(proc)
        return proc

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        """Each process `spawn` starts: a launcher that keeps track of them notes it here."""

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
        if proc.poll() is None:
            proc.terminate()
            try:
                return proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait(timeout=30)


PLAIN = Plain()
