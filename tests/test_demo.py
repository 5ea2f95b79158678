"""`gateway demo` as a user runs it: a subprocess (or `make demo` on a terminal), stopped with
Ctrl-C or SIGTERM, its audit clean; and what must not happen beside it or after it."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
from pathlib import Path
from typing import IO

import pytest

from gateway.audit import audit
from gateway.demo_terminal import StatusLine, status_text
from gateway.logs import setup_logging
from gateway.metrics import parse_exposition
from gateway.ports import free_port
from gateway.top.scrape import Scrape
from harness.poll import eventually_sync
from harness.scrape import scrape_sync, value
from tests.support.terminal import Terminal

ROOT = Path(__file__).resolve().parents[1]
# Packages only the tests and the linters use (pyproject's `dev` extra, by import name).
DEV_ONLY = ("pytest", "hypothesis", "duckdb", "ruff", "mypy", "yaml", "check_jsonschema")


class DemoProcess:
    def __init__(
        self,
        tmp_path: Path,
        *args: str,
        data_dir: Path | None = None,
        metrics_addr: str = "127.0.0.1:0",
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir or tmp_path / "demo-data"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--metrics-addr", metrics_addr,
             "--data-dir", str(self.data_dir), *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=_collect, args=(pipe, lines), daemon=True)
            for pipe, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def announced(self, pattern: str) -> re.Match[str]:
        """The first stderr line matching `pattern`, waiting for it (the demo must not exit)."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in self.err:
                match = re.search(pattern, line)
                if match:
                    found.append(match)
                    return True
            assert self.proc.poll() is None, self.stderr
            return False

        eventually_sync(seen, timeout_s=60, message=f"demo prints {pattern!r}")
        return found[0]

    def metrics_url(self) -> str:
        return self.announced(r"metrics on (http://\S+/metrics)").group(1)

    def broker_port(self) -> int:
        return int(self.announced(r"demo: \w+ on 127\.0\.0\.1:(\d+),").group(1))

    def written(self, url: str) -> float:
        try:
            return value(scrape_sync(url), "gateway_readings_written_total")
        except urllib.error.HTTPError:  # up, but not serving metrics yet
            return 0.0

    def finish(self, timeout_s: float = 120) -> str:
        """Its stdout once it has exited by itself (or after a signal sent before)."""
        self.proc.wait(timeout=timeout_s)
        for reader in self._readers:
            reader.join(timeout=10)
        return "".join(self.out)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _collect(pipe: IO[str] | None, lines: list[str]) -> None:
    """Each line as it comes (the tests poll `lines` while the demo runs)."""
    assert pipe is not None
    for line in pipe:
        lines.append(line)


def stopped_ok(demo: DemoProcess, signum: int) -> str:
    """Send `signum`; its stdout, once it has exited 0 after an OK audit."""
    demo.proc.send_signal(signum)
    out = demo.finish()
    assert demo.proc.returncode == 0, out + demo.stderr
    assert "OK: nothing valid missing" in out
    return out


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("broker", "devices"), [("mosquitto", "200"), ("amqtt", "50")], ids=["mosquitto", "amqtt"]
)
def test_the_demo_runs_stops_on_ctrl_c_and_its_audit_is_clean(
    tmp_path: Path, broker: str, devices: str
) -> None:
    demo = DemoProcess(tmp_path, "--broker", broker, "--devices", devices, "--rate", "5")
    try:
        url = demo.metrics_url()
        port = demo.broker_port()
        eventually_sync(lambda: demo.written(url) >= 1000, timeout_s=60, message="data flows")
        stopped_ok(demo, signal.SIGINT)
    finally:
        demo.cleanup()
    assert re.search(r"unacked +\d+ \| depth +\d+", demo.stderr), "status lines without a tty"
    assert (demo.data_dir / "manifest.ndjson").is_file()
    assert not list(demo.data_dir.glob("*.jsonl")), "nothing but data matches **/*.jsonl"
    assert list(demo.data_dir.glob("date=*/hour=*/demo-gateway-*.jsonl")), "sealed data files"
    assert not list(demo.data_dir.glob("**/*.open")), "everything sealed on a clean stop"
    assert list((demo.data_dir / "dead-letter").glob("**/*.jsonl")), "faults were dead-lettered"
    assert not _listening(port), "the broker stopped with the demo"


