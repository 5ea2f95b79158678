"""deploy/grafana: the dashboards are well-formed Grafana models whose every query is valid PromQL
and reads only metrics a running gateway exports.

The metric names are compared with what a real gateway, fed real readings through the session
broker, serves on /metrics: a renamed or removed metric breaks this test, not a dashboard in
production.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Gateway
from harness.broker import Broker
from harness.poll import eventually
from harness.scrape import scrape
from tests.support.dashboards import (
    DASHBOARDS,
    all_panels,
    exprs,
    label_values_selector,
    load,
    metric_names,
    substitute,
    variable_queries,
)
from tests.support.gateway import make_config, reading_payload, running, topic
from tests.support.publish import publish

PROVISIONING = DASHBOARDS.parent / "provisioning"
NAMES = ("gateway.json", "fleet.json")
PANEL_TYPES = {"row", "timeseries", "stat", "heatmap", "table", "gauge", "bargauge", "text"}


def variables_used(text: str) -> set[str]:
    return {a or b for a, b in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", text)}


def all_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every variable's series selector."""
    out = [(f"panel {title!r}", expr) for title, expr in exprs(dashboard)]
    for name, query in variable_queries(dashboard):
        selector = label_values_selector(query)
        if selector is not None:
            out.append((f"variable {name}", selector))
    return out


# --- the dashboard model ---------------------------------------------------------------------


def test_the_dashboard_directory_holds_exactly_the_known_dashboards() -> None:
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(NAMES)
    uids = [load(name)["uid"] for name in NAMES]
    assert len(set(uids)) == len(uids), "each dashboard has its own uid"


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_is_a_grafana_dashboard_model(name: str) -> None:
    d = load(name)
    assert isinstance(d["title"], str)
    assert d["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]), "Grafana uids: at most 40 chars"
    assert isinstance(d["schemaVersion"], int)
    assert d["schemaVersion"] >= 36
    assert isinstance(d["templating"]["list"], list)
    assert isinstance(d["panels"], list)
    assert d["panels"]
    ids = [p["id"] for p in all_panels(d)]
    assert len(set(ids)) == len(ids), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in all_panels(d):
        where = f"{name} panel {panel['id']} {panel.get('title')!r}"
        assert isinstance(panel["id"], int), where
        assert panel["type"] in PANEL_TYPES, where
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), where
        assert grid["w"] > 0, where
        assert grid["h"] > 0, where
        assert 0 <= grid["x"] < grid["x"] + grid["w"] <= 24, where
        cover = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cover & cells, f"{where} overlaps another panel"
        cells |= cover
        if panel["type"] == "row":
            continue
        assert panel["title"], where
        targets = panel["targets"]
        assert targets, where
        ref_ids = [t["refId"] for t in targets]
        assert len(set(ref_ids)) == len(ref_ids), where
        for target in targets:
            assert target["expr"].strip(), where
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where


@pytest.mark.parametrize("name", NAMES)
def test_templating_variables_are_defined_before_use(name: str) -> None:
    d = load(name)
    variables = d["templating"]["list"]
    defined: list[str] = []
    for variable in variables:
        assert variable["name"], variable
        assert variable["type"] in ("datasource", "query", "custom", "constant", "interval")
        if variable["type"] == "datasource":
            assert variable["query"] == "prometheus"
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            assert text.startswith("label_values("), text
            # A chained variable may only use variables defined before it.
            assert variables_used(text) <= set(defined), f"{variable['name']}: {text}"
        defined.append(variable["name"])
    assert defined[0] == "datasource"
    for panel in all_panels(d):
        for target in panel.get("targets", []):
            used = variables_used(target["expr"]) - {"__rate_interval", "__interval", "__range"}
            assert used <= set(defined), f"{panel['title']!r}: {target['expr']}"
        if "repeat" in panel:
            assert panel["repeat"] in defined
    if name == "fleet.json":
        assert {"site", "device"} <= set(defined)


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    (datasource,) = yaml.safe_load(
        (PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["isDefault"] is True
    (provider,) = yaml.safe_load(
        (PROVISIONING / "dashboards" / "telemetry-gateway.yml").read_text(encoding="utf-8")
    )["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


# --- the queries ---------------------------------------------------------------------------


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (Grafana variables filled in) as a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    rules = [
        {"record": f"dashboard:query_{n}", "expr": substitute(expr)}
        for n, (_, expr) in enumerate(query for name in NAMES for query in all_queries(load(name)))
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}), "utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_the_metric_name_extraction_understands_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y", le!="1"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("sum(rate(a_total[5m])) by (reason) / on(job) group_left(v) b") == {
        "a_total",
        "b",
    }
    assert metric_names("c offset 5m > 1e9 and d @ start()") == {"c", "d"}
    assert metric_names('count by (site) (count by (site, x) (e{site=~"$site"}))') == {"e"}
    assert label_values_selector('label_values(f{site=~"$site"}, device_id)') == (
        'f{site=~"$site"}'
    )


@pytest.mark.parametrize("name", NAMES)
async def test_every_metric_a_dashboard_reads_is_exported_by_a_running_gateway(
    name: str, broker: Broker, tmp_path: Path, unique: str
) -> None:
    # The fleet dashboard reads the opt-in sensor-value exporter: turn it on.
    config = make_config(broker, tmp_path, unique, sensor_values={"enabled": True})
    messages = [
        (topic(unique, f"dev-{d}", site=f"site-{d % 2}"), reading_payload(f"dev-{d}", seq))
        for seq in range(3)
        for d in range(4)
    ]
    gateway = Gateway(config)
    async with running(gateway):
        await publish(broker.host, broker.port, messages, qos=1)
        await eventually(
            lambda: gateway.metrics.sample("gateway_readings_written_total") == len(messages),
            message="all written",
        )
        samples = await scrape(gateway.http_url)
    exported = set(samples.samples)
    wanted: dict[str, set[str]] = {}
    for where, expr in all_queries(load(name)):
        names = metric_names(expr)
        assert names, f"{where}: reads no metric: {expr}"
        for metric in names:
            wanted.setdefault(metric, set()).add(where)
    missing = {metric: sorted(where) for metric, where in wanted.items() if metric not in exported}
    assert missing == {}, "metrics the dashboard reads but the gateway does not export"
    if name == "fleet.json":
        # Its variables and panels select by these labels.
        series = samples.samples.get("gateway_sensor_value", [])
        labels = {label for ls, _ in series for label in ls}
        assert {"site", "device_id", "metric"} <= labels
        values = {(ls["device_id"], ls["site"], ls["metric"]): v for ls, v in series}
        assert values[("dev-1", "site-1", "temperature")] == 22.0, "the last reading's value"
