"""BenchBroker: the harness's Mosquitto, tuned for backlogs, plus the sessions a case prepares."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Literal

from benchmarks.procs import Children
from harness.broker import HOST, MOSQUITTO, MOSQUITTO_SUB, Broker

__all__ = ["HOST", "MOSQUITTO", "MOSQUITTO_SUB", "BenchBroker"]

# MQTT 5 sessions we prepare must outlive the gap until their consumer connects.
SESSION_EXPIRY_S = 86_400

# Why: the backlog must be kept whole (no queue limit, QoS 0 queued too), delivered with a wide
# in-flight window (a 3.1.1 client gets max_inflight_messages unacked), without disk writes;
# $SYS every second, so a case can watch how many messages the broker holds.
TUNING = "queue_qos0_messages true\nsys_interval 1\n"


class BenchBroker(Broker):
    """One Mosquitto process; `with BenchBroker(...) as broker:` stops it on the way out."""

    def __init__(self, children: Children, workdir: Path) -> None:
        super().__init__(
            workdir,
            max_inflight=1000,
            max_queued=0,
            persistence=False,
            log_types=("error", "warning"),
            extra_config=TUNING,
            launcher=children,
        )
        self._children = children

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
