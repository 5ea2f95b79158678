"""Report: sections of results as a text table, Markdown and JSON; targets as PASS/MISS."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Target:
    """A goal printed beside the results; passed is None when it was not measured."""

    goal: str
    measured: str
    passed: bool | None

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]

    def as_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "measured": self.measured, "verdict": self.verdict}


@dataclass
class Section:
    """One case's results: a table for people, notes, targets, and every figure for machines."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    failed: bool = False  # a run lost data or did not finish


# --- cell formats --------------------------------------------------------------------------


def num(value: float, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}×"


def mb(value_bytes: float) -> str:
    return "-" if not value_bytes or math.isnan(value_bytes) else f"{value_bytes / 2**20:,.1f}"


def ms(value_s: float) -> str:
    if math.isnan(value_s):
        return "-"
    return "> 60 s" if math.isinf(value_s) else f"{value_s * 1000:,.1f}"


# --- rendering ----------------------------------------------------------------------------


def _widths(columns: list[str], rows: list[list[str]]) -> list[int]:
    return [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]


def text_table(columns: list[str], rows: list[list[str]]) -> str:
    widths = _widths(columns, rows)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(columns), "  ".join("-" * w for w in widths), *map(line, rows)])


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def all_targets(sections: list[Section]) -> list[Target]:
    return [t for s in sections for t in s.targets]


def render_text(sections: list[Section]) -> str:
    parts = []
    for s in sections:
        parts += ["", f"== {s.title} ==", text_table(s.columns, s.rows)]
        parts += [f"  * {note}" for note in s.notes]
    targets = all_targets(sections)
    if targets:
        rows = [[t.goal, t.measured, t.verdict] for t in targets]
        parts += ["", "== targets ==", text_table(["target", "measured", ""], rows)]
    return "\n".join(parts).lstrip("\n")


def render_markdown(sections: list[Section], meta: dict[str, Any]) -> str:
    host = meta["host"]
    lines = [
        "# Benchmark results",
        "",
        f"`{meta['command']}` — {meta['plan']['name']} plan, {meta['started_at']}, "
        f"{meta['duration_s']:.0f} s.",
        f"Machine: {host['cpus']} CPUs ({host['cpu_model']}), {host['memory_gb']:.0f} GB, "
        f"{host['kernel']}; Python {meta['versions']['python']}, "
        f"Mosquitto {meta['versions']['mosquitto']}, paho-mqtt {meta['versions']['paho-mqtt']}, "
        f"gateway {meta['versions']['gateway']}. Everything on 127.0.0.1, one machine: the "
        "broker, the load and the consumer share its CPUs.",
        "",
    ]
    targets = all_targets(sections)
    if targets:
        lines += ["## Targets", ""]
        lines.append(
            markdown_table(
                ["target", "measured", ""],
                [[t.goal, t.measured, f"**{t.verdict}**"] for t in targets],
            )
        )
        lines.append("")
    for s in sections:
        lines += [f"## {s.title}", "", markdown_table(s.columns, s.rows), ""]
        lines += [f"- {note}" for note in s.notes]
        lines.append("")
    return "\n".join(lines)


def write_results(out_dir: Path, sections: list[Section], meta: dict[str, Any]) -> Path:
    """latest.json (every figure of every round) and latest.md; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    body = {
        "meta": meta,
        "targets": [t.as_dict() for t in all_targets(sections)],
        "cases": {s.key: {"failed": s.failed, **s.data} for s in sections},
    }
    (out_dir / "latest.json").write_text(
        json.dumps(_finite(body), indent=2, default=_jsonable) + "\n", encoding="utf-8"
    )
    md = out_dir / "latest.md"
    md.write_text(render_markdown(sections, meta), encoding="utf-8")
    return md


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
