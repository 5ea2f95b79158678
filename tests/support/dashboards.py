"""Read the Grafana dashboards in deploy/: their queries, and the metric names in PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"

# Words PromQL reserves that look like identifiers (functions and aggregations are dropped
# by the "followed by (" rule, so only these are left).
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Values for Grafana's variables when a query is run or checked outside Grafana.
_VARIABLES = {
    "__rate_interval": "15s",
    "__interval": "5s",
    "__range": "5m",
}


def load(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every panel."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def variable_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(variable name, query) of each query variable."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield variable["name"], query["query"] if isinstance(query, dict) else query


def label_values_selector(query: str) -> str | None:
    """The series selector of `label_values(selector, label)`; None for `label_values(label)`."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*", query)
    if match:
        return match[1]
    assert re.fullmatch(r"\s*label_values\(\s*[A-Za-z_]\w*\s*\)\s*", query), query
    return None


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Grafana variables replaced: built-ins by durations, dashboard ones by `values` or `.*`."""
    chosen = {**_VARIABLES, **(values or {})}

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return chosen.get(name, ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads.

    Strings, label matchers, ranges and grouping clauses are removed first; what is left and
    is neither a function (followed by `(`), a keyword nor part of a number is a metric name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\$\{\w+(?::\w+)?\}|\$\w+", " ", text)
    # `sum by (le) (x)` -> `sum (x)`: the aggregation is then followed by `(` again.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent or unit of a number: 1e9, 5m
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match[0] in _KEYWORDS:
            continue
        names.add(match[0])
    return names
