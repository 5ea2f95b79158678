"""SubscriptionConfig and MappingConfig: what a subscription reads, and how a payload of any
shape becomes a reading (the configuration; the engine is decode/mapping.py)."""

from __future__ import annotations

import math
import re
from typing import Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.model import METRIC_NAME, UNIT_NAME
from gateway.presets import PRESETS
from gateway.topics import TopicTemplate, derive_filter, filter_mismatch, filter_wider, unshared

# A subscription's name labels metrics: a safe name, as a client id.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

BUILTIN_FORMATS = ("json", "senml", "bare")
MAPPING_FORMAT = "mapping"
FORMAT_NAMES: tuple[str, ...] = (*BUILTIN_FORMATS, MAPPING_FORMAT, *PRESETS)
DEFAULT_TEMPLATE = "sensors/{site}/{device_id}/telemetry"
# Tag names become columns (`tag_<name>`); their values are kept up to this length.
TAG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_TAG_VALUE = 256
DEFAULT_ENUMS = {"ON": 1.0, "OFF": 0.0, "on": 1.0, "off": 0.0, "open": 1.0, "closed": 0.0}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(NamedTuple):
    """One place a value may come from: the receipt time, the topic (its {device_id} or last
    level; a named field; a level by index), or a dotted path into the payload."""

    kind: Literal["received", "topic", "payload"]
    field: str = ""  # topic: a template field name ("" with level None: the default rule)
    level: int | None = None  # topic: a level by number, negative from the end
    path: tuple[str, ...] = ()  # payload: keys (and list indices as digits)

    @property
    def path_text(self) -> str:
        return ".".join(self.path)

    def __str__(self) -> str:
        if self.kind == "payload":
            return "payload:" + ".".join(self.path)
        if self.kind == "topic" and (self.field or self.level is not None):
            return f"topic:{self.field or self.level}"
        return self.kind


def parse_path(text: str) -> tuple[str, ...]:
    """`uplink_message.decoded_payload` -> ("uplink_message", "decoded_payload"); ValueError
    for an empty segment. A key holding a dot cannot be named (documented)."""
    parts = tuple(text.split("."))
    if not text or any(not part for part in parts):
        raise ValueError(f"{text!r} is not a payload path (keys joined by '.', none empty)")
    return parts


def parse_sources(
    text: str, *, received: bool = False, topic: bool = True, payload: bool = True
) -> tuple[Source, ...]:
    """`payload:ts|received` -> the alternatives, first present wins; ValueError naming the
    part that is not allowed here."""
    sources: list[Source] = []
    for part in text.split("|"):
        kind, sep, rest = part.strip().partition(":")
        if kind == "received" and received and not sep:
            sources.append(Source("received"))
        elif kind == "topic" and topic:
            if not sep:
                sources.append(Source("topic"))
            elif re.fullmatch(r"-?[0-9]+", rest):
                sources.append(Source("topic", level=int(rest)))
            elif re.fullmatch(r"[a-z_]+", rest):
                sources.append(Source("topic", field=rest))
            else:
                raise ValueError(f"{part!r}: topic:<field> or topic:<level number>")
        elif kind == "payload" and payload and sep:
            sources.append(Source("payload", path=parse_path(rest)))
        else:
            allowed = [
                name
                for name, ok in (
                    ("received", received),
                    ("topic", topic),
                    ("payload:<path>", payload),
                )
                if ok
            ]
            raise ValueError(f"{part!r}: expected {' | '.join(allowed)}")
    if any(s.kind == "received" for s in sources[:-1]):
        raise ValueError(f"{text!r}: 'received' is always there, so it can only come last")
    return tuple(sources)


# Which kinds of source each setting may name (parse_sources' keywords).
_SOURCE_KINDS: dict[str | None, dict[str, bool]] = {
    "device_id": {},
    "ts": {"received": True, "topic": False},
    "seq": {"topic": False},
}


