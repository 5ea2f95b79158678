"""SIGHUP means "reload"; one that comes before the gateway can reload is remembered, not fatal.

Python leaves SIGHUP at its default action until a handler is installed: the process dies. So
the very first thing `gateway` does is install this one (gateway/__main__.py), before the heavy
imports; once running, the CLI replaces it with the reload handler and reloads once if a SIGHUP
came meanwhile.
"""

from __future__ import annotations

import signal
from types import FrameType

# What a `--processes` worker is sent when its supervisor dies (PR_SET_PDEATHSIG): not SIGHUP,
# which reloads, and not SIGTERM, whose second delivery means "stop without draining" (the
# kernel sends the parent-death signal again for each thread of the dying supervisor).
PARENT_DEATH_SIGNAL = signal.SIGUSR2


class EarlyHangups:
    """Counts SIGHUPs until the gateway installs its own handler."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> EarlyHangups:
        signal.signal(signal.SIGHUP, self._note)
        return self

    def _note(self, _signum: int, _frame: FrameType | None) -> None:
        self.count += 1
