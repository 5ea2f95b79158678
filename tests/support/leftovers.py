"""A pytest plugin: the run fails if any process it started is still running at its end.

Tests start real brokers, gateways, supervisors and simulators; each must stop what it started.
At the end of the session every live descendant of pytest (orphans included: pytest adopts them,
see children.py) is given `--leftovers-timeout` seconds to exit, then listed, killed, and the
run's exit status set to "tests failed".
"""

from __future__ import annotations

import os
import time

import pytest

from tests.support.children import Proc, become_subreaper, descendants, kill_all, reap_zombies

DEFAULT_TIMEOUT_S = 15.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--leftovers-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds the processes still running at the end may take to exit before the run "
        f"fails ({DEFAULT_TIMEOUT_S:g})",
    )


def pytest_configure(config: pytest.Config) -> None:
    become_subreaper()


def _own_resource_tracker(proc: Proc) -> bool:
    """multiprocessing's tracker of pytest itself lives until pytest exits, by design."""
    return proc.ppid == os.getpid() and "multiprocessing.resource_tracker" in proc.cmdline


def running_descendants() -> list[Proc]:
    me = os.getpid()
    reap_zombies(me)
    return [p for p in descendants(me) if p.alive and not _own_resource_tracker(p)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + session.config.getoption("--leftovers-timeout")
    left = running_descendants()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)  # processes that are stopping: polled until the deadline
        left = running_descendants()
    if not left:
        return
    kill_all(left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(left)} process(es) left running by the tests (now killed):"]
    lines += [f"  pid {p.pid} (parent {p.ppid}): {p.cmdline[:200]}" for p in left]
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
