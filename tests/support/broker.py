"""A real Mosquitto process on a free loopback port, started from a config file we write."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


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

    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, Mosquitto switches to user `mosquitto`, which cannot write our
            # tmp dir: no persistence file, no log. Staying the current user is a no-op otherwise.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            f"max_inflight_messages {self.max_inflight}\n"
            f"max_queued_messages {self.max_queued}\n"
            "max_queued_bytes 0\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + self.extra_config,
            encoding="utf-8",
        )
        return conf

    def start(self) -> Broker:
        conf = self.write_config()
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_for_port(self.port)
        except OSError:
            self.proc.kill()
            err = self.proc.communicate()[1].decode(errors="replace")
            raise RuntimeError(f"mosquitto did not start on {self.port}: {err}") from None
        return self

    def stop(self) -> None:
        """Graceful stop: Mosquitto saves sessions and queued messages to its persistence file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)


def acl_broker(workdir: Path, readable: str) -> Broker:
    """Mosquitto (not started) whose ACL lets anonymous clients read only `readable` (and
    write anything): Mosquitto 2.0.11 still grants a SUBSCRIBE to any other filter, and then
    delivers nothing on it (FACTS.md)."""
    workdir.mkdir(parents=True, exist_ok=True)
    acl = workdir / "acl"
    acl.write_text(f"topic read {readable}\ntopic write #\n", encoding="utf-8")
    return Broker(workdir, extra_config=f"acl_file {acl}\n")