class MappingConfig(_Frozen):
    """How a payload of any shape becomes a reading. Paths are keys joined by '.' (nested
    objects are flattened the same way: `AM2301.Temperature`); globs use * and ?."""

    shape: Literal["object", "value"] = Field(
        "object",
        description="object: a JSON object whose number-like values are metrics; value: the "
        "whole payload is one value (a number, a JSON value or a bare word such as on).",
    )
    device_id: str = Field(
        "topic",
        min_length=1,
        description="Where the device id comes from: topic (the template's {device_id}, else "
        "the topic's last level), topic:<field>, topic:<level> (0 first, -1 last) or "
        "payload:<path>; alternatives joined by |, the first present wins.",
    )
    ts: str = Field(
        "received",
        min_length=1,
        description="Where the device time comes from: payload:<path> (ISO 8601, or epoch "
        "seconds or milliseconds) or received (the receipt time); e.g. payload:ts|received.",
    )
    seq: str = Field(
        "",
        description="payload:<path> of a sequence number (a whole number >= 0); a reading "
        "without one has none. Empty: no seq.",
    )
    root: str = Field(
        "",
        description="payload:<path> (without the payload: prefix) of the object whose values "
        "are the metrics; empty: the whole payload. Missing in a message: missing_field.",
    )
    metric_prefix: str = Field(
        "",
        description="topic:<field> or topic:<level> put before every metric name with a '.' "
        "(e.g. the component of a Shelly status topic); empty: none.",
    )
    value_name: str = Field(
        "value",
        description="shape = value: the metric's name, or topic:<field> / topic:<level>.",
    )
    include: tuple[str, ...] = Field(
        ("*",), description="Globs over flattened payload paths: only these may be metrics."
    )
    exclude: tuple[str, ...] = Field(
        (),
        description="Globs over flattened payload paths never read; a glob naming an object "
        "leaves out everything under it.",
    )
    rename: dict[str, str] = Field(
        default_factory=dict,
        description="Flattened payload path -> stored metric name (`AM2301.Temperature` = "
        "`temperature`).",
    )
    units: dict[str, str] = Field(
        default_factory=dict, description="Stored metric name (or glob) -> unit, e.g. Cel."
    )
    unit_fields: dict[str, str] = Field(
        default_factory=dict,
        description="Stored metric name (or glob) -> payload path of a string holding its "
        "unit (Tasmota's TempUnit); that field is not a metric itself.",
    )
    unit_names: dict[str, str] = Field(
        default_factory=dict,
        description="Unit as a unit field sends it -> unit stored (C = Cel).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Static tags added to every reading."
    )
    tag_fields: dict[str, str] = Field(
        default_factory=dict,
        description="Tag name -> payload path kept as a tag (its string or number); that "
        "field is not a metric.",
    )
    numeric_strings: bool = Field(True, description='Read "21.5" as the number 21.5.')
    booleans: bool = Field(True, description="Read true/false as 1/0 (else leave them out).")
    enums: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_ENUMS),
        description="Strings read as numbers, exactly as written (ON = 1, closed = 0).",
    )
    strings: Literal["leave_out", "tag"] = Field(
        "leave_out",
        description="Any other string: leave_out (counted in "
        "gateway_mapping_values_left_out_total, shown by gateway parse) or tag (kept as a "
        "tag named like the metric, up to 256 characters).",
    )
    no_metrics: Literal["reject", "drop"] = Field(
        "reject",
        description="A message with nothing left to store: reject (dead-letter it, naming "
        "what was left out) or drop (ack it, counted as dropped{reason=filtered}).",
    )

    @field_validator("device_id", "ts", "seq")
    @classmethod
    def _sources(cls, value: str, info: ValidationInfo) -> str:
        if value:  # only seq may be empty; device_id and ts have min_length 1
            parse_sources(value, **_SOURCE_KINDS[info.field_name])
        return value

    @field_validator("root")
    @classmethod
    def _root_path(cls, value: str) -> str:
        if value:
            parse_path(value)
        return value

    @field_validator("metric_prefix")
    @classmethod
    def _prefix_source(cls, value: str) -> str:
        if value and (len(parse_sources(value, payload=False)) != 1 or ":" not in value):
            raise ValueError("one topic:<field> or topic:<level>")
        return value

    @field_validator("value_name")
    @classmethod
    def _value_name(cls, value: str) -> str:
        if value.startswith("topic:"):
            parse_sources(value, payload=False)
        elif not METRIC_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a metric name (letters, digits, _ . : -)")
        return value

    @field_validator("rename")
    @classmethod
    def _renamed_to_metric_names(cls, value: dict[str, str]) -> dict[str, str]:
        for path, name in value.items():
            parse_path(path)
            if not METRIC_NAME.fullmatch(name):
                raise ValueError(f"{path} = {name!r}: not a metric name (letters, digits, _ . : -)")
        return value

    @field_validator("units", "unit_names")
    @classmethod
    def _unit_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key, unit in value.items():
            if not UNIT_NAME.fullmatch(unit):
                raise ValueError(f"{key} = {unit!r}: a unit is 1-32 printable ASCII, no spaces")
        return value

    @field_validator("unit_fields", "tag_fields")
    @classmethod
    def _payload_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value.values():
            parse_path(path)
        return value

    @field_validator("tags", "tag_fields")
    @classmethod
    def _tag_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not TAG_NAME.fullmatch(name):
                raise ValueError(f"tag name {name!r}: letters, digits and _ (it names a column)")
        return value

    @field_validator("tags")
    @classmethod
    def _tag_lengths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, tag in value.items():
            if len(tag) > MAX_TAG_VALUE:
                raise ValueError(f"tag {name}: at most {MAX_TAG_VALUE} characters")
        return value

    @field_validator("enums")
    @classmethod
    def _finite_enums(cls, value: dict[str, float]) -> dict[str, float]:
        for text, number in value.items():
            if not math.isfinite(number):
                raise ValueError(f"{text} = {number}: not a finite number")
        return value

    def topic_sources(self) -> list[tuple[str, Source]]:
        """(field name, source) of every setting that reads the topic."""
        found = [("device_id", s) for s in parse_sources(self.device_id) if s.kind == "topic"]
        for name in ("metric_prefix", "value_name"):
            text = getattr(self, name)
            if text.startswith("topic:"):
                found.append((name, parse_sources(text, payload=False)[0]))
        return found


