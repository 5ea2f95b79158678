"""Topic templates: `sensors/{site}/{device_id}/telemetry` -> fields; filters derived from them.

A template level is a literal, a whole-level `{field}`, `+` (any one level, not kept) or, as the
last level, `#` (any number of levels, none included, not kept). The subscription filter follows
from the template (`{field}` -> `+`). A filter given as well must share topics with the template
(`filter_mismatch`: else every message would be dead-lettered as topic_mismatch, an error at
start) and should deliver only topics it can read (`filter_wider`: a warning at start).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from gateway.errors import DecodeError, RejectReason

DEVICE_ID_FIELD = "device_id"
METRIC_FIELD = "metric"
MAX_FIELD_LENGTH = 64
# How much of a received topic an error detail may quote: topics come from the network.
_QUOTE = 128

_FIELD_NAME = re.compile(r"[a-z_]+")
_Matcher = Callable[[str], "re.Match[str] | None"]


def safe_name_pattern(max_length: int) -> re.Pattern[str]:
    """A pattern whose `fullmatch` accepts a safe id (A-Z a-z 0-9 . _ -, alnum first) up to
    `max_length` characters. Safe ids may name files and label series, so nothing else gets in."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    return re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{max_length - 1}}}")


class SharedTags(dict[str, str]):
    """Tags shared by every reading of a topic: read-only, so that a step changing one reading's
    tags in place fails loudly instead of changing every later reading of that topic. A step
    replaces them: `reading.tags = {**reading.tags, "k": "v"}`."""

    __slots__ = ()

    def _refuse(self, *_: object, **__: object) -> None:
        raise TypeError("tags are shared by a topic's readings: replace reading.tags instead")

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]


class TopicFields(NamedTuple):
    """What a topic says about its readings: the device, the metric of a bare value, and the
    other fields, which become the readings' tags (shared by every reading of that topic: steps
    replace a reading's tags, never change them in place)."""

    device_id: str | None
    metric: str | None
    tags: dict[str, str]


SKIP_LEVEL = "+"
TAIL_LEVELS = "#"


class TopicTemplate:
    """A topic template such as `sensors/{site}/{device_id}/telemetry`; `match` names the levels
    of a received topic. Each level is a literal, a whole-level `{field}`, `+` (any one level) or,
    last, `#` (any number of levels, none included)."""

    __slots__ = ("_fields", "_levels", "_literals", "_tail", "fields", "template")

    def __init__(self, template: str, max_device_id_length: int = MAX_FIELD_LENGTH) -> None:
        self.template = template
        levels = template.split("/")
        field_ok = safe_name_pattern(MAX_FIELD_LENGTH).fullmatch
        device_ok = safe_name_pattern(max_device_id_length).fullmatch
        literals: list[tuple[int, str]] = []
        fields: list[tuple[int, str, _Matcher, RejectReason]] = []
        for index, level in enumerate(levels):
            if level.startswith("{") and level.endswith("}"):
                name = level[1:-1]
                if not _FIELD_NAME.fullmatch(name):
                    raise ValueError(f"template {template!r}: bad field name {level!r}")
                if any(name == seen[1] for seen in fields):
                    raise ValueError(f"template {template!r}: field {level!r} appears twice")
                if name == DEVICE_ID_FIELD:
                    fields.append((index, name, device_ok, "invalid_device_id"))
                else:
                    fields.append((index, name, field_ok, "topic_mismatch"))
            elif level == TAIL_LEVELS and index != len(levels) - 1:
                raise ValueError(f"template {template!r}: '#' must be the last level")
            elif level in (SKIP_LEVEL, TAIL_LEVELS):
                continue
            elif "{" in level or "}" in level or "+" in level or "#" in level:
                raise ValueError(
                    f"template {template!r}: level {level!r} must be a literal, a whole "
                    "{field}, + or a last #"
                )
            else:
                literals.append((index, level))
        self._tail = levels[-1] == TAIL_LEVELS
        # With a `#` tail the topic has at least the levels before it (`a/#` matches `a` too).
        self._levels = len(levels) - 1 if self._tail else len(levels)
        self._literals = tuple(literals)
        self._fields = tuple(fields)
        self.fields: tuple[str, ...] = tuple(field[1] for field in fields)

    def __repr__(self) -> str:
        return f"TopicTemplate({self.template!r})"

    @property
    def filter(self) -> str:
        """The subscription filter this template reads: each {field} becomes `+`."""
        return derive_filter(self.template)

    def match(self, topic: str) -> dict[str, str]:
        """Field -> value for a topic of this shape; DecodeError when it is not one."""
        levels = topic.split("/")
        if len(levels) != self._levels and not (self._tail and len(levels) >= self._levels):
            more = " or more" if self._tail else ""
            raise DecodeError(
                "topic_mismatch",
                f"topic {topic[:_QUOTE]!r} has {len(levels)} levels, "
                f"template {self.template!r} has {self._levels}{more}",
            )
        for index, literal in self._literals:
            if levels[index] != literal:
                raise DecodeError(
                    "topic_mismatch",
                    f"topic {topic[:_QUOTE]!r}: level {index} is not {literal!r}",
                )
        found: dict[str, str] = {}
        for index, name, is_safe, reason in self._fields:
            value = levels[index]
            if is_safe(value) is None:
                raise DecodeError(reason, f"topic level {name} = {value[:64]!r} is not a safe id")
            found[name] = value
        return found

    def fields_of(self, topic: str) -> TopicFields:
        """`match`, split into the device, the metric and the tags; DecodeError as `match`."""
        found = self.match(topic)
        device_id, metric = found.pop(DEVICE_ID_FIELD, None), found.pop(METRIC_FIELD, None)
        return TopicFields(device_id, metric, SharedTags(found))


