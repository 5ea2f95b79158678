"""Hold many idle TCP connections to a port, reopening each one the server closes: the hostile
client of the metrics-port tests, in a process of its own so that its event loop does not slow
the test's measurements.

`python -m tests.support.idle_flood PORT COUNT [REOPEN_S]` prints `opened N` when all COUNT are
open the first time, and `total N` (connections opened in all) when it gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from harness.scrape import get_sync

ROOT = Path(__file__).resolve().parents[2]


async def flood(port: int, count: int, reopen_s: float) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    opened = 0
    announced = False

    async def hold() -> None:
        nonlocal opened, announced
        while not stop.is_set():
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except (OSError, TimeoutError):
                await asyncio.sleep(reopen_s)
                continue
            opened += 1
            if opened >= count and not announced:
                announced = True
                print(f"opened {opened}", flush=True)
            closing = asyncio.create_task(reader.read(1024))
            stopping = asyncio.create_task(stop.wait())
            with contextlib.suppress(OSError):
                await asyncio.wait({closing, stopping}, return_when=asyncio.FIRST_COMPLETED)
            closing.cancel()
            stopping.cancel()
            writer.close()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(reopen_s)

    await asyncio.gather(*(hold() for _ in range(count)))
    return opened


class IdleFlood:
    """The flood as a child process: start it, wait until all are open, stop it."""

    def __init__(self, port: int, count: int, reopen_s: float = 1.0) -> None:
        self.count = count
        args = [str(port), str(count), str(reopen_s)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.idle_flood", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    async def wait_all_open(self, timeout_s: float = 60) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            line = await asyncio.to_thread(self.proc.stdout.readline)
        assert line.startswith("opened"), f"the flood ended early: {line!r}"

    def stop(self) -> int:
        """Stop it; how many connections it opened in all."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        totals = [int(x.split()[1]) for x in out.splitlines() if x.startswith("total")]
        return totals[-1] if totals else 0


async def time_scrapes_while(
    base_url: str, work: Coroutine[Any, Any, object], at_least_s: float = 8.0
) -> list[float]:
    """Run `work` (e.g. a publish) while timing GET /metrics every 0.2 s, for as long as it
    runs and at least `at_least_s`; each must answer 200. The times, in seconds."""
    task = asyncio.create_task(work)
    times = []
    deadline = time.monotonic() + at_least_s
    try:
        while time.monotonic() < deadline or not task.done():
            started = time.monotonic()
            status, _ = await asyncio.to_thread(get_sync, f"{base_url}/metrics", 5.0)
            times.append(time.monotonic() - started)
            assert status == 200, f"/metrics answered {status}"
            await asyncio.sleep(0.2)
    finally:
        await task
    return times


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    reopen_s = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, hard))
    total = asyncio.run(flood(port, count, reopen_s))
    print(f"total {total}", flush=True)


if __name__ == "__main__":
    main()
