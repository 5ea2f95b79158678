"""The plan of a mapping: which value of a payload object is which metric, made once per key set.

A payload object is walked key by key against a plan made the first time its set of keys was
seen (devices send the same keys again and again), so the globs, renames and units of a mapping
are matched once per key set, never per message. Nested objects (and arrays, by index) have
plans of their own under their path: `AM2301.Temperature`.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any

import msgspec

from gateway.decode.timestamps import QUOTE
from gateway.errors import DecodeError
from gateway.model import METRIC_NAME
from gateway.subscriptions import MAX_TAG_VALUE, MappingConfig, parse_path, parse_sources

# Key sets whose plan is remembered per object path; past this many the memory is cleared.
PLAN_MEMORY = 4096
# How much of a value a note or an error detail quotes.
_VALUE_QUOTE = 48

# A JSON value as msgspec decodes it: dict, list, str, int, float, bool or None.
Value = Any


class Step:
    """What to do with one key of an object: store its value as metric `name` (None: not a
    metric), and descend into `node` when the value is an object or array (None: excluded)."""

    __slots__ = ("bad", "name", "node", "path", "unit")

    def __init__(
        self,
        path: str,
        name: str | None,
        node: Node | None,
        unit: str | int | None,
        bad: str | None,
    ) -> None:
        self.path = path  # the flattened payload path, as the user writes it
        self.name = name
        self.node = node
        self.unit = unit  # a unit, or an index into the message's unit fields
        self.bad = bad  # why a value here is left out although it would be a metric


class Node:
    """The plans of one object path: key set -> steps, in the object's key order."""

    __slots__ = ("absolute", "path", "plans", "prefix")

    def __init__(self, path: tuple[str, ...], absolute: tuple[str, ...], prefix: str) -> None:
        self.path = path  # relative to the mapping's root
        self.absolute = absolute  # from the payload's top
        self.prefix = prefix  # put before every metric name (e.g. a Shelly component)
        self.plans: dict[tuple[str, ...], list[Step]] = {}


