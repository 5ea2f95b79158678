"""deploy/systemd: the documented installation works at the documented paths, systemd itself
accepts the installed unit, its sandbox scores well, and it agrees with the gateway (its command
line parses, its stop timeout covers the drain)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.config import GatewayConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "gateway.service"
VENV_DIR = "/opt/telemetry-gateway"  # where deploy/README.md installs the gateway
INSTALLED_BINARY = f"{VENV_DIR}/bin/gateway"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def directives(text: str) -> dict[str, list[str]]:
    """Key -> every value it is given, in order (systemd allows repeats)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            out.setdefault(match[1], []).append(match[2])
    return out


UNIT_TEXT = UNIT.read_text(encoding="utf-8")
SETTINGS = directives(UNIT_TEXT)


def gateway_entry_point() -> str:
    """The `gateway` script of this environment: a real binary for ExecStart to point at."""
    found = Path(sys.executable).with_name("gateway")
    if not found.is_file():
        found = Path(shutil.which("gateway") or "")
    assert found.is_file(), "the gateway package is installed with its console script"
    return str(found)


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit as shipped, except ExecStart names the gateway binary that exists here.

    `systemd-analyze verify` fails when ExecStart's binary is missing, and this machine has the
    gateway in a virtualenv, not in /usr/local/bin. Only that path is swapped.
    """
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze not installed")
    probe = tmp_path / "probe" / "probe.service"
    probe.parent.mkdir()
    probe.write_text(f"[Service]\nExecStart={sys.executable} -V\n", encoding="utf-8")
    result = run_analyze("verify", str(probe))
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify does not work here: {result.stderr.strip()[:300]}")
    text, swaps = re.subn(
        rf"^ExecStart={re.escape(INSTALLED_BINARY)} ",
        f"ExecStart={gateway_entry_point()} ",
        UNIT_TEXT,
        flags=re.MULTILINE,
    )
    assert swaps == 1, f"ExecStart does not start with {INSTALLED_BINARY}"
    copy = tmp_path / "telemetry-gateway.service"
    copy.write_text(text, encoding="utf-8")
    return copy


def test_systemd_analyze_verify_accepts_the_unit(unit_copy: Path) -> None:
    result = run_analyze("verify", str(unit_copy))
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if "telemetry-gateway" in line]
    assert ours == [], "systemd warns about the unit"


def test_the_sandbox_exposure_score_is_ok(unit_copy: Path) -> None:
    """`systemd-analyze security` rates 0 (locked down) .. 10 (exposed); keep it at 2 or less."""
    result = run_analyze("security", "--offline=yes", "--threshold=20", str(unit_copy))
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert result.returncode == 0, summary


def test_exec_start_is_a_command_line_the_gateway_accepts() -> None:
    (exec_start,) = SETTINGS["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == INSTALLED_BINARY
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.config == Path("/etc/telemetry-gateway/gateway.toml")
    assert args.log_format == "json"


def test_stop_timeout_outlasts_the_drain_and_sigterm_starts_it() -> None:
    (timeout,) = SETTINGS["TimeoutStopSec"]
    assert SETTINGS["KillSignal"] == ["SIGTERM"]
    grace_s = GatewayConfig().shutdown_grace_s
    assert float(timeout.removesuffix("s")) >= grace_s + 10, "room to drain, seal and disconnect"


def test_systemctl_reload_sends_the_gateway_sighup() -> None:
    """SIGHUP reloads the config in place (tests/test_reload.py); it must reach the main pid."""
    (reload,) = SETTINGS["ExecReload"]
    assert shlex.split(reload) == ["/bin/kill", "-HUP", "$MAINPID"]


def test_restarts_on_failure_but_not_on_a_config_error() -> None:
    assert SETTINGS["Restart"] == ["on-failure"]
    assert SETTINGS["RestartPreventExitStatus"] == ["2"], "exit 2 = bad config (gateway.cli)"


def test_the_data_directory_is_the_state_directory_whatever_the_file_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The unit sets GATEWAY_FILES__DATA_DIR; the environment beats the TOML file."""
    assert SETTINGS["StateDirectory"] == ["telemetry-gateway"]
    assert SETTINGS["ProtectSystem"] == ["strict"]
    (env,) = [e for e in SETTINGS["Environment"] if e.startswith("GATEWAY_FILES__DATA_DIR=")]
    data_dir = env.split("=", 1)[1].replace("%S", "/var/lib")
    assert data_dir == "/var/lib/telemetry-gateway"
    assert SETTINGS["ReadWritePaths"] == ["%S/telemetry-gateway"]
    monkeypatch.setenv("GATEWAY_FILES__DATA_DIR", data_dir)
    config = load_config(DEPLOY / "gateway.example.toml")
    assert config.files.data_dir == Path(data_dir)


