"""BenchGateway: the harness's gateway process, with a config of the benchmark's own."""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmarks import proc_stats
from benchmarks.broker import HOST, BenchBroker
from benchmarks.procs import Children
from gateway.ports import free_port
from harness.gateway import GatewayProcess
from harness.scrape import Scrape, merge, scrape_sync

REPO = Path(__file__).resolve().parent.parent

# The default steps (none) plus one check, so every reading goes through a stage.
CONFIG = """\
shutdown_grace_s = 60.0

[mqtt]
host = "{host}"
port = {port}
client_id = "{client_id}"
protocol = "{protocol}"
receive_maximum = 1000

[[mqtt.subscriptions]]
filter = {topic_filter}
qos = {qos}

[files]
data_dir = {data_dir}
fsync = "always"

# Ingest is measured here; the audit reads the JSON Lines segments (benchmarks/compaction.py
# measures compaction on its own).
[compaction]
enabled = false

[[steps]]
kind = "check_range"
metric = "temperature"
min = -60.0
max = 150.0

[http]
host = "{host}"
port = {http_port}

[logging]
level = "WARNING"
"""


@dataclass(frozen=True)
class GatewaySetup:
    """What differs between the gateways a case runs."""

    client_id: str
    qos: int = 1
    protocol: Literal["3.1.1", "5"] = "5"
    topic_filter: str = "sensors/#"
    processes: int | None = None  # `gateway run --processes N`, where the gateway has it

    @property
    def label(self) -> str:
        text = f"gateway {self.protocol}"
        return text + f" --processes {self.processes}" if self.processes else text


@functools.cache
def supports_processes() -> bool:
    """Whether this gateway's `run` has --processes (being added alongside these benchmarks)."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    ).stdout
    return "--processes" in out


class BenchGateway(GatewayProcess):
    """The harness's gateway process with this benchmark's config; with --processes, its
    workers' metrics summed, and the CPU and memory of its whole process tree."""

    def __init__(
        self, children: Children, broker: BenchBroker, setup: GatewaySetup, workdir: Path
    ) -> None:
        http_port = free_port()
        data_dir = workdir / "data"
        config = CONFIG.format(
            host=HOST,
            port=broker.port,
            client_id=setup.client_id,
            protocol=setup.protocol,
            topic_filter=json.dumps(setup.topic_filter),  # a TOML basic string
            qos=setup.qos,
            data_dir=json.dumps(str(data_dir)),
            http_port=http_port,
        )
        super().__init__(workdir, config, http_port=http_port, data_dir=data_dir, launcher=children)
        self.setup = setup
        self._workers: list[str] = []
        self.answered_all = False

    def start(self, *args: str, max_open_files: int | None = None, niceness: int = 0) -> None:
        if self.setup.processes:
            args = (*args, "--processes", str(self.setup.processes))
        super().start(*args, max_open_files=max_open_files, niceness=niceness)

    def try_scrape(self) -> Scrape | None:
        """The gateway's metrics; None until it answers. With --processes, the workers' own
        endpoints, summed over those that answer (cheaper for them than the supervisor's
        merged /metrics, which fetches and parses theirs at each scrape); `answered_all` says
        whether every worker did."""
        if not self.setup.processes:
            one = super().try_scrape()
            self.answered_all = one is not None
            return one
        answered = []
        for url in self._worker_urls():
            with contextlib.suppress(OSError):
                answered.append(scrape_sync(url, timeout_s=2.0))
        self.answered_all = len(answered) == self.setup.processes
        return merge(answered) if answered else None

    def _worker_urls(self) -> list[str]:
        """The workers' /metrics found so far (each listens on a port of its own)."""
        if len(self._workers) < (self.setup.processes or 0):
            self._workers = [
                f"http://{HOST}:{port}/metrics"
                for pid in proc_stats.tree(self.pid)[1:]
                for port in proc_stats.listening_ports(pid)
            ]
        return self._workers

    def cpu_seconds(self) -> float:
        return proc_stats.tree_cpu_seconds(self.pid)

    def tree_peak_rss_bytes(self) -> int:
        return proc_stats.tree_peak_rss_bytes(self.pid)

    def rss_bytes(self) -> int:
        return proc_stats.tree_rss_bytes(self.pid)

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """SIGTERM: the gateway drains, seals its files and exits (killed after `timeout_s`)."""
        return super().stop(timeout_s)
