"""A broker on this machine for the demo (and the test and benchmark harness): where Mosquitto
and amqtt are installed, and the config files that start them on one loopback port.

Starting them is the caller's: the demo ties them to its own life, the harness to a test's.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path


def mosquitto_path() -> str | None:
    """The mosquitto binary: on PATH, or where Debian puts it (/usr/sbin, often not on PATH)."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def amqtt_path() -> str:
    """amqtt's broker command: on PATH, or beside this Python (a venv not activated)."""
    return shutil.which("amqtt") or str(Path(sys.executable).with_name("amqtt"))


def mosquitto_config(
    host: str,
    port: int,
    *,
    log: Path,
    max_inflight: int,
    max_queued: int,
    persistence_dir: Path | None = None,
    anonymous: bool = True,
    log_types: Iterable[str] = (),
    extra: str = "",
) -> str:
    """mosquitto.conf for one listener. `max_inflight`, `max_queued`: what a 3.1.1 client gets
    unacked, and what an offline session keeps (STYLE §5: set them deliberately)."""
    persistence = (
        f"persistence true\npersistence_location {persistence_dir}/\n"
        if persistence_dir is not None
        else "persistence false\n"
    )
    return (
        f"listener {port} {host}\n"
        # Started as root, Mosquitto switches to user `mosquitto`, which cannot write a caller's
        # directory (log, persistence) and clears the parent-death signal. Staying the current
        # user is a no-op otherwise.
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        f"allow_anonymous {'true' if anonymous else 'false'}\n"
        f"{persistence}"
        f"max_inflight_messages {max_inflight}\n"
        f"max_queued_messages {max_queued}\n"
        "max_queued_bytes 0\n"
        # Without it, Nagle on the broker's socket gives QoS 0 tails of 20-45 ms.
        "set_tcp_nodelay true\n"
        f"log_dest file {log}\n" + "".join(f"log_type {kind}\n" for kind in log_types) + extra
    )


def amqtt_config(host: str, port: int) -> str:
    """amqtt.yaml: one TCP listener, anonymous clients allowed (amqtt speaks MQTT 3.1.1 only)."""
    return (
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: {host}:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )
