"""README's examples, run as written: the simulator + audit example against a real gateway and
broker, and the DuckDB query over what that gateway wrote.

Only what must differ on a test machine is changed, each change asserted to apply (so an edit
of the README that these substitutions no longer fit fails here): the broker's port (a broker of
this test's own), the metrics port (9108 may be taken), and the simulator's duration.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import duckdb

from gateway.manifest import read_header
from gateway.ports import free_port
from gateway.presets import PRESETS
from harness.broker import Broker
from harness.poll import eventually_sync
from harness.scrape import get_sync
from tests.support.reliability import quoted_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent  # the console scripts `gateway` and `gateway-sim`


def sh_block(containing: str) -> list[str]:
    """The lines of the ```sh block of README.md that contains `containing`."""
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    return block.splitlines()


def command(line: str) -> list[str]:
    """One line of the block as argv, its comment dropped, the console script of this venv."""
    argv = shlex.split(line, comments=True)
    return [str(BIN / argv[0]), *argv[1:]]


def substitute(argv: list[str], old: str, new: str) -> list[str]:
    assert old in argv, f"README's command no longer has {old!r}: {argv}"
    return [new if arg == old else arg for arg in argv]


def write_heredocs(lines: list[str], cwd: Path) -> list[str]:
    """Write each `cat > FILE <<'EOF'` ... `EOF` file; the remaining lines."""
    rest: list[str] = []
    it = iter(lines)
    for line in it:
        match = re.fullmatch(r"cat > (\S+) <<'EOF'", line)
        if not match:
            rest.append(line)
            continue
        body = []
        for inner in it:
            if inner == "EOF":
                break
            body.append(inner + "\n")
        (cwd / match[1]).write_text("".join(body), encoding="utf-8")
    return rest


def test_the_simulator_and_audit_example_is_ok_and_duckdb_reads_the_files(
    own_broker: Broker, tmp_path: Path
) -> None:
    """Issue 11, problem 6: run as documented, the audit said NOT OK (out_of_range faults
    stored by a gateway without a check_range step), naming no kind."""
    lines = write_heredocs(sh_block("gateway audit --manifest"), tmp_path)
    run, sim, audit_ = (
        command(next(line for line in lines if line.startswith(prefix)))
        for prefix in ("gateway run ", "gateway-sim ", "gateway audit ")
    )
    assert any(line.startswith("# then Ctrl-C the gateway") for line in lines)
    assert (tmp_path / "gateway.toml").is_file()
    metrics_port = free_port()
    run += ["--broker", own_broker.url, "--metrics-addr", f"127.0.0.1:{metrics_port}"]
    sim = substitute(sim, "mqtt://127.0.0.1:1883", own_broker.url)
    sim = substitute(sim, "60", "8")  # --duration
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    with (tmp_path / "gateway.log").open("wb") as log:
        gateway = subprocess.Popen(run, cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:

        def ready() -> bool:
            assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                status, _ = get_sync(f"http://127.0.0.1:{metrics_port}/readyz")
            except OSError:
                return False
            return status == 200

        eventually_sync(ready, timeout_s=30, message="the gateway is ready")
        subprocess.run(sim, cwd=tmp_path, env=env, check=True, timeout=120, capture_output=True)
        gateway.send_signal(signal.SIGINT)  # Ctrl-C
        assert gateway.wait(timeout=60) == 0, (tmp_path / "gateway.log").read_text()[-3000:]
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()

    header = read_header(tmp_path / "sent.jsonl")
    assert header.faults.get("out_of_range", 0) > 0, "the example exercises out_of_range"
    out = subprocess.run(audit_, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("OK: nothing valid missing")

    (query,) = re.findall(r"`(SELECT [^`]*read_json_auto[^`]*)`", README)
    lines_on_disk = sum(
        len(path.read_bytes().splitlines())
        for path in (tmp_path / "data").glob("date=*/**/*.jsonl")
    )
    cwd = Path.cwd()
    os.chdir(tmp_path)  # the query names ./data, as the README's commands do
    try:
        rows = duckdb.sql(query).fetchall()
    finally:
        os.chdir(cwd)
    assert len(rows) == lines_on_disk > 0


def test_the_worked_mapping_prints_what_your_devices_says(tmp_path: Path) -> None:
    """README, Your devices: the weather station mapping and `gateway parse`, run as written;
    the output is the one shown below the commands."""
    lines = write_heredocs(sh_block("cat > weather.toml"), tmp_path)
    (parse,) = [command(line) for line in lines if line.startswith("gateway parse ")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        parse, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    shown = re.search(r"```text\n(topic 'weather/.*?)```", README, flags=re.DOTALL)
    assert shown is not None
    assert done.stdout == shown[1]


def test_the_first_commands_of_your_devices_run() -> None:
    (parse,) = [line for line in sh_block("--format flat_json") if line.startswith("gateway parse")]
    done = subprocess.run(command(parse), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert '"device_id": "thermo-1"' in done.stdout


def test_the_preset_table_lists_every_preset() -> None:
    section = README.split("## Your devices", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| ", section, flags=re.MULTILINE)
    assert rows == list(PRESETS)


def test_the_reliability_table_is_the_one_make_faults_wrote() -> None:
    """README quotes benchmarks/RELIABILITY.md between its markers: never by hand."""
    report = ROOT / "benchmarks" / "RELIABILITY.md"
    assert quoted_table(ROOT / "README.md") == report.read_text(encoding="utf-8").strip()
    assert "| lost |" in report.read_text(encoding="utf-8")
