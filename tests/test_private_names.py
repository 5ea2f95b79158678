"""No module of ours imports or touches a private name of a third-party library.

Private names (`_anything`) are a library's to change in any release; the gateway once ran on
patched paho internals, and an upgrade that kept a name but changed its shape would have failed
inside a reader callback on every read. This parses every Python file of the repository (the
gateway, the simulators, the benchmarks and these tests) and fails on:
- importing a private module or name from a library (`paho.mqtt._packet`, `from x import _y`);
- reading or writing `something._name` where `_name` is not defined anywhere in our own code, or
  is one of the library internals we know were used before (whoever defines it);
- `getattr`/`setattr`/`hasattr` with such a name as a string;
- an attribute or slot of our own named like one of paho's internals (`self._sock`): in the
  modules that drive paho, such a name could not be told from paho's own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("gateway", "simulators", "benchmarks", "harness", "tests")
# paho's internals that the gateway once patched: refused everywhere, on `self` and in
# `__slots__` too, so that no attribute of ours can be mistaken for (or become) one of them.
PAHO_INTERNALS = frozenset(
    {
        "_sock",
        "_in_packet",
        "_out_packet",
        "_handle_publish",
        "_on_message_filtered",
        "_packet",
    }
)
# Internals of paho, aiomqtt and prometheus_client that earlier code reached into: refused on
# anything but `self`/`cls`, even though we also use some of these names for our own attributes.
KNOWN_INTERNALS = PAHO_INTERNALS | frozenset(
    {"_client", "_value", "_queue", "_protocol", "_metrics", "_names_to_collectors"}
)


def sources() -> list[Path]:
    return sorted(
        path
        for part in FIRST_PARTY
        for path in (ROOT / part).rglob("*.py")
        if ".venv" not in path.parts
    )


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_names(trees: list[ast.Module]) -> set[str]:
    """Every private name our code defines: functions, classes, attributes, slots, variables."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[-1])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # __slots__ entries, dataclass-like field names
    return {name for name in names if is_private(name)}


def violations(path: Path, tree: ast.Module, ours: set[str]) -> Iterator[str]:
    where = path.relative_to(ROOT)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] not in FIRST_PARTY and any(is_private(p) for p in parts[1:]):
                    yield f"{where}:{node.lineno}: imports {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] in FIRST_PARTY:
                continue
            if any(is_private(p) for p in parts[1:]):
                yield f"{where}:{node.lineno}: imports from {node.module}"
            for alias in node.names:
                if is_private(alias.name):
                    yield f"{where}:{node.lineno}: imports {alias.name} from {node.module}"
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if on_self:
                if node.attr in PAHO_INTERNALS:
                    yield f"{where}:{node.lineno}: names an attribute of ours .{node.attr} (paho's)"
                continue
            if node.attr in KNOWN_INTERNALS or node.attr not in ours:
                yield f"{where}:{node.lineno}: touches .{node.attr}"
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            for slot in ast.walk(node.value):
                if isinstance(slot, ast.Constant) and slot.value in PAHO_INTERNALS:
                    yield f"{where}:{slot.lineno}: a slot of ours {slot.value!r} (paho's)"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value)
            and (node.args[1].value in KNOWN_INTERNALS or node.args[1].value not in ours)
        ):
            yield f"{where}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})"


def test_no_module_imports_or_touches_a_private_name_of_a_library() -> None:
    paths = sources()
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in paths]
    ours = own_names(trees) - KNOWN_INTERNALS
    found = [
        v for path, tree in zip(paths, trees, strict=True) for v in violations(path, tree, ours)
    ]
    assert not found, "\n".join(found)


def test_the_check_catches_what_it_is_for() -> None:
    """The rules above, on code that breaks them (so this test can fail)."""
    code = (
        "from paho.mqtt._packet import decode_publish\n"
        "import paho.mqtt._packet\n"
        "from prometheus_client.values import _ValueClass\n"
        "client._sock = wrapped\n"
        "counter._value.get()\n"
        "getattr(client, '_in_packet')\n"
        "library._undefined_anywhere()\n"
    )
    tree = ast.parse(code)
    found = list(violations(ROOT / "example.py", tree, {"_defined_by_us"}))
    assert len(found) == 7, found
    shadowing = ast.parse("self._sock = 1\n__slots__ = ('_in_packet',)\n")
    assert len(list(violations(ROOT / "example.py", shadowing, set()))) == 2
    ok = ast.parse("self._client = 1\nother._defined_by_us()\n")
    assert list(violations(ROOT / "example.py", ok, {"_defined_by_us"})) == []
