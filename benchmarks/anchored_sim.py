"""`gateway-sim` whose paced schedule starts at --start-time, so device time = send time.

Stock `gateway-sim --rate R` stamps readings from a device clock that starts at --start-time
(default: when the command line was parsed) but starts its send schedule once its connections
are up: every timestamp is early by the connection setup (~30-50 ms with a pool; with
--prebuilt, also the build time), and that offset would be measured as end-to-end latency.
Here the schedule waits for --start-time (give one a few seconds ahead), so a message leaves
when its timestamp says. Used by the latency case until simulators/ does this itself.

The patch sits at module level: `--processes N` spawns workers that import the main module
(as `__mp_main__`) again, so they are patched too.
"""

from __future__ import annotations

import asyncio
import sys
import time

from simulators import sender
from simulators.cli import main

# The last moments are spun, not slept: asyncio's timer is only good to about a millisecond.
SPIN_S = 0.003
_paced = sender.Sender.paced


async def _paced_from_start_time(self: sender.Sender) -> None:
    start_s = self.spec.start_ms / 1000
    late_s = time.time() - start_s
    if late_s > 0:
        print(
            f"anchored_sim: schedule starts {late_s * 1000:.0f} ms after --start-time; "
            "timestamps of the first messages are early by up to that",
            file=sys.stderr,
            flush=True,
        )
    if -late_s > SPIN_S:
        await asyncio.sleep(-late_s - SPIN_S)
    deadline = time.monotonic() + SPIN_S * 2
    while time.time() < start_s and time.monotonic() < deadline:
        pass
    await _paced(self)


sender.Sender.paced = _paced_from_start_time  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
