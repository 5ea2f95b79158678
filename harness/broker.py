"""A real Mosquitto on a free loopback port, started from a config file we write.

Tests use the defaults (persistent, queues large enough to publish while the gateway is away);
a benchmark sets its own tuning (benchmarks/broker.py) and its own launcher.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from gateway.local_broker import mosquitto_config, mosquitto_path
from gateway.ports import free_port, wait_for_port
from harness.launch import PLAIN, Launcher

MOSQUITTO = mosquitto_path() or "mosquitto"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
HOST = "127.0.0.1"


@dataclass
class Broker:
    """One Mosquitto. Queues are deliberately large: tests publish while the gateway is away."""

    workdir: Path
    port: int = field(default_factory=free_port)
    max_inflight: int = 100
    max_queued: int = 200_000
    proc: subprocess.Popen[bytes] | None = None
    extra_config: str = ""
    anonymous: bool = True
    persistence: bool = True
    log_types: tuple[str, ...] = ("error", "warning", "notice")
    launcher: Launcher = PLAIN

    host: str = HOST

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            mosquitto_config(
                self.host,
                self.port,
                log=self.log_path,
                max_inflight=self.max_inflight,
                max_queued=self.max_queued,
                persistence_dir=self.workdir if self.persistence else None,
                anonymous=self.anonymous,
                log_types=self.log_types,
                extra=self.extra_config,
            ),
            encoding="utf-8",
        )
        return conf

    def start(self) -> Self:
        conf = self.write_config()
        err_path = self.workdir / "mosquitto.err"
        with err_path.open("wb") as err:
            self.proc = self.launcher.spawn([MOSQUITTO, "-c", conf], stderr=err)
        proc = self.proc
        try:
            wait_for_port(self.port, self.host, alive=lambda: proc.poll() is None)
        except OSError:
            self.launcher.stop(proc, timeout_s=0)
            err_text = err_path.read_text(encoding="utf-8", errors="replace")
            raise RuntimeError(f"mosquitto did not start on {self.port}: {err_text}") from None
        return self

    def stop(self) -> None:
        """Graceful stop: Mosquitto saves sessions and queued messages to its persistence file."""
        if self.proc is not None:
            self.launcher.stop(self.proc, timeout_s=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)


def acl_broker(workdir: Path, readable: str) -> Broker:
    """Mosquitto (not started) whose ACL lets anonymous clients read only `readable` (and
    write anything): Mosquitto 2.0.11 still grants a SUBSCRIBE to any other filter, and then
    delivers nothing on it."""
    workdir.mkdir(parents=True, exist_ok=True)
    acl = workdir / "acl"
    acl.write_text(f"topic read {readable}\ntopic write #\n", encoding="utf-8")
    return Broker(workdir, extra_config=f"acl_file {acl}\n")