def derive_filter(template: str) -> str:
    """`sensors/{site}/{device_id}/telemetry` -> `sensors/+/+/telemetry` (`+`, `#` stay)."""
    return "/".join(
        SKIP_LEVEL if level.startswith("{") and level.endswith("}") else level
        for level in template.split("/")
    )


def filter_mismatch(topic_filter: str, template: str) -> str | None:
    """Words naming both when no topic the filter can deliver has the template's shape: every
    message would be dead-lettered (topic_mismatch), so this is a configuration error. None
    when they can match the same topic.

    Compared level by level, as patterns: a template `{field}` or `+` takes any one level (its
    value is checked per message), `#` any tail. The values a field accepts (safe ids) are not
    looked at here: they are a property of each device, not of the configuration.
    """
    wanted, _, shape = _levels(topic_filter, template)
    if _could_overlap(wanted, shape):
        return None
    return (
        f"filter {topic_filter!r} and template {template!r} cannot match the same topic: no "
        "message the filter delivers can be read"
    )


def filter_wider(topic_filter: str, template: str) -> str | None:
    """Words naming both when the filter also delivers topics the template cannot read (those
    messages are dead-lettered as topic_mismatch: worth a warning, as a wide filter may be
    meant); None when every topic it delivers has the template's shape, or none does (see
    `filter_mismatch`)."""
    wanted, named, shape = _levels(topic_filter, template)
    if not _could_overlap(wanted, shape):
        return None
    pair = f"filter {topic_filter!r} and template {template!r}"
    # They overlap, so neither is longer without a `#` where the other ends.
    for index, level in enumerate(wanted):
        mine = shape[index] if index < len(shape) else TAIL_LEVELS
        if mine == TAIL_LEVELS:
            return None
        if level == TAIL_LEVELS:
            return (
                f"{pair}: from level {index} the filter's '#' delivers topics of any shape, the "
                f"template reads only {'/'.join(named[index:])!r} there; those others are "
                "dead-lettered (topic_mismatch). Narrow the filter or end the template with '#'"
            )
        if mine not in (SKIP_LEVEL, level):
            return (
                f"{pair}: at level {index} the filter takes {level!r}, the template only "
                f"{named[index]!r}; those others are dead-lettered (topic_mismatch)"
            )
    return None


def _levels(topic_filter: str, template: str) -> tuple[list[str], list[str], list[str]]:
    """The filter's levels, the template's, and the template's as a filter would have them."""
    named = template.split("/")
    shape = [SKIP_LEVEL if lvl.startswith("{") else lvl for lvl in named]
    return unshared(topic_filter).split("/"), named, shape


def _could_overlap(wanted: list[str], shape: list[str]) -> bool:
    """Whether some topic matches both the filter and the template shape."""
    for index in range(max(len(wanted), len(shape))):
        mine = shape[index] if index < len(shape) else None
        level = wanted[index] if index < len(wanted) else None
        if TAIL_LEVELS in (level, mine):
            return True  # the other side's remaining levels (or none) fit a `#`
        if level is None or mine is None:
            return False
        if SKIP_LEVEL not in (level, mine) and level != mine:
            return False
    return True


def unshared(topic_filter: str) -> str:
    """A filter without its `$share/<group>/` prefix (MQTT 5 §4.8.2)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether a topic matches a filter with `+` and `#` wildcards (MQTT 3.1.1 §4.7).

    Topics starting with `$` are not matched by a filter starting with a wildcard (§4.7.2).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    wanted = topic_filter.split("/")
    for index, level in enumerate(wanted):
        if level == "#":
            return True  # also matches the parent level itself: `a/#` matches `a`
        if index >= len(levels):
            return False
        if level not in ("+", levels[index]):
            return False
    return len(levels) == len(wanted)