class SubscriptionConfig(_Frozen):
    """One topic filter, what its payloads look like and how its topic levels are named."""

    name: str = Field(
        "",
        description="Names the subscription in metrics (the `subscription` label), logs and "
        "/readyz; its index (0, 1, ...) when empty.",
    )
    filter: str = Field(
        "",
        description="MQTT topic filter; `$share/<group>/<filter>` for a shared subscription. "
        "Derived from the template (each {field} becomes +) when empty. One that cannot match "
        "the template fails at start; one wider than it is warned about.",
    )
    template: str | None = Field(
        None,
        description="Names the topic levels: literals, {field} (kept as a tag; {device_id} "
        "names the device, {metric} the metric of a bare value), + (any one level) and a last "
        "# (any levels). Unset: the preset's; else the filter itself, when one is given; else "
        "sensors/{site}/{device_id}/telemetry.",
    )
    qos: Literal[0, 1] = Field(
        1, description="1 = at least once (acked after fsync); 0 = at most once."
    )
    format: str = Field(
        "json",
        description="json: a reading object or an array of them; senml: RFC 8428 SenML JSON; "
        "bare: a number, metric named by the topic's {metric}; mapping: as [mapping] says; "
        "or a preset: " + ", ".join(PRESETS) + ".",
    )
    mapping: MappingConfig | None = Field(
        None,
        description="format = mapping: the whole mapping; with a preset: fields that override "
        "the preset's.",
    )

    @field_validator("name")
    @classmethod
    def _label_value(cls, value: str) -> str:
        if value and not _LABEL_VALUE.fullmatch(value):
            raise ValueError("use 1-128 of A-Z a-z 0-9 . _ - (it labels metrics), starting alnum")
        return value

    def label(self, index: int) -> str:
        """The `subscription` label: the configured name, else the index."""
        return self.name or str(index)

    @field_validator("template")
    @classmethod
    def _template_levels(cls, value: str | None) -> str | None:
        if value is not None:
            TopicTemplate(value)  # ValueError naming the level
        return value

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMAT_NAMES:
            raise ValueError(f"{value!r} is not one of {', '.join(FORMAT_NAMES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SubscriptionConfig:
        template = self.effective_template
        if self.mapping is not None and self.format in BUILTIN_FORMATS:
            raise ValueError(f"mapping is for format = 'mapping' or a preset, not {self.format!r}")
        if self.format == MAPPING_FORMAT and self.mapping is None:
            raise ValueError("format 'mapping' needs a [mapping] table")
        levels = set(template.split("/"))
        if self.format == "bare" and not {"{device_id}", "{metric}"} <= levels:
            raise ValueError("format 'bare' needs {device_id} and {metric} in the template")
        if self.filter:
            problem = filter_mismatch(self.filter, template)
            if problem is not None:
                raise ValueError(problem)
        mapping = self.effective_mapping
        if mapping is not None:
            fields = TopicTemplate(template).fields
            for setting, source in mapping.topic_sources():
                if source.field and source.field not in fields:
                    raise ValueError(
                        f"mapping.{setting}: {str(source)!r} names no field of template "
                        f"{template!r} (fields: {', '.join(fields) or 'none'})"
                    )
        return self

    @property
    def filter_warning(self) -> str | None:
        """Said at start and by check-config when the filter also delivers topics the template
        cannot read (dead-lettered as topic_mismatch)."""
        return filter_wider(self.filter, self.effective_template) if self.filter else None

    @property
    def preset(self) -> str | None:
        return self.format if self.format in PRESETS else None

    @property
    def preset_template(self) -> str | None:
        preset = PRESETS.get(self.format)
        return preset.template if preset is not None else None

    @property
    def effective_template(self) -> str:
        """The template: as given; else the preset's; else the filter itself (every topic it
        delivers can be read: the device then comes from the payload, or is the topic's last
        level); else the default."""
        if self.template is not None:
            return self.template
        if self.preset_template is not None:
            return self.preset_template
        if self.filter:
            return unshared(self.filter)
        return DEFAULT_TEMPLATE

    @property
    def effective_filter(self) -> str:
        return self.filter or derive_filter(self.effective_template)

    @property
    def effective_mapping(self) -> MappingConfig | None:
        """The mapping of a mapping format: the preset's fields with the given ones over them."""
        preset = PRESETS.get(self.format)
        if preset is None:
            return self.mapping
        given = self.mapping
        overrides = given.model_dump(include=given.model_fields_set) if given is not None else {}
        return MappingConfig.model_validate({**preset.mapping, **overrides})
