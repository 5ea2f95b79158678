"""The gateway as a user runs it: `python -m gateway run --config FILE` in a subprocess, its log
in a file, polled over HTTP. Tests use `GatewayProcess.subscribed_to(...)`; a benchmark writes a
config of its own (benchmarks/gateway_proc.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from gateway.ports import LOOPBACK, free_port
from harness.broker import Broker
from harness.launch import PLAIN, Launcher
from harness.poll import eventually, eventually_sync
from harness.scrape import Scrape, get_sync, scrape, scrape_sync, value

ROOT = Path(__file__).resolve().parents[1]
PRLIMIT = shutil.which("prlimit") or "/usr/bin/prlimit"


class GatewayProcess:
    """`python -m gateway run --config FILE` with its config, log and files in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        http_port: int,
        data_dir: Path,
        launcher: Launcher = PLAIN,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.data_dir = data_dir
        self.log_path = workdir / "gateway.log"
        self.config_path = workdir / "gateway.toml"
        self.url = f"http://{LOOPBACK}:{http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._launcher = launcher
        self.config_path.write_text(config, encoding="utf-8")

    @classmethod
    def subscribed_to(
        cls,
        broker: Broker,
        workdir: Path,
        prefix: str,
        *,
        data_dir: Path | None = None,
        protocol: str = "auto",
        qos: int = 1,
    ) -> GatewayProcess:
        """A gateway whose client id and topics are `prefix`'s own, reconnecting fast."""
        port = free_port()
        data_dir = data_dir or workdir / "data"
        config = (
            "shutdown_grace_s = 20\n"
            "[mqtt]\n"
            f'host = "{broker.host}"\n'
            f"port = {broker.port}\n"
            f'client_id = "gw-{prefix}"\n'
            f'protocol = "{protocol}"\n'
            "keepalive_s = 10\n"
            "reconnect_min_s = 0.1\n"
            "reconnect_max_s = 1.0\n"
            "[[mqtt.subscriptions]]\n"
            f'template = "{prefix}/{{site}}/{{device_id}}/telemetry"\n'
            f"qos = {qos}\n"
            "[files]\n"
            f"data_dir = {json.dumps(str(data_dir))}\n"
            "retry_min_s = 0.05\n"
            "retry_max_s = 0.5\n"
            "[http]\n"
            f'host = "{LOOPBACK}"\n'
            f"port = {port}\n"
        )
        return cls(workdir, config, http_port=port, data_dir=data_dir)

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *args: str, max_open_files: int | None = None, niceness: int = 0) -> None:
        """Start `gateway run`. `max_open_files` sets its RLIMIT_NOFILE (soft and hard, through
        `prlimit`); `niceness` lowers its CPU priority (a case that must starve it on purpose)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        cmd = [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path), *args]
        if max_open_files is not None:
            cmd = [PRLIMIT, f"--nofile={max_open_files}:{max_open_files}", "--", *cmd]
        with self.log_path.open("ab") as log:
            self.proc = self._launcher.spawn(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )
        if niceness:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, niceness)

    def configure(self, section: str, text: str) -> None:
        """Add lines to a `[section]` of the config file (before the next start); a section
        it does not have yet (e.g. `[[mqtt.subscriptions]]`, another one) is appended."""
        config = self.config_path.read_text(encoding="utf-8")
        header = f"[{section}]\n"
        if header in config and not section.startswith("["):
            config = config.replace(header, header + text, 1)
        else:
            config += header + text
        self.config_path.write_text(config, encoding="utf-8")

    @property
    def peak_rss_bytes(self) -> int:
        """The process's peak resident set (VmHWM) so far."""
        proc = self._alive()
        for line in Path(f"/proc/{proc.pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log.strip().splitlines()[-lines:])

    def _alive(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None, "not started"
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log[-3000:]}")
        return self.proc

    def _is_ready(self) -> bool:
        self._alive()
        try:
            status, _ = get_sync(f"{self.url}/readyz", timeout_s=2)
        except OSError:  # not listening yet
            return False
        return status == 200

    async def ready(self, timeout_s: float = 45, interval_s: float = 0.1) -> None:
        """Until /readyz answers 200 (connected and subscribed: our session exists); asked every
        `interval_s` (the resolution of a recovery time measured with it)."""
        await eventually(
            lambda: asyncio.to_thread(self._is_ready),
            timeout_s=timeout_s,
            interval_s=interval_s,
            message="/readyz 200",
        )

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """`ready` for a caller without an event loop; RuntimeError when it does not come."""
        try:
            eventually_sync(self._is_ready, timeout_s=timeout_s, message="/readyz 200")
        except AssertionError:
            raise RuntimeError(f"gateway not ready; see {self.log_path}") from None

    async def metric(self, name: str, **labels: str) -> float:
        self._alive()
        return value(await scrape(self.url), name, **labels)

    def try_scrape(self) -> Scrape | None:
        """Its /metrics; None until it answers."""
        try:
            return scrape_sync(self.metrics_url, timeout_s=2.0)
        except OSError:
            return None

    async def exited(self, timeout_s: float = 20) -> int:
        """The exit code of a gateway that stops by itself (e.g. refusing to start)."""
        assert self.proc is not None, "not started"
        return await _exit_code(self.proc, timeout_s, "the gateway exits by itself")

    async def pause(self, seconds: float) -> None:
        """SIGSTOP for `seconds`, then SIGCONT: a host too busy to run it for a while."""
        proc = self._alive()
        proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)  # the pause itself, not a wait for something
        finally:
            proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        proc = self._alive()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    async def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM, then the exit code once it has drained and stopped."""
        proc = self._alive()
        proc.send_signal(signal.SIGTERM)
        return await _exit_code(proc, timeout_s, "gateway exits after SIGTERM")

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM (a supervisor stops its workers; each drains and seals its files), SIGKILL
        only if it outlives `timeout_s`. None if it never started."""
        if self.proc is None:
            return None
        return self._launcher.stop(self.proc, timeout_s=timeout_s)

    def cleanup(self) -> None:
        """Stop it if it still runs."""
        if self.running:
            self.stop()


async def _exit_code(proc: subprocess.Popen[bytes], timeout_s: float, message: str) -> int:
    await eventually(
        lambda: proc.poll() is not None, timeout_s=timeout_s, interval_s=0.05, message=message
    )
    return proc.returncode
