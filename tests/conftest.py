"""One real Mosquitto per test session; per-test brokers where a test must kill one; and no
process left behind at the end."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from harness.broker import Broker
from tests.support.leftovers import pytest_addoption as leftovers_options

# The run fails if a test leaves a process running (see tests/support/leftovers.py).
from tests.support.leftovers import (  # noqa: F401
    pytest_configure,
    pytest_sessionfinish,
)

# The reliability matrix's rows (`make faults`), written at the end with --reliability-report.
from tests.support.reliability import pytest_addoption as reliability_options
from tests.support.reliability import reliability  # noqa: F401

# No per-example deadline: Hypothesis tests check what a function returns, not how fast (a
# 200 ms deadline failed one on a busy CI machine; speed is the benchmarks' job).
settings.register_profile("no_deadline", deadline=None)
settings.load_profile("no_deadline")


def pytest_addoption(parser: pytest.Parser) -> None:
    leftovers_options(parser)
    reliability_options(parser)


_unique = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The shared broker. Tests isolate themselves by client id and topic prefix."""
    b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own, for tests that stop or restart it."""
    b = Broker(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def unique() -> str:
    """A short id unique in this session: prefix topics and client ids with it."""
    return f"t{os.getpid()}x{next(_unique)}"


@pytest.fixture(params=["3.1.1", "5"])
def protocol(request: pytest.FixtureRequest) -> str:
    """The MQTT version a test runs on: contracts of the source hold on both wires."""
    return str(request.param)
