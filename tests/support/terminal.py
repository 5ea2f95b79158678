"""A command on a pseudo-terminal, as an interactive shell runs it, and Ctrl-C typed at it.

The terminal is the command's controlling terminal and its process group is the foreground one,
so Ctrl-C (the byte 0x03) makes the kernel send SIGINT to that group — to `make` and the demo
under it alike. SIGINT starts at its default disposition even when the test run ignores it
(started from a script with `trap '' INT`, which every child would otherwise inherit).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

# Runs in the child before the command: the new session (start_new_session) takes the terminal
# on stdin as its controlling terminal, and SIGINT goes back to its default.
_ENTER = (
    "import fcntl, os, signal, sys, termios; "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class Terminal:
    """`argv` on a fresh rows x cols pseudo-terminal; everything it prints is kept in `text`."""

    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        rows: int = 40,
        cols: int = 120,
    ) -> None:
        self._master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ENTER, *argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(slave)
        self._output = bytearray()

    @property
    def text(self) -> str:
        return self._output.decode(errors="replace")

    def _read(self, wait_s: float) -> bool:
        """Read what is there (waiting up to wait_s); False once the terminal is closed."""
        if not select.select([self._master], [], [], wait_s)[0]:
            return True
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: every process holding the terminal has gone
            return False
        self._output += data
        return bool(data)

    def read_until(self, done: Callable[[str], bool], timeout_s: float = 60) -> str:
        """Read until `done(text)` holds; AssertionError (with the output) after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while not done(self.text):
            if time.monotonic() > deadline or not self._read(0.1):
                raise AssertionError(f"not seen within {timeout_s}s; output:\n{self.text[-3000:]}")
        return self.text

    def ctrl_c(self) -> None:
        os.write(self._master, b"\x03")

    def wait(self, timeout_s: float = 120) -> int:
        """Read everything until the command exits; its exit code (-N: killed by signal N)."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.1) and select.select([self._master], [], [], 0)[0]:
            pass
        return self.proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self._master)
