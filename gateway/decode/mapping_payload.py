"""What a mapping reads from a payload besides its metrics: the device id, time, seq, tags and
unit fields at their paths (`PayloadFields`), and the type a payload with a root is decoded as
(`skeleton`: only the parts read)."""

from __future__ import annotations

from typing import Any, TypedDict

from gateway.config import MappingConfig
from gateway.decode.mapping_plan import MISSING, Planner, lookup, shown, tag_text
from gateway.decode.timestamps import EPOCH_MS_ABOVE, MILLIS, QUOTE, TimestampParser, parse_iso
from gateway.errors import DecodeError
from gateway.model import UNIT_NAME
from gateway.subscriptions import Source, parse_path, parse_sources
from gateway.topics import TopicFields

# What the typed decode expects: an object of scalars and objects of scalars, as most devices
# send; msgspec makes every JSON number a float in C on the way. Deeper levels stay generic
# (their ints are converted one by one); anything else (an array, a number) is decoded again
# generically, to say what it is.
_Scalar = float | str | bool | None
Shape = dict[str, _Scalar | dict[str, _Scalar | dict[str, Any] | list[Any]] | list[Any]]
_RootShape = dict[str, _Scalar | dict[str, Any] | list[Any]]
_ROOT, _ANY = "root", "any"


def skeleton(root: tuple[str, ...], paths: list[tuple[str, ...]]) -> Any:
    """The type a payload with a root is decoded as: TypedDicts holding only the keys on the way
    to the root and to each path the mapping reads (msgspec skips everything else in C, e.g. a
    Things Stack uplink's gateway metadata), the root as `_RootShape`, each other path's value
    as it comes. A path through an array stops at the array (then looked up in it)."""
    tree: dict[str, Any] = {}
    _add(tree, root, _ROOT)
    for path in paths:
        _add(tree, path, _ANY)
    return _typed(tree, [0])


def _add(tree: dict[str, Any], path: tuple[str, ...], kind: str) -> None:
    node = tree
    for index, key in enumerate(path):
        last = index == len(path) - 1 or path[index + 1].isdigit()
        if last:
            if kind == _ROOT or not isinstance(node.get(key), str):
                node[key] = kind if kind == _ROOT or key not in node else node[key]
                if kind == _ANY and isinstance(node[key], dict):
                    node[key] = _ANY  # the whole value is read: nothing to narrow
            return
        child = node.setdefault(key, {})
        if isinstance(child, str):
            return  # under the root or a value read whole: covered
        node = child


def _typed(tree: dict[str, Any], count: list[int]) -> Any:
    count[0] += 1
    fields = {
        key: _RootShape if value == _ROOT else Any if value == _ANY else _typed(value, count)
        for key, value in tree.items()
    }
    return TypedDict(f"Skeleton{count[0]}", fields, total=False)  # type: ignore[operator]


