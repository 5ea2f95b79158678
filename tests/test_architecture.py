"""Imports flow one way (STYLE.md §2): inside gateway/, and from the simulators, benchmarks and
harness into it; each outside library pyproject declares is used, by one owner."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = ROOT / "gateway"

LAYER = {
    "_version": 0, "errors": 0, "model": 0, "config": 0, "logs": 0, "manifest": 0,
    "parent_death": 0, "hangups": 0, "backoff": 0, "reload": 1, "topics": 0, "presets": 0,
    "layout": 0, "segment_reader": 0, "ports": 0, "local_broker": 0,
    "decode": 1, "channel": 1, "distinct": 1, "metrics": 1, "transforms": 1,
    "sensor_values": 1, "columnar": 1,
    "stage": 2, "admit": 2, "sources": 2, "sinks": 2, "http": 2, "connections": 2,
    "compaction": 2, "audit": 2,
    "app": 3,
    "cli": 4, "__main__": 4, "__init__": 4, "demo": 4, "demo_terminal": 4, "top": 4,
    "supervisor": 4, "commands": 4, "parse": 4, "subscriptions": 0, "addresses": 4,
}  # fmt: skip

# Each outside library's owner: the one module (or package, ending in "/") of gateway/ or
# simulators/ that imports it and translates its errors at the boundary. Paths from the root.
OWNERS = {
    "mqtt5": {"gateway/sources/wire_v5.py"},
    # The gateway's 3.1.1 wire; the simulators' clients (hub.py makes them, publisher.py drives
    # one on the asyncio loop): the two packages never share code but gateway.model/manifest.
    "paho": {"gateway/sources/wire_v311.py", "simulators/hub.py", "simulators/publisher.py"},
    # Readings are msgspec Structs (model.py declares them); decode/ decodes payloads into them
    # and sinks/lines.py encodes them (and dead-letter records) into file lines.
    "msgspec": {"gateway/model.py", "gateway/decode/", "gateway/sinks/lines.py"},
    # Reading segment lines into Parquet columns, in the `gateway compact` process.
    "orjson": {"gateway/columnar/"},
    "tenacity": {"gateway/backoff.py"},
    "aiofiles": {"gateway/sinks/"},
    "prometheus_client": {"gateway/metrics/", "gateway/http.py"},
    "aiohttp": {"gateway/http.py"},
    # The `top` extra: the terminal view of `gateway top` only.
    "rich": {"gateway/top/"},
    "pyarrow": {"gateway/columnar/"},  # Parquet files of readings
    # pydantic is the schema language of the files we validate: the gateway's config (config.py,
    # and its subscriptions part), the simulator manifest, the simulator profiles.
    "pydantic": {
        "gateway/config.py",
        "gateway/subscriptions.py",
        "gateway/manifest.py",
        "simulators/profile.py",
    },
    "pydantic_settings": {"gateway/config.py"},
    # The `demo` extra: the demo's broker (run as a process), whose packet codec also encodes
    # gateway-sim's raw transport.
    "amqtt": {"simulators/raw_packets.py"},
}
# Distribution names that are not their import names.
IMPORT_NAMES = {
    "paho-mqtt": "paho",
    "prometheus-client": "prometheus_client",
    "pydantic-settings": "pydantic_settings",
}
# Extras that ship to users; `dev` holds the test and lint tools, imported by tests only.
SHIPPED_EXTRAS = ("demo", "top")
# What the simulators may use of the gateway: the values and files they share, not its insides
# (sources, sinks, app...), so that a simulator never depends on how the gateway works.
SIMULATORS_MAY_USE = {"model", "manifest", "errors", "presets", "addresses", "_version"}


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


def _python_files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def _declared() -> dict[str, str]:
    """Import name -> requirement, for every dependency and shipped extra in pyproject."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in SHIPPED_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    declared = {}
    for requirement in requirements:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()
        declared[IMPORT_NAMES.get(name, name.replace("-", "_"))] = requirement
    return declared


def _owns(owners: set[str], rel: str) -> bool:
    return any(rel == o or (o.endswith("/") and rel.startswith(o)) for o in owners)


def test_every_declared_library_has_an_owner_that_uses_it() -> None:
    """pyproject declares nothing that nothing imports, and no library without an owner."""
    declared = _declared()
    assert set(declared) == set(OWNERS), "pyproject and OWNERS disagree"
    imported = {
        name.split(".")[0]: path for path in _python_files("gateway", "simulators", "benchmarks")
        for name in _imports(path)
    }  # fmt: skip
    unused = [declared[name] for name in OWNERS if name not in imported]
    assert not unused, f"declared, imported nowhere: {unused}"


def test_each_outside_library_has_one_owner() -> None:
    wrong = []
    for path in _python_files("gateway", "simulators"):
        rel = str(path.relative_to(ROOT))
        for name in _imports(path):
            owners = OWNERS.get(name.split(".")[0])
            if owners and not _owns(owners, rel):
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_simulators_use_only_what_they_share_with_the_gateway() -> None:
    wrong = []
    for path in _python_files("simulators"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] in ("tests", "benchmarks", "harness") or (
                parts[0] == "gateway" and (len(parts) == 1 or parts[1] not in SIMULATORS_MAY_USE)
            ):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_benchmarks_and_the_harness_never_import_the_tests() -> None:
    """Tools build on the gateway, the simulators and the harness; tests build on them all."""
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _python_files("benchmarks", "harness")
        for name in _imports(path)
        if name.split(".")[0] == "tests"
    ]
    assert not wrong, "\n".join(wrong)


def test_gateway_top_without_rich_names_the_extra() -> None:
    """rich is the `top` extra: the gateway and the demo run without it, and `gateway top`
    says what to install."""
    probe = (
        "import sys; sys.modules['rich'] = None\n"
        "import gateway.cli, gateway.app, gateway.demo\n"
        "sys.exit(gateway.cli.main(['top', '--once']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    assert "pip install 'telemetry-gateway[top]'" in done.stderr


def test_the_gateway_process_never_imports_pyarrow() -> None:
    """Compaction runs in a child process: pyarrow's memory stays out of the one that acks."""
    probe = "import sys, gateway.cli, gateway.app; print('pyarrow' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def test_the_readme_module_map_names_every_module_and_package() -> None:
    """README's Architecture map matches the tree: every module and package of gateway/ and of
    its sub-packages sources/ and sinks/, and every top-level code directory, is named in it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    words = set(re.findall(r"[\w.]+/?", block)) | set(re.findall(r"[\w.]+", block))
    missing = []
    for package in (GATEWAY, GATEWAY / "sources", GATEWAY / "sinks"):
        for path in sorted(package.iterdir()):
            if path.name.startswith("_") or path.name == "py.typed":
                continue
            name = f"{path.name}/" if path.is_dir() else path.name
            if (path.is_dir() or path.suffix == ".py") and name not in words:
                missing.append(str(path.relative_to(ROOT)))
    for top in ("simulators/", "harness/", "benchmarks/", "tests/"):
        if top not in words:
            missing.append(top)
    assert not missing, f"README's Architecture map does not name: {missing}"
