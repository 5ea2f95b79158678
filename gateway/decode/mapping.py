"""Mapped payloads: any JSON object (or a bare value) -> one Reading, as a MappingConfig says.

The payload is decoded once by msgspec, as an object of scalars and objects (every number a float,
converted in C; anything else is decoded again generically, to be named). Then the
object is walked against the plan of its key set (mapping_plan.py). Per message there is no
glob, regex or rename lookup; what the topic says (device, metric prefix, tags) is worked out once
per topic, in `topic_fields`.

Values the mapping does not read (strings it does not know, nulls) are left out and counted
(`left_out`); `notes`, when a list, collects them in the user's words (`gateway parse`). A
message with nothing to store is dead-lettered naming what it held, or dropped (`no_metrics`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.config import LimitsConfig, MappingConfig
from gateway.decode.checks import error_from_msgspec
from gateway.decode.mapping_payload import PayloadFields, Shape, skeleton
from gateway.decode.mapping_plan import MISSING, Node, Planner, Step, lookup, shown, tag_text
from gateway.decode.timestamps import MILLIS
from gateway.errors import DecodeError
from gateway.model import Reading
from gateway.subscriptions import Source, parse_sources
from gateway.topics import DEVICE_ID_FIELD, METRIC_FIELD, SharedTags, TopicFields, TopicTemplate

# Notes kept for a rejection's detail.
DETAIL_NOTES = 4
_JSON_START = frozenset(b'{["-0123456789tfn')
# What a walk fills in: metrics, units, the message's unit-field units, tags from strings.
_Found = tuple[dict[str, float], dict[str, str], list[str | None] | None, dict[str, str] | None]


class MappingDecoder:
    """A FormatDecoder for `format = "mapping"` and the presets."""

    __slots__ = (
        "_decode_any",
        "_decode_typed",
        "_drop_empty",
        "_nodes",
        "_payload",
        "_planner",
        "_root_key",
        "_root_text",
        "_static_tags",
        "_strings_as_tags",
        "_template",
        "_value_name",
        "_value_shape",
        "_value_source",
        "left_out",
        "notes",
    )

    def __init__(
        self, mapping: MappingConfig, template: TopicTemplate, limits: LimitsConfig
    ) -> None:
        del limits  # one reading per message: the common checks bound the rest
        self._template = template
        self._planner = Planner(mapping)
        self._payload = PayloadFields(mapping, self._planner)
        self._root_text = mapping.root
        root = self._planner.root
        self._root_key = root[0] if len(root) == 1 else None
        self._value_shape = mapping.shape == "value"
        # The metric prefix (object) or the value's metric name (value): from the topic, or
        # (a value's) a constant.
        name_text = mapping.value_name if self._value_shape else mapping.metric_prefix
        self._value_source = (
            parse_sources(name_text, payload=False)[0] if name_text.startswith("topic:") else None
        )
        self._value_name = mapping.value_name if self._value_source is None else ""
        self._static_tags = dict(mapping.tags)
        self._strings_as_tags = mapping.strings == "tag"
        self._drop_empty = mapping.no_metrics == "drop"
        # A payload with a root: only the keys the mapping reads; without: all of it.
        shape = skeleton(root, self._planner.read_paths) if root else Shape
        self._decode_typed = msgspec.json.Decoder(shape).decode
        self._decode_any = msgspec.json.Decoder().decode
        self._nodes: dict[str, Node] = {}
        self.left_out = 0
        self.notes: list[str] | None = None

    # -- once per topic ------------------------------------------------------------------------

    def topic_fields(self, topic: str, fields: TopicFields) -> TopicFields:
        """The topic's part of every reading on it: the device (when the topic names it), the
        metric prefix or value name, and the tags (the template's fields plus static tags)."""
        levels = topic.split("/")
        device_id = None
        for source in self._payload.device_sources:
            if source.kind == "topic":
                device_id = self._from_topic(source, levels, fields)
                break
        name = self._value_name if self._value_shape else ""
        if self._value_source is not None:
            name = self._from_topic(self._value_source, levels, fields) or ""
            if name and not self._value_shape:
                name += "."
        tags = fields.tags
        if self._static_tags:
            tags = SharedTags({**tags, **self._static_tags})
        return TopicFields(device_id, name, tags)

    def _from_topic(self, source: Source, levels: list[str], fields: TopicFields) -> str | None:
        if source.level is not None:
            index = source.level
            return levels[index] if -len(levels) <= index < len(levels) else None
        if source.field in ("", DEVICE_ID_FIELD):
            if source.field or DEVICE_ID_FIELD in self._template.fields:
                return fields.device_id
            return levels[-1]
        if source.field == METRIC_FIELD:
            return fields.metric
        return fields.tags.get(source.field)

    # -- per message ---------------------------------------------------------------------------

    def __call__(
        self, payload: bytes, topic: str, fields: TopicFields, received_at: float
    ) -> list[Reading]:
        if self._value_shape:
            return self._read_value(payload, topic, fields, received_at)
        top = self._decode(payload)
        if top.__class__ is not dict:
            raise DecodeError("invalid_schema", f"the payload is {_kind(top)}, not a JSON object")
        obj: Any = top
        if self._planner.root:
            obj = top.get(self._root_key) if self._root_key is not None else None
            if obj.__class__ is not dict:
                obj = self._root_of(top)
        metrics: dict[str, float] = {}
        units: dict[str, str] = {}
        found = self._payload
        unit_values = found.units(top) if found.unit_paths else None
        extra_tags: dict[str, str] | None = {} if self._strings_as_tags else None
        prefix = fields.metric or ""
        node = self._nodes.get(prefix)
        if node is None:
            node = self._nodes[prefix] = Node((), self._planner.root, prefix)
        self._walk(obj, node, (metrics, units, unit_values, extra_tags))
        if not metrics:
            if self._drop_empty:
                return []
            raise self._nothing_to_store(obj, node, unit_values)
        tags = fields.tags
        if found.tag_fields or extra_tags:
            tags = {**tags, **found.tags(top), **(extra_tags or {})}
        # The common cases inline: a canonical time in a top-level key, found in the memory of
        # seconds; a device id and a seq in top-level keys. Anything else: the general way.
        ts_text = None
        if found.ts_received_only:
            ts = received_at
        else:
            value: Any = top.get(found.ts_key) if found.ts_key is not None else None
            whole = None
            if value.__class__ is str and len(value) == 24 and value[23] == "Z":
                whole = found.seconds.get(value[:19])
                millis = MILLIS.get(value[20:23])
            if whole is not None and millis is not None and value[19] == ".":
                ts, ts_text = whole + millis, value
            else:
                ts, ts_text = found.time(top, received_at)
        device_id = fields.device_id
        if found.device_key is not None:
            device_id = top.get(found.device_key)
            if device_id.__class__ is not str:
                device_id = found.device_id(top, fields)
        elif device_id is None or not found.device_from_topic:
            device_id = found.device_id(top, fields)
        seq = None
        if found.seq_sources:
            seq = top.get(found.seq_key) if found.seq_key is not None else None
            if seq.__class__ is not int:
                # A top-level number was made a float by the typed decode.
                integral = seq.__class__ is float and seq.is_integer()  # type: ignore[union-attr]
                seq = int(seq) if integral else found.seq(top)  # type: ignore[arg-type]
        return [
            Reading(
                device_id,
                ts,
                received_at,
                metrics,
                seq,
                units,
                tags,
                None,
                topic,
                payload,
                ts_text,
            )
        ]

    def _root_of(self, top: dict[str, Any]) -> dict[str, Any]:
        obj = lookup(top, self._planner.root)
        if obj is MISSING:
            raise DecodeError("missing_field", f"the payload has no {self._root_text}")
        if obj.__class__ is not dict:
            raise DecodeError(
                "invalid_schema", f"{self._root_text} = {shown(obj)}: not a JSON object"
            )
        return obj  # type: ignore[no-any-return]

    def _decode(self, payload: bytes) -> Any:
        try:
            return self._decode_typed(payload)
        except msgspec.ValidationError:
            pass  # not an object: decoded again below, to say what it is
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise error_from_msgspec(exc, payload) from None
        try:
            return self._decode_any(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise error_from_msgspec(exc, payload) from None

    def _walk(self, obj: dict[str, Any], node: Node, found: _Found) -> None:
        """Store the metrics of `obj` (and of the objects in it) in `found`."""
        metrics, units, unit_values, _ = found
        keys = tuple(obj)
        plan = node.plans.get(keys)
        if plan is None:
            plan = self._planner.plan(node, keys)
        # The plan was made from these very keys: the lengths agree.
        for step, value in zip(plan, obj.values()):  # noqa: B905
            name = step.name
            if name is not None:
                if value.__class__ is float:
                    metrics[name] = value
                    unit = step.unit
                    if unit is not None:
                        if unit.__class__ is str:
                            units[name] = unit  # type: ignore[assignment]
                        elif unit_values is not None and unit_values[unit] is not None:  # type: ignore[index]
                            units[name] = unit_values[unit]  # type: ignore[index,assignment]
                    continue
            elif step.node is None:
                continue  # excluded, or read as the device, time, seq, a unit or a tag
            if value.__class__ is dict:
                if value:
                    self._walk(value, step.node, found)  # type: ignore[arg-type]
            else:
                self._other(step, value, found)

    def _other(self, step: Step, value: Any, found: _Found) -> None:
        """A value that is not a float metric: an array, something to read as a number, a
        tag, or something left out."""
        metrics, units, unit_values, tags = found
        cls = value.__class__
        if cls is dict or cls is list:
            if step.node is not None and value:
                if cls is list:
                    value = {str(i): item for i, item in enumerate(value)}
                self._walk(value, step.node, found)
            return
        name = step.name
        if name is None:
            if step.bad is not None:
                self._leave_out(step.path, value, step.bad)
            return
        number = self._planner.number(value, step.path)
        if number is not None:
            metrics[name] = number
            unit = step.unit
            if unit is not None:
                shown_unit = unit if unit.__class__ is str else (unit_values or [None])[unit]  # type: ignore[index]
                if shown_unit is not None:
                    units[name] = shown_unit  # type: ignore[assignment]
            return
        if tags is not None and cls is str and (text := tag_text(value)) is not None:
            tags[name] = text
            return
        self._leave_out(step.path, value)

    def _leave_out(self, path: str, value: Any, why: str | None = None) -> None:
        """Count a value left out; say why only when someone listens (`notes`)."""
        self.left_out += 1
        if self.notes is not None:
            why = why or self._planner.why_left_out(value)
            self.notes.append(f"{path} = {shown(value)}: {why}")

    def _nothing_to_store(
        self, obj: dict[str, Any], node: Node, unit_values: list[str | None] | None
    ) -> DecodeError:
        """Why a message gave no metric, from a second walk that notes what it left out (only
        for such messages; the count of left-out values is not taken twice)."""
        kept_notes, kept_count = self.notes, self.left_out
        self.notes = []
        try:
            self._walk(obj, node, ({}, {}, unit_values, None))
            notes = self.notes
        finally:
            self.notes, self.left_out = kept_notes, kept_count
        where = f" under {self._root_text}" if self._root_text else ""
        if not notes:
            return DecodeError("missing_field", f"no metrics: nothing number-like{where}")
        more = f" (and {len(notes) - DETAIL_NOTES} more)" if len(notes) > DETAIL_NOTES else ""
        return DecodeError(
            "unsupported_value", "no metrics: " + "; ".join(notes[:DETAIL_NOTES]) + more
        )

    def _read_value(
        self, payload: bytes, topic: str, fields: TopicFields, received_at: float
    ) -> list[Reading]:
        """shape = value: the payload is one value, e.g. `21.5`, `on` or `"on"`."""
        value: Any = MISSING
        stripped = payload.strip()
        if stripped[:1] and stripped[0] in _JSON_START:
            try:
                value = self._decode_any(stripped)
            except (msgspec.DecodeError, UnicodeDecodeError):
                value = MISSING
        if value is MISSING:
            try:
                value = stripped.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("invalid_value", f"not UTF-8 text: {payload[:32]!r}") from None
        if value.__class__ in (dict, list):
            raise DecodeError(
                "invalid_schema", f"the payload is {_kind(value)}; this mapping reads one value"
            )
        name = fields.metric or self._value_name or "value"
        number = self._planner.number(value, name)
        tags = fields.tags
        if number is None:
            if self._strings_as_tags and (text := tag_text(value)) is not None:
                tags = {**tags, name: text}
            else:
                self._leave_out(name, value)
            if self._drop_empty:
                return []
            raise DecodeError(
                "unsupported_value",
                f"{name} = {shown(value)}: {self._planner.why_left_out(value)}",
            )
        device_id = self._payload.device_id({}, fields)
        return [
            Reading(
                device_id,
                received_at,
                received_at,
                {name: number},
                None,
                {},
                tags,
                None,
                topic,
                payload,
            )
        ]


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
