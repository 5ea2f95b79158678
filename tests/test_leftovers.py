"""The session-end check itself: a run whose tests leave a process running fails, and the
process is gone afterwards (tests/support/leftovers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.children import is_alive

ROOT = Path(__file__).resolve().parents[1]

LEAKY_TESTS = """
import subprocess
import sys


def test_leaves_a_child_running() -> None:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)  # child"])


def test_leaves_an_orphan_running() -> None:
    # sh exits at once; its background sleep is orphaned, and adopted by pytest.
    subprocess.run(["sh", "-c", "sleep 301 </dev/null >/dev/null 2>&1 &"], check=True)
"""


def test_a_run_that_leaves_processes_running_fails_and_kills_them(tmp_path: Path) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.support.leftovers", "--leftovers-timeout", "0.5",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 passed" in out.stdout
    assert "2 process(es) left running by the tests (now killed)" in out.stdout
    pids = [
        int(line.split()[1])
        for line in out.stdout.splitlines()
        if line.startswith("  pid ") and ("time.sleep(300)" in line or "sleep 301" in line)
    ]
    assert len(pids) == 2, out.stdout
    assert not any(is_alive(pid) for pid in pids)


def test_a_run_that_stops_what_it_started_passes(tmp_path: Path) -> None:
    (tmp_path / "test_tidy.py").write_text(
        "import subprocess, sys\n\n\ndef test_tidy() -> None:\n"
        "    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "    proc.kill()\n    proc.wait()\n",
        encoding="utf-8",
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.support.leftovers", "-c", str(tmp_path / "pytest.ini"),
         "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "left running" not in out.stdout