class Planner:
    """Compiles the steps of a key set from a MappingConfig, and reads one value as a number."""

    __slots__ = (
        "_booleans",
        "_consumed",
        "_enums",
        "_exclude",
        "_include",
        "_numeric_strings",
        "_rename",
        "_unit_fields",
        "_units",
        "read_paths",
        "root",
        "unit_paths",
    )

    def __init__(self, mapping: MappingConfig) -> None:
        self.root = parse_path(mapping.root) if mapping.root else ()
        self._include = mapping.include
        self._exclude = mapping.exclude
        self._rename = dict(mapping.rename)
        self._units = dict(mapping.units)
        # Unit fields: (glob, index of its path); the distinct paths in a fixed order, so that a
        # step refers to its unit by index into the units found in the message.
        paths = list(dict.fromkeys(parse_path(p) for p in mapping.unit_fields.values()))
        self.unit_paths = paths
        self._unit_fields = [
            (glob, paths.index(parse_path(p))) for glob, p in mapping.unit_fields.items()
        ]
        consumed: set[tuple[str, ...]] = set()
        for text in (mapping.device_id, mapping.ts, mapping.seq):
            if text:
                consumed.update(
                    s.path for s in parse_sources(text, received=True) if s.kind == "payload"
                )
        consumed.update(parse_path(p) for p in mapping.unit_fields.values())
        consumed.update(parse_path(p) for p in mapping.tag_fields.values())
        self._consumed = frozenset(consumed)
        # Every payload path read besides the root: the device, time, seq, units and tags.
        self.read_paths = sorted(consumed)
        self._enums = dict(mapping.enums)
        self._numeric_strings = mapping.numeric_strings
        self._booleans = mapping.booleans

    def plan(self, node: Node, keys: tuple[str, ...]) -> list[Step]:
        """The steps for an object of `node` with these keys (made once, then remembered)."""
        steps = [self._step(node, key) for key in keys]
        if len(node.plans) >= PLAN_MEMORY:
            node.plans.clear()
        node.plans[keys] = steps
        return steps

    def _step(self, node: Node, key: str) -> Step:
        relative = (*node.path, key)
        absolute = (*node.absolute, key)
        flat = ".".join(relative)
        shown = ".".join(absolute)
        if absolute in self._consumed or any(fnmatchcase(flat, g) for g in self._exclude):
            return Step(shown, None, None, None, None)
        child = Node(relative, absolute, node.prefix)
        if not any(fnmatchcase(flat, g) for g in self._include):
            return Step(shown, None, child, None, None)
        name = node.prefix + self._rename.get(flat, flat)
        if METRIC_NAME.fullmatch(name) is None:
            bad = f"{name[:QUOTE]!r} is not a metric name (rename it)"
            return Step(shown, None, child, None, bad)
        return Step(shown, name, child, self._unit_of(name), None)

    def _unit_of(self, name: str) -> str | int | None:
        unit = self._units.get(name)
        if unit is not None:
            return unit
        for pattern, index in self._unit_fields:
            if fnmatchcase(name, pattern):
                return index
        for pattern, unit in self._units.items():
            if fnmatchcase(name, pattern):
                return unit
        return None

    def number(self, value: Value, where: str) -> float | None:
        """A value read as a metric: a float, or None when it is left out (a string the
        mapping does not read, null, a boolean when booleans are off)."""
        cls = value.__class__
        if cls is float:
            return value  # type: ignore[no-any-return]
        if cls is int:
            try:
                return float(value)
            except OverflowError:
                raise DecodeError(
                    "invalid_value", f"{where} = {shown(value)}: too large for a number"
                ) from None
        if cls is bool:
            return (1.0 if value else 0.0) if self._booleans else None
        if cls is str:
            number = self._enums.get(value)
            if number is not None:
                return number
            if self._numeric_strings:
                return _numeric(value)
        return None

    def why_left_out(self, value: Value) -> str:
        """In the user's words, why `value` is not a metric."""
        if value is None:
            return "no value"
        if value.__class__ is bool:
            return "a boolean (booleans = false)"
        if value.__class__ is str:
            return "a string that is not a number or a listed enum"
        return f"a {type(value).__name__}"


def _numeric(text: str) -> float | None:
    """A numeric string as a float: what float() takes, but finite and without `_`."""
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number) or "_" in text:
        return None
    return number


def shown(value: Value) -> str:
    """A payload value as the user would write it in JSON, cut short."""
    if value is None:
        text = "null"
    elif value.__class__ is bool:
        text = "true" if value else "false"
    elif value.__class__ is str:
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, dict | list):
        text = msgspec.json.encode(value).decode()
    elif value.__class__ is float and value.is_integer() and abs(value) < 1e15:
        text = str(int(value))  # as it was sent: the decoder made every number a float
    else:
        text = repr(value)
    return text if len(text) <= _VALUE_QUOTE else text[: _VALUE_QUOTE - 3] + "..."


def lookup(obj: Value, path: tuple[str, ...]) -> Value:
    """The value at `path` (list indices as digits), or MISSING."""
    if len(path) == 1 and obj.__class__ is dict:
        return obj.get(path[0], MISSING)
    for key in path:
        cls = obj.__class__
        if cls is dict:
            obj = obj.get(key, MISSING)
            if obj is MISSING:
                return MISSING
        elif cls is list and key.isdigit() and int(key) < len(obj):
            obj = obj[int(key)]
        else:
            return MISSING
    return obj


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def tag_text(value: Value) -> str | None:
    """A payload value kept as a tag: a string (bounded) or a number, else None."""
    cls = value.__class__
    if cls is str:
        return value if len(value) <= MAX_TAG_VALUE else None  # type: ignore[no-any-return]
    if cls is float:
        return str(int(value)) if value.is_integer() else repr(value)
    if cls is int:
        return str(value)
    return None
