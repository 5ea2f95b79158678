"""The real Prometheus scrapes a real gateway fed through the real broker, with our alerts loaded.

Prometheus runs from deploy/prometheus/prometheus.yml with only what must differ here
rewritten: 1 s intervals, the gateway's loopback port as the target, the alerts file by its
path. Then: the target is up, the write rate shows readings flowing, every alert rule loads
and evaluates without error and none fires on a healthy gateway, and every query of both
dashboards answers.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Gateway
from gateway.ports import free_port
from harness.broker import Broker
from harness.poll import eventually
from harness.scrape import get
from tests.support.dashboards import exprs, load, substitute
from tests.support.gateway import fleet, make_config, running
from tests.support.publish import publish

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
PROMETHEUS = shutil.which("prometheus")
JOB = "telemetry-gateway"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian: apt-get install prometheus)"
)


def scrape_config(gateway_port: int) -> dict[str, Any]:
    """The shipped config, pointed at this gateway, scraping and evaluating every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{gateway_port}"]}]
    config["scrape_configs"] = [job]
    return config


class Prometheus:
    """One prometheus process with its own storage, on a free loopback port."""

    def __init__(self, workdir: Path, gateway_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(scrape_config(gateway_port)), encoding="utf-8")
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert PROMETHEUS is not None
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-2000:]

    async def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = await get(f"{self.url}/api/v1/{path}{query}")
        assert status == 200, f"{path} {params}: {status} {body[:500]}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return data["result"]

    async def ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"prometheus exited: {self.logs()}"
        try:
            status, _ = await get(f"{self.url}/-/ready")
        except urllib.error.URLError:
            return False  # not listening yet
        return status == 200


@contextlib.contextmanager
def prometheus_for(workdir: Path, gateway_port: int) -> Iterator[Prometheus]:
    prometheus = Prometheus(workdir, gateway_port)
    prometheus.start()
    try:
        yield prometheus
    finally:
        prometheus.stop()


def alert_names() -> set[str]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    return {rule["alert"] for group in groups["groups"] for rule in group["rules"]}


async def value_of(prometheus: Prometheus, promql: str) -> float:
    """The single sample's value, or 0 when the result is empty."""
    result = await prometheus.query(promql)
    return float(result[0]["value"][1]) if result else 0.0


async def test_prometheus_scrapes_the_gateway_and_evaluates_every_alert(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    started = time.monotonic()
    # The sensor-value exporter on, so the fleet dashboard's queries have data too.
    gateway = Gateway(make_config(broker, tmp_path, unique, sensor_values={"enabled": True}))
    async with running(gateway):
        gateway_port = int(gateway.http_url.rsplit(":", 1)[1])
        with prometheus_for(tmp_path / "prometheus", gateway_port) as prometheus:
            await eventually(prometheus.ready, timeout_s=20, message="prometheus ready")
            # Scraped once before any reading, so the rate below sees the counter move.
            await eventually(
                lambda: _is(prometheus, f'up{{job="{JOB}"}}', 1.0),
                timeout_s=15,
                message="gateway target up",
            )
            messages = list(fleet(unique, devices=20, per_device=10))
            await publish(broker.host, broker.port, messages, qos=1)
            await eventually(
                lambda: gateway.metrics.sample("gateway_readings_written_total") == len(messages),
                timeout_s=15,
                message="all written",
            )
            rate = "rate(gateway_readings_written_total[15s])"
            await eventually(
                lambda: _above(prometheus, rate, 0.0), timeout_s=15, message=f"{rate} > 0"
            )
            assert await value_of(prometheus, "gateway_readings_written_total") == len(messages)

            # Every rule of alerts.yml is loaded and has evaluated cleanly against real series.
            await eventually(
                lambda: _rules_evaluated(prometheus), timeout_s=15, message="rules evaluated"
            )
            (group,) = (await prometheus.api("rules"))["groups"]
            assert group["name"] == "telemetry-gateway"
            assert {rule["name"] for rule in group["rules"]} == alert_names()
            for rule in group["rules"]:
                assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
            alerts = (await prometheus.api("alerts"))["alerts"]
            firing = [a["labels"]["alertname"] for a in alerts if a["state"] == "firing"]
            assert firing == [], "a healthy gateway fires no alert"

            # Every query of both dashboards runs and finds series ($metric as Grafana's
            # repeat would fill it in; other variables at "All").
            for name in ("gateway.json", "fleet.json"):
                for title, expr in exprs(load(name)):
                    promql = substitute(expr, {"metric": "temperature"})
                    if promql.rstrip().endswith("> 0"):
                        continue  # "only when non-zero" panels: empty on a healthy gateway
                    result = await prometheus.query(promql)
                    assert result, f"{name} panel {title!r}: no series for {promql}"
    assert time.monotonic() - started < 60


async def _is(prometheus: Prometheus, promql: str, expected: float) -> bool:
    result = await prometheus.query(promql)
    return bool(result) and float(result[0]["value"][1]) == expected


async def _above(prometheus: Prometheus, promql: str, floor: float) -> bool:
    return await value_of(prometheus, promql) > floor


async def _rules_evaluated(prometheus: Prometheus) -> bool:
    groups = (await prometheus.api("rules"))["groups"]
    return bool(groups) and all(
        rule["health"] != "unknown" for group in groups for rule in group["rules"]
    )
