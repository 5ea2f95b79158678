"""One owner per data directory and client id, and start-up checks that fail fast and clearly.

Every gateway here is a real `python -m gateway run` process: the lock is per process, and what
an operator sees is the exit code and the log.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.layout import DEAD_LETTER_DIR, HOUR_GLOB, OPEN_SUFFIX
from gateway.ports import free_port
from gateway.sinks.claim import lock_holder
from harness.broker import Broker
from harness.gateway import ROOT, GatewayProcess
from harness.poll import eventually
from tests.support.gateway import fleet, read_lines
from tests.support.publish import publish


@pytest.fixture
def processes(broker: Broker, tmp_path: Path, unique: str) -> Iterator[list[GatewayProcess]]:
    """Gateways made by the test (`processes.append(...)`), killed if still running at the end."""
    made: list[GatewayProcess] = []
    yield made
    for gw in made:
        gw.cleanup()


async def test_a_second_gateway_on_the_same_directory_and_client_id_refuses_to_start(
    broker: Broker, tmp_path: Path, unique: str, processes: list[GatewayProcess]
) -> None:
    """Issue 11, problem 1: the second one used to seal the first one's open segment as if a
    crash had left it; the first then failed every rotation and acked nothing again."""
    first = GatewayProcess.subscribed_to(broker, tmp_path / "first", unique)
    second = GatewayProcess.subscribed_to(
        broker, tmp_path / "second", unique, data_dir=first.data_dir
    )
    processes.extend([first, second])
    first.start()
    await first.ready()
    await publish(broker.host, broker.port, list(fleet(unique, devices=10, per_device=5)))
    await eventually(
        lambda: len(read_lines(first.data_dir, include_open=True)) == 50, message="50 written"
    )
    (segment,) = first.data_dir.glob(f"{HOUR_GLOB}/*{OPEN_SUFFIX}")

    second.start()
    assert await second.exited() == 1
    assert f"data directory {first.data_dir} is in use" in second.log
    assert first.proc is not None
    assert f"pid {first.proc.pid}" in second.log
    assert "Traceback" not in second.log
    assert segment.exists(), "the running gateway's open segment was left alone"

    await publish(broker.host, broker.port, list(fleet(unique, devices=10, per_device=10))[50:])
    assert await first.terminate() == 0, first.log[-3000:]
    keys = {(r["device_id"], r["seq"]) for r in read_lines(first.data_dir)}
    assert len(keys) == 100, "the first gateway stored everything"


def test_the_lock_dies_with_its_process_however_it_dies(tmp_path: Path) -> None:
    """After SIGKILL nobody holds the lock: crash recovery on the next start needs nothing."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from gateway.sinks.claim import DataDirLock; "
         "DataDirLock.take(Path(sys.argv[1]), 'gw'); print('locked', flush=True); "
         "sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        assert lock_holder(tmp_path, "gw") == holder.pid
        assert lock_holder(tmp_path, "gw-w0") is None, "each client id has its own lock"
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert lock_holder(tmp_path, "gw") is None


def _run_once(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`gateway run` that is expected to give up at start; nobody listens at its broker."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run",
         "--broker", f"mqtt://127.0.0.1:{free_port()}", "--client-id", "gw-claim", *args],
        capture_output=True, text=True, timeout=20, cwd=tmp_path, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("blocked", ["data", "dead-letter"])
def test_a_data_directory_that_cannot_take_files_fails_the_start_naming_it(
    tmp_path: Path, blocked: str
) -> None:
    """Issue 11, problem 4: it used to report ready until the first message came."""
    data_dir = tmp_path / "data"
    where = data_dir if blocked == "data" else data_dir / DEAD_LETTER_DIR
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text("a file, not a directory\n", encoding="utf-8")
    out = _run_once(tmp_path, "--data-dir", str(data_dir), "--metrics-addr", "127.0.0.1:0")
    assert out.returncode == 1, out.stderr
    what = "data directory" if blocked == "data" else "dead-letter directory"
    assert f"cannot start: {what} {where} is not a directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_metrics_address_in_use_fails_the_start_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _run_once(tmp_path, "--data-dir", str(tmp_path / "data"),
                        "--metrics-addr", f"127.0.0.1:{port}")  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert f"cannot start: metrics address 127.0.0.1:{port} cannot be bound" in out.stderr
    assert "address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_read_only_data_directory_fails_the_start_naming_it() -> None:
    """Run as an unprivileged user (root writes anyway): `setpriv` drops to nobody when the
    tests run as root. Outside pytest's tmp tree, which only its owner may enter."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop privileges")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    top = Path(tempfile.mkdtemp(prefix="gateway-ro-"))
    try:
        top.chmod(0o755)
        data_dir = top / "data"
        data_dir.mkdir(mode=0o555)
        data_dir.chmod(0o555)  # whatever the umask
        out = subprocess.run(
            [*as_user, sys.executable, "-m", "gateway", "run", "--data-dir", str(data_dir),
             "--broker", f"mqtt://127.0.0.1:{free_port()}", "--metrics-addr", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=20, cwd=ROOT, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(top)
    assert out.returncode == 1, out.stderr
    assert f"cannot start: data directory {data_dir} is not writable: Permission denied" in (
        out.stderr
    )