def test_make_demo_exits_0_after_ctrl_c_on_a_terminal_and_an_ok_audit(tmp_path: Path) -> None:
    """Issue 11, problem 5: Ctrl-C reached make too, which then died of it: exit 130."""
    stamp = tmp_path / "installed"  # `make demo` without installing: this venv is the one
    stamp.touch()
    args = f"--metrics-addr 127.0.0.1:0 --data-dir {tmp_path / 'demo-data'} --devices 20"
    terminal = Terminal(
        ["make", "-s", "-C", str(ROOT), "demo", f"VENV={Path(sys.executable).parent.parent}",
         f"DEMO_STAMP={stamp}", f"DEMO_ARGS={args}"],
        cwd=tmp_path,
    )  # fmt: skip
    try:
        terminal.read_until(lambda text: text.count("written") >= 3)
        terminal.ctrl_c()
        code = terminal.wait()
    finally:
        terminal.close()
    assert code == 0, terminal.text[-3000:]
    assert "OK: nothing valid missing" in terminal.text
    assert "Interrupt" not in terminal.text, "make was not interrupted"


def test_a_second_demo_refuses_to_start_beside_the_first_and_sigterm_stops_it_all(
    tmp_path: Path,
) -> None:
    """Issue 11, problems 1, 2 and 5: a second demo used to take the first one's files (and
    hung when the metrics port was taken); SIGTERM left the broker running."""
    metrics_addr = f"127.0.0.1:{free_port()}"
    first = DemoProcess(tmp_path, "--devices", "20", "--rate", "5", metrics_addr=metrics_addr)
    try:
        url = first.metrics_url()
        port = first.broker_port()
        eventually_sync(lambda: first.written(url) >= 100, timeout_s=60, message="data flows")

        same_dir = DemoProcess(tmp_path, data_dir=first.data_dir, metrics_addr="127.0.0.1:0")
        same_dir.finish(timeout_s=20)
        assert same_dir.proc.returncode == 1
        assert (
            f"demo: cannot start: data directory {first.data_dir} is in use by another demo "
            f"(pid {first.proc.pid}" in same_dir.stderr
        )
        assert list(first.data_dir.glob("date=*")), "the first demo's files are still there"

        same_port = DemoProcess(tmp_path, data_dir=tmp_path / "other", metrics_addr=metrics_addr)
        same_port.finish(timeout_s=20)
        assert same_port.proc.returncode == 1
        assert f"demo: cannot start: metrics address {metrics_addr} cannot be bound" in (
            same_port.stderr
        )
        assert "Traceback" not in same_dir.stderr + same_port.stderr

        stopped_ok(first, signal.SIGTERM)
    finally:
        first.cleanup()
    assert not _listening(port), "its broker stopped with it"


def test_a_killed_demo_takes_its_broker_with_it(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path, "--devices", "5")
    try:
        port = demo.broker_port()
        assert _listening(port)
        demo.proc.kill()
        demo.finish()
    finally:
        demo.cleanup()
    eventually_sync(lambda: not _listening(port), timeout_s=20, message="the broker stops too")


def test_each_run_starts_from_an_empty_data_directory(tmp_path: Path) -> None:
    """Issue 11, problem 5: re-running over an old demo-data counted the old readings as
    "unexpected" (or as duplicates)."""
    longer = DemoProcess(tmp_path, "--devices", "10", "--rate", "5", "--duration", "4")
    longer.finish()
    assert longer.proc.returncode == 0, longer.stderr
    shorter = DemoProcess(tmp_path, "--devices", "10", "--rate", "5", "--duration", "1")
    out = shorter.finish()
    assert shorter.proc.returncode == 0, out + shorter.stderr
    assert f"removed the previous run's files from {shorter.data_dir}" in shorter.stderr
    report = audit(shorter.data_dir / "manifest.ndjson", shorter.data_dir)
    assert report.ok
    assert (report.total.unexpected, report.total.duplicated) == (0, 0)


