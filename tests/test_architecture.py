"""Imports flow one way (STYLE.md §2), and each outside library has one owner."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = ROOT / "gateway"

LAYER = {
    "_version": 0, "errors": 0, "model": 0, "config": 0, "logs": 0, "manifest": 0,
    "parent_death": 0, "hangups": 0, "backoff": 0, "reload": 1, "topics": 0, "presets": 0,
    "layout": 0, "segment_reader": 0,
    "decode": 1, "channel": 1, "distinct": 1, "metrics": 1, "transforms": 1,
    "sensor_values": 1, "columnar": 1,
    "stage": 2, "admit": 2, "sources": 2, "sinks": 2, "http": 2, "connections": 2,
    "compaction": 2, "audit": 2,
    "app": 3,
    "cli": 4, "__main__": 4, "__init__": 4, "demo": 4, "demo_terminal": 4, "top": 4,
    "supervisor": 4, "commands": 4, "parse": 4, "subscriptions": 0, "addresses": 4,
}  # fmt: skip

OWNERS = {
    "mqtt5": {"sources/wire_v5.py"},
    "paho": {"sources/wire_v311.py"},
    "aiomqtt": set(),
    # Readings are msgspec Structs (model.py declares them); decode/ decodes payloads into them
    # and sinks/lines.py encodes them into file lines. Nothing else touches msgspec.
    "msgspec": {"model.py", "decode/", "sinks/lines.py"},
    "orjson": {"sinks/dead_letter.py", "audit.py", "manifest.py", "columnar/"},
    "tenacity": {"backoff.py"},
    "aiofiles": {"sinks/"},
    "prometheus_client": {"metrics/", "http.py"},
    "aiohttp": {"http.py"},
    "rich": {"top/"},  # the terminal view of `gateway top` only
    "pyarrow": {"columnar/"},  # Parquet files of readings
}


def _modules() -> list[Path]:
    return sorted(GATEWAY.rglob("*.py"))


def _top_part(path: Path) -> str:
    rel = path.relative_to(GATEWAY)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_every_module_has_a_layer() -> None:
    missing = {_top_part(p) for p in _modules()} - set(LAYER)
    assert not missing, f"give these a layer in this test: {missing}"


def test_no_module_imports_from_a_higher_layer() -> None:
    wrong = []
    for path in _modules():
        mine = _top_part(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] in ("tests", "simulators"):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
            if parts[0] != "gateway" or len(parts) == 1:
                continue
            theirs = parts[1]
            if theirs == mine:
                continue
            # Same-layer imports are allowed (decode uses topics); upward ones never are.
            if LAYER[theirs] > LAYER[mine] and mine != "__init__":
                wrong.append(f"{path.relative_to(ROOT)} (L{LAYER[mine]}) imports {name}")
    assert not wrong, "\n".join(wrong)


def test_sinks_never_import_sources() -> None:
    for path in (GATEWAY / "sinks").rglob("*.py"):
        assert not any(n.startswith("gateway.sources") for n in _imports(path)), path


def test_each_outside_library_has_one_owner() -> None:
    wrong = []
    for path in _modules():
        rel = str(path.relative_to(GATEWAY))
        for name in _imports(path):
            owners = OWNERS.get(name.split(".")[0])
            if owners and not any(
                rel == o or (o.endswith("/") and rel.startswith(o)) for o in owners
            ):
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_gateway_process_never_imports_pyarrow() -> None:
    """Compaction runs in a child process: pyarrow's memory stays out of the one that acks."""
    probe = "import sys, gateway.cli, gateway.app; print('pyarrow' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
