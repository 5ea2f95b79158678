"""Logs: human-readable by default, one JSON object per line with --log-format json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.broker import free_port
from tests.support.poll import eventually_sync


def _run(tmp_path: Path, *flags: str) -> tuple[int, list[str]]:
    log = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run",
             "--broker", f"mqtt://127.0.0.1:{free_port()}",  # nobody listens: retries are logged
             "--data-dir", str(tmp_path / "data"), "--metrics-addr", "127.0.0.1:0", *flags],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            eventually_sync(lambda: "retrying" in log.read_text(), timeout_s=30)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    return code, log.read_text().splitlines()


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    code, lines = _run(tmp_path, "--log-format", "json")
    assert code == 0
    entries = [json.loads(line) for line in lines]
    assert {"ts", "level", "logger", "message"} <= set(entries[0])
    assert any(e["level"] == "WARNING" and "retrying" in e["message"] for e in entries)
    assert any("stopped cleanly" in e["message"] for e in entries)


def test_text_logs_are_for_people(tmp_path: Path) -> None:
    code, lines = _run(tmp_path)
    assert code == 0
    assert any(" WARNING " in line and "retrying" in line for line in lines)
    assert not lines[0].startswith("{")
