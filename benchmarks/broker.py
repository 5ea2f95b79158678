"""BenchBroker: a Mosquitto of the benchmark's own, tuned for backlogs, on a free port."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal

from benchmarks.procs import Children

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
HOST = "127.0.0.1"
# MQTT 5 sessions we prepare must outlive the gap until their consumer connects.
SESSION_EXPIRY_S = 86_400

# Why each line: the backlog must be kept whole (no queue limit, QoS 0 queued too), delivered
# with a wide in-flight window (a 3.1.1 client gets max_inflight_messages unacked), without
# Nagle delays (FACTS.md: 20-45 ms tails without set_tcp_nodelay), and without disk writes;
# $SYS every second, so a case can watch how many messages the broker holds.
CONFIG = """\
listener {port} {host}
user {user}
allow_anonymous true
persistence false
max_inflight_messages 1000
max_queued_messages 0
max_queued_bytes 0
queue_qos0_messages true
set_tcp_nodelay true
sys_interval 1
log_dest file {log}
log_type error
log_type warning
"""


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class BenchBroker:
    """One Mosquitto process; `with BenchBroker(...) as broker:` stops it on the way out."""

    def __init__(self, children: Children, workdir: Path) -> None:
        self._children = children
        self.workdir = workdir
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> BenchBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            CONFIG.format(
                port=self.port,
                host=HOST,
                # Started as root, Mosquitto would switch to user `mosquitto`, which cannot
                # write its log in our scratch directory.
                user=pwd.getpwuid(os.getuid()).pw_name,
                log=self.workdir / "mosquitto.log",
            ),
            encoding="utf-8",
        )
        self._proc = self._children.spawn([MOSQUITTO, "-c", conf])
        try:
            wait_for_port(self.port)
        except OSError:
            raise RuntimeError(f"mosquitto did not start on port {self.port}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._children.stop(self._proc, timeout_s=10)
            self._proc = None

    def watch_store_command(self) -> list[str]:
        """mosquitto_sub printing `<unix s> <messages the broker holds>` once a second."""
        return [
            MOSQUITTO_SUB,
            *("-h", HOST, "-p", str(self.port), "-t", "$SYS/broker/store/messages/count"),
            *("-F", "%U %p"),
        ]

    def create_session(
        self, client_id: str, topic_filter: str, qos: int, protocol: Literal["3.1.1", "5"]
    ) -> None:
        """Connect once with a persistent session, subscribe, leave: from now on the broker
        queues every matching message for `client_id` until it comes back."""
        args = [
            MOSQUITTO_SUB,
            *("-h", HOST, "-p", str(self.port)),
            *("-t", topic_filter, "-q", str(qos), "-i", client_id),
            "-c",  # no clean session
            "-E",  # exit once the SUBACK is in
        ]
        if protocol == "5":
            args += ["-V", "mqttv5", "-x", str(SESSION_EXPIRY_S)]
        proc = self._children.spawn(args, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._children.stop(proc)
            raise RuntimeError(f"could not create the session of {client_id}") from None
        if proc.returncode != 0:
            raise RuntimeError(f"mosquitto_sub -E for {client_id}: {err.decode(errors='replace')}")
