"""The gateway as a user runs it: `python -m gateway run --config FILE` in a subprocess."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.broker import Broker, free_port
from tests.support.poll import eventually
from tests.support.scrape import get, scrape, value

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    """`python -m gateway run --config FILE`, its log in a file, polled over HTTP."""

    def __init__(
        self,
        broker: Broker,
        tmp_path: Path,
        prefix: str,
        data_dir: Path | None = None,
        protocol: str = "auto",
        qos: int = 1,
    ) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir or tmp_path / "data"
        self.log_path = tmp_path / "gateway.log"
        self.config_path = tmp_path / "gateway.toml"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path.write_text(
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
            f"data_dir = {json.dumps(str(self.data_dir))}\n"
            "retry_min_s = 0.05\n"
            "retry_max_s = 0.5\n"
            "[http]\n"
            'host = "127.0.0.1"\n'
            f"port = {port}\n",
            encoding="utf-8",
        )

    def start(self, *args: str, max_open_files: int | None = None) -> None:
        """Start `gateway run`; `max_open_files` sets its RLIMIT_NOFILE (soft and hard), as
        `prlimit --nofile=N:N` would."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        limit = None
        if max_open_files is not None:
            limit = functools.partial(
                resource.setrlimit, resource.RLIMIT_NOFILE, (max_open_files, max_open_files)
            )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                preexec_fn=limit,  # noqa: PLW1509 - setrlimit only, no locks taken
            )

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
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _alive(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None, "not started"
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log[-3000:]}")
        return self.proc

    async def ready(self, timeout_s: float = 45) -> None:
        """Until /readyz answers 200 (connected and subscribed: our session exists)."""

        async def is_ready() -> bool:
            self._alive()
            try:
                status, _ = await get(f"{self.url}/readyz")
            except OSError:  # not listening yet
                return False
            return status == 200

        await eventually(is_ready, timeout_s=timeout_s, interval_s=0.1, message="/readyz 200")

    async def metric(self, name: str, **labels: str) -> float:
        self._alive()
        return value(await scrape(self.url), name, **labels)

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

    def cleanup(self) -> None:
        """Stop it if it still runs: SIGTERM first, so that a supervisor stops its workers (a
        SIGKILLed one would leave them to stop on their own), SIGKILL only if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


async def _exit_code(proc: subprocess.Popen[bytes], timeout_s: float, message: str) -> int:
    await eventually(
        lambda: proc.poll() is not None, timeout_s=timeout_s, interval_s=0.05, message=message
    )
    return proc.returncode
