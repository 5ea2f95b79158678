"""Logs: human-readable by default, one JSON object per line with --log-format json."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from gateway.ports import free_port
from harness.poll import eventually_sync


def _run(tmp_path: Path, *flags: str, tz: str | None = None) -> tuple[int, list[str]]:
    log = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if tz is not None:
        env["TZ"] = tz
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


def test_text_logs_carry_the_time_zone(tmp_path: Path) -> None:
    """Local time with its UTC offset (RFC 3339). The POSIX zone `XST-5:30` is UTC+05:30 and
    needs no zone database."""
    code, lines = _run(tmp_path, tz="XST-5:30")
    assert code == 0
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+05:30"
    assert all(re.match(stamp + " ", line) for line in lines if line[:1].isdigit()), lines[:3]
    assert re.match(stamp + r" INFO ", lines[0]), lines[0]