class PayloadFields:
    """Reads the device id, time, seq, tags and units of a message from its decoded payload
    (`top`), trying each source of a setting in turn. The first source of each, when it is a
    top-level key, is also exposed (`*_key`) for the decoder's inline common case."""

    __slots__ = (
        "_ts",
        "_ts_keys",
        "_ts_received",
        "_ts_sources",
        "_unit_names",
        "_units_seen",
        "device_from_topic",
        "device_key",
        "device_sources",
        "seconds",
        "seq_key",
        "seq_sources",
        "tag_fields",
        "ts_key",
        "ts_received_only",
        "unit_paths",
    )

    def __init__(self, mapping: MappingConfig, planner: Planner) -> None:
        self.device_sources = parse_sources(mapping.device_id)
        self._ts_sources = parse_sources(mapping.ts, received=True, topic=False)
        self.seq_sources = parse_sources(mapping.seq, topic=False) if mapping.seq else ()
        self._ts_received = self._ts_sources[-1].kind == "received"
        # Top-level keys need no path walk; None: some source is a nested path.
        payload_ts = [s.path for s in self._ts_sources if s.kind == "payload"]
        self._ts_keys: tuple[str, ...] | None = (
            tuple(path[0] for path in payload_ts) if all(len(p) == 1 for p in payload_ts) else None
        )
        self.ts_received_only = len(self._ts_sources) == 1 and self._ts_received
        self.device_from_topic = self.device_sources[0].kind == "topic"
        self.ts_key = _first_key(self._ts_sources)
        self.device_key = _first_key(self.device_sources)
        self.seq_key = _first_key(self.seq_sources)
        self.tag_fields = [(name, parse_path(path)) for name, path in mapping.tag_fields.items()]
        self.unit_paths = planner.unit_paths
        self._unit_names = dict(mapping.unit_names)
        self._units_seen: dict[str, str | None] = {}
        self._ts = TimestampParser()
        # `YYYY-MM-DDTHH:MM:SS` -> epoch seconds, filled as canonical times are parsed.
        self.seconds = self._ts.seconds

    def device_id(self, top: dict[str, Any], fields: TopicFields) -> str:
        for source in self.device_sources:
            if source.kind == "topic":
                if fields.device_id is not None:
                    return fields.device_id
                continue
            value = lookup(top, source.path)
            if value is MISSING or value is None:
                continue
            if value.__class__ is str:
                return value  # type: ignore[no-any-return]
            if value.__class__ in (int, float) and value == int(value):
                return str(int(value))
            raise DecodeError(
                "invalid_device_id", f"{source.path_text} = {shown(value)}: not a device id"
            )
        wanted = " or ".join(str(s) for s in self.device_sources)
        raise DecodeError("missing_field", f"no device id: nothing at {wanted}")

    def time(self, top: dict[str, Any], received_at: float) -> tuple[float, str | None]:
        keys = self._ts_keys
        if keys is not None:  # top-level keys: no path walk
            get = top.get
            for key, source in zip(keys, self._ts_sources):  # noqa: B905
                value = get(key)
                if value is not None:
                    return self.parse_time(source, value)
        else:
            for source in self._ts_sources:
                if source.kind == "received":
                    break
                value = lookup(top, source.path)
                if value is not MISSING and value is not None:
                    return self.parse_time(source, value)
        if self._ts_received:
            return received_at, None
        wanted = " or ".join(str(s) for s in self._ts_sources)
        raise DecodeError("missing_field", f"no time: nothing at {wanted}")

    def parse_time(self, source: Source, value: Any) -> tuple[float, str | None]:
        cls = value.__class__
        if cls is str:
            # The canonical form, from the memory of seconds: one slice and two lookups.
            if len(value) == 24 and value[19] == "." and value[23] == "Z":
                whole = self.seconds.get(value[:19])
                millis = MILLIS.get(value[20:23])
                if whole is not None and millis is not None:
                    return whole + millis, value
            epoch = self._ts.canonical(value)
            if epoch is not None:
                return epoch, value
            try:
                return parse_iso(value), None
            except DecodeError:
                raise DecodeError("invalid_value", _not_a_time(source, value)) from None
        if cls is float or cls is int:
            return (value / 1000.0 if value > EPOCH_MS_ABOVE else float(value)), None
        raise DecodeError("invalid_value", _not_a_time(source, value))

    def seq(self, top: dict[str, Any]) -> int | None:
        for source in self.seq_sources:
            value = lookup(top, source.path)
            if value is MISSING or value is None:
                continue
            cls = value.__class__
            if cls is int:
                return value  # type: ignore[no-any-return]
            if cls is float and value.is_integer():
                return int(value)
            if cls is str and value.isdigit() and value.isascii():
                return int(value)
            raise DecodeError(
                "invalid_value", f"{source.path_text} = {shown(value)}: not a whole number"
            )
        return None  # a reading may have no seq

    def tags(self, top: dict[str, Any]) -> dict[str, str]:
        tags = {}
        for name, path in self.tag_fields:
            text = tag_text(lookup(top, path))
            if text is not None:
                tags[name] = text
        return tags

    def units(self, top: dict[str, Any]) -> list[str | None]:
        """Each unit field's unit in this message (None: absent or not a unit name)."""
        found: list[str | None] = []
        for path in self.unit_paths:
            value = lookup(top, path)
            unit = None
            if value.__class__ is str:
                unit = self._units_seen.get(value, MISSING)
                if unit is MISSING:
                    unit = self._unit_names.get(value, value)
                    if UNIT_NAME.fullmatch(unit) is None:
                        unit = None
                    if len(self._units_seen) < 1024:
                        self._units_seen[value] = unit
            found.append(unit)
        return found


def _first_key(sources: tuple[Source, ...]) -> str | None:
    """The key of a first source that is a top-level payload key, else None."""
    if sources and sources[0].kind == "payload" and len(sources[0].path) == 1:
        return sources[0].path[0]
    return None


def _not_a_time(source: Source, value: Any) -> str:
    return (
        f"{source.path_text} = {shown(value)[:QUOTE]}: not a time "
        "(ISO 8601, or epoch seconds or milliseconds)"
    )
