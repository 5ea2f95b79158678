"""`gateway demo` as a user runs it: a subprocess, stopped with Ctrl-C (SIGINT), audit clean."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.poll import eventually_sync
from tests.support.scrape import get_sync, parse, value

ROOT = Path(__file__).resolve().parents[1]


class DemoProcess:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.data_dir = tmp_path / "demo-data"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--metrics-addr", "127.0.0.1:0",
             "--data-dir", str(self.data_dir), *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read_err, daemon=True)
        self._reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def metrics_url(self) -> str:
        found: list[str] = []

        def announced() -> bool:
            for line in self.err:
                match = re.search(r"metrics on (http://\S+/metrics)", line)
                if match:
                    found.append(match.group(1))
                    return True
            assert self.proc.poll() is None, "".join(self.err)
            return False

        eventually_sync(announced, timeout_s=60, message="demo announces its metrics URL")
        return found[0]

    def written(self, url: str) -> float:
        status, text = get_sync(url)
        return value(parse(text), "gateway_readings_written_total") if status == 200 else 0.0


@pytest.mark.parametrize(
    ("broker", "devices"), [("mosquitto", "200"), ("amqtt", "50")], ids=["mosquitto", "amqtt"]
)
def test_the_demo_runs_stops_on_ctrl_c_and_its_audit_is_clean(
    tmp_path: Path, broker: str, devices: str
) -> None:
    demo = DemoProcess(tmp_path, "--broker", broker, "--devices", devices, "--rate", "5")
    try:
        url = demo.metrics_url()
        eventually_sync(lambda: demo.written(url) >= 1000, timeout_s=60, message="data flows")
        demo.proc.send_signal(signal.SIGINT)
        out, _ = demo.proc.communicate(timeout=120)
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
    err = "".join(demo.err)
    assert demo.proc.returncode == 0, out + err
    assert "OK: nothing valid missing" in out
    assert (demo.data_dir / "manifest.ndjson").is_file()
    assert not list(demo.data_dir.glob("*.jsonl")), "nothing but data matches **/*.jsonl"
    assert list(demo.data_dir.glob("date=*/hour=*/demo-gateway-*.jsonl")), "sealed data files"
    assert not list(demo.data_dir.glob("**/*.open")), "everything sealed on a clean stop"
    assert list((demo.data_dir / "dead-letter").glob("**/*.jsonl")), "faults were dead-lettered"