# Stands in for `pip install .` into the new virtualenv (no package index needed): the
# environment running the tests provides the packages, and `bin/gateway` is the console script
# pip would write.
PIP_INSTALL_STAND_IN = """
import sys
from pathlib import Path

venv, paths = Path(sys.argv[1]), sys.argv[2:]
(site_packages,) = venv.glob("lib/python*/site-packages")
(site_packages / "gateway-under-test.pth").write_text("\\n".join(paths) + "\\n")
script = venv / "bin" / "gateway"
script.write_text(
    f"#!{venv}/bin/python\\nimport sys\\nfrom gateway.cli import main\\nsys.exit(main())\\n"
)
script.chmod(0o755)
"""


def documented_install() -> list[list[str]]:
    """The commands of deploy/README.md's systemd section, as argv lists (comments dropped)."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## On a server: systemd") :]
    match = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert match, "the systemd section has its commands in a sh block"
    return [argv for line in match[1].splitlines() if (argv := shlex.split(line, comments=True))]


def in_private_mounts(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `script` (sh) in a mount namespace of its own, /opt and /etc overlaid by directories
    under tmp_path: it may install there as the instructions say, the machine is not touched."""
    lines = ["set -eu"]
    for target in ("opt", "etc"):
        upper, work = tmp_path / f"{target}-upper", tmp_path / f"{target}-work"
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        lines.append(
            f"mount -t overlay overlay -o lowerdir=/{target},upperdir={upper},workdir={work} "
            f"/{target}"
        )
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "--map-root-user")  # a user namespace, where we may mount
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [*unshare, "sh", "-c", "\n".join([*lines, script])],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, check=False,
    )  # fmt: skip


def test_the_documented_installation_works_at_the_documented_paths(tmp_path: Path) -> None:
    """Issue 11, problem 6: `pip install .` as root fails on Debian 12
    (externally-managed-environment). The instructions are run as written, except what needs
    a package index or a running systemd."""
    if SYSTEMD_ANALYZE is None or shutil.which("unshare") is None:
        pytest.skip("needs systemd-analyze and unshare")
    probe = in_private_mounts("true", tmp_path / "probe")
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace with overlays here: {probe.stderr.strip()}")

    stand_in = tmp_path / "pip_install_stand_in.py"
    stand_in.write_text(PIP_INSTALL_STAND_IN, encoding="utf-8")
    environment = [*site.getsitepackages(), str(ROOT)]
    commands, left_out = [], []
    for argv in documented_install():
        if argv[0] in ("apt-get", "systemctl", "journalctl"):
            left_out.append(argv[0])
        elif argv == [f"{VENV_DIR}/bin/pip", "install", "."]:
            left_out.append("pip install .")
            commands.append([sys.executable, str(stand_in), VENV_DIR, *environment])
        elif argv[:3] == ["python3", "-m", "venv"]:
            commands.append([sys.executable, *argv[1:]])  # the Python of the test environment
        else:
            commands.append(argv)
    assert left_out == ["apt-get", "pip install .", "systemctl", "journalctl"], left_out
    assert [f"{VENV_DIR}/bin/gateway", "check-config", "/etc/telemetry-gateway/gateway.toml"] in (
        commands
    )
    assert ["systemd-analyze", "verify", "/etc/systemd/system/telemetry-gateway.service"] in (
        commands
    )
    out = in_private_mounts("\n".join(map(shlex.join, commands)), tmp_path / "run")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert '"client_id": "telemetry-gateway"' in out.stdout, "check-config printed the config"
    assert "telemetry-gateway.service" not in out.stderr, "systemd has nothing to say about it"
