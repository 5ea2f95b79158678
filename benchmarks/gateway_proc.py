"""GatewayProcess: one `python -m gateway run` with a config of the benchmark's own."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmarks import proc_stats
from benchmarks.broker import HOST, BenchBroker, free_port
from benchmarks.procs import Children
from benchmarks.scrape import Scrape, scrape

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


class GatewayProcess:
    """A gateway subprocess: its config, files and log in `workdir`, metrics on a free port."""

    def __init__(
        self, children: Children, broker: BenchBroker, setup: GatewaySetup, workdir: Path
    ) -> None:
        self._children = children
        self.setup = setup
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.http_port = free_port()
        self.config = workdir / "gateway.toml"
        self.log = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._workers: list[str] = []
        self.answered_all = False
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            CONFIG.format(
                host=HOST,
                port=broker.port,
                client_id=setup.client_id,
                protocol=setup.protocol,
                topic_filter=json.dumps(setup.topic_filter),  # a TOML basic string
                qos=setup.qos,
                data_dir=json.dumps(str(self.data_dir)),
                http_port=self.http_port,
            ),
            encoding="utf-8",
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/metrics"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, niceness: int = 0) -> None:
        """Spawn it; with `niceness`, at that lower CPU priority (the memory case starves it
        on purpose, so that the publishers outrun it)."""
        args = [sys.executable, "-m", "gateway", "run", "--config", str(self.config)]
        if self.setup.processes:
            args += ["--processes", str(self.setup.processes)]
        with self.log.open("wb") as out:
            self.proc = self._children.spawn(args, stdout=out, stderr=out, cwd=REPO)
        if niceness:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, niceness)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def try_scrape(self) -> Scrape | None:
        """The gateway's metrics; None until it answers. With --processes, the workers' own
        endpoints, summed over those that answer (cheaper for them than the supervisor's
        merged /metrics, which fetches and parses theirs at each scrape); `answered_all` says
        whether every worker did."""
        urls = self._worker_urls() if self.setup.processes else [self.metrics_url]
        total, answered = Scrape(), 0
        for url in urls:
            try:
                total += scrape(url)
            except OSError:
                continue
            answered += 1
        self.answered_all = answered == (self.setup.processes or 1)
        return total if answered else None

    def _worker_urls(self) -> list[str]:
        """The workers' /metrics found so far (each listens on a port of its own)."""
        if len(self._workers) < (self.setup.processes or 0):
            self._workers = [
                f"http://{HOST}:{port}/metrics"
                for pid in proc_stats.tree(self.pid)[1:]
                for port in proc_stats.listening_ports(pid)
            ]
        return self._workers

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until /readyz says connected, subscribed and writable; RuntimeError otherwise."""
        deadline = time.monotonic() + timeout_s
        url = f"http://{HOST}:{self.http_port}/readyz"
        while time.monotonic() < deadline and self.running:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway {self.setup.client_id} not ready; see {self.log}")

    def cpu_seconds(self) -> float:
        return proc_stats.tree_cpu_seconds(self.pid)

    def peak_rss_bytes(self) -> int:
        return proc_stats.tree_peak_rss_bytes(self.pid)

    def rss_bytes(self) -> int:
        return proc_stats.tree_rss_bytes(self.pid)

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """SIGTERM: the gateway drains, seals its files and exits (killed after `timeout_s`)."""
        if self.proc is None:
            return None
        return self._children.stop(self.proc, timeout_s=timeout_s)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])