def test_the_demo_needs_none_of_the_test_tooling(tmp_path: Path) -> None:
    """`make demo` installs the `demo` extra only: the demo, its fleet and its broker must run
    with every dev-only package unimportable (a sitecustomize on PYTHONPATH hides them from
    every Python process the demo starts)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n\n\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {DEV_ONLY!r}:\n"
        "            raise ImportError(f'{name} is a dev-only package')\n\n\n"
        "sys.meta_path.insert(0, Hide())\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{ROOT}"}
    demo = DemoProcess(tmp_path, "--devices", "10", "--duration", "2", env=env)
    out = demo.finish()
    assert demo.proc.returncode == 0, out + demo.stderr
    assert "OK: nothing valid missing" in out


def test_make_demo_installs_the_demo_extra_only(tmp_path: Path) -> None:
    """Issue 11, problem 5: it installed pytest, hypothesis, duckdb, ruff, mypy, ... (~165 MB)."""
    venv = tmp_path / "venv"
    dry = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "demo", f"VENV={venv}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    installs = [line for line in dry.stdout.splitlines() if "pip install" in line]
    assert any(".[demo]" in line for line in installs), dry.stdout
    assert not any("dev" in line for line in installs), dry.stdout
    test = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "test", f"VENV={venv}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert ".[dev,demo]" in test.stdout


EXPOSITION = """\
# TYPE gateway_messages_received_total counter
gateway_messages_received_total 5000
# TYPE gateway_readings_written_total counter
gateway_readings_written_total 3990
# TYPE gateway_readings_rejected_total counter
gateway_readings_rejected_total{reason="invalid_json"} 7
gateway_readings_rejected_total{reason="out_of_range"} 3
# TYPE gateway_unacked_messages gauge
gateway_unacked_messages 1000
# TYPE gateway_channel_depth gauge
gateway_channel_depth{channel="decoded"} 40
gateway_channel_depth{channel="store"} 2
gateway_channel_depth{channel="rejects"} 0
"""


def test_the_live_line_shows_what_metrics_says() -> None:
    """Issue 11, problem 5: unacked was always 0 (a gauge read through a library internal
    that does not hold a callback gauge's value) while /metrics said 1000."""
    cur = Scrape(10.0, parse_exposition(EXPOSITION))
    prev = Scrape(9.0, parse_exposition(EXPOSITION.replace(" 5000", " 4000")))
    line = status_text(cur, prev)
    assert re.search(r"in +1000 msg/s", line)
    assert re.search(r"written +3990", line)
    assert re.search(r"dead-lettered +10", line)
    assert re.search(r"unacked +1000", line)
    assert re.search(r"depth +42", line)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_goes_above_the_status_line_not_onto_it() -> None:
    """Issue 11, problem 5: warnings were printed onto the end of the live line."""
    out = _Tty()
    status = StatusLine(out)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("WARNING", "text", stream=status)
        status.show("in 5 msg/s | unacked 3")
        logging.getLogger("gateway.test").warning("broker lost; retrying")
        status.say("demo: stopping the fleet …")
    finally:
        root.handlers[:], root.level = handlers, level
    clear = "\r\x1b[K"
    lines = out.getvalue().split("\n")
    assert lines[0].startswith(f"{clear}in 5 msg/s | unacked 3{clear}")
    assert lines[0].endswith("WARNING gateway.test: broker lost; retrying")
    assert lines[1] == f"in 5 msg/s | unacked 3{clear}demo: stopping the fleet …"
    assert lines[2] == "in 5 msg/s | unacked 3", "the status line is drawn again below"
