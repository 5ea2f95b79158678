"""The column rule: which Parquet column each part of a reading's JSON line becomes.

    device_id      string
    ts             timestamp[us, UTC]   (the line's ISO 8601 string, exact to the millisecond)
    received_at    timestamp[us, UTC]
    seq            int64, null when the reading had none
    tag_<name>     string per tag (topic template field), null where a reading lacks it
    <metric>       float64 per metric: the union over the partition, null where a reading lacks it
    units          map<string, string>: metric -> unit, as sent
    flags          list<string>: what steps flagged (empty when none)
    other_metrics  map<string, string>: only when some metric value was not a JSON number

A metric value that is an integer becomes its float64 (exact up to 2**53). Any other value
(a string, a boolean, null, an object) is not a number and cannot go into the metric's float64
column: it is kept, as its JSON text, in `other_metrics` under the metric's name, never dropped.
The gateway itself only ever stores finite floats, so this column appears only for lines written
by something else.

A metric whose name is one of the fixed columns above (or `date`/`hour`, the Hive partition
columns readers add) or starts with `tag_` or `metric_` is stored as `metric_<name>`, so every
name maps to exactly one column. The mapping travels in the file's key-value metadata
(`gateway.columns`), beside the segments the file holds (`gateway.segments`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
STRING_MAP = pa.map_(pa.string(), pa.string())
OTHER_METRICS = "other_metrics"
HEAD = (
    pa.field("device_id", pa.string()),
    pa.field("ts", TIMESTAMP),
    pa.field("received_at", TIMESTAMP),
    pa.field("seq", pa.int64()),
)
TAIL = (pa.field("units", STRING_MAP), pa.field("flags", pa.list_(pa.string())))
RESERVED = frozenset(
    [*(f.name for f in HEAD), *(f.name for f in TAIL), OTHER_METRICS, "date", "hour"]
)
TAG_PREFIX = "tag_"
METRIC_PREFIX = "metric_"
SEGMENTS_KEY = b"gateway.segments"
COLUMNS_KEY = b"gateway.columns"


def metric_column(name: str) -> str:
    """The column of metric `name` (injective: escaped names all start with `metric_`)."""
    if name in RESERVED or name.startswith((TAG_PREFIX, METRIC_PREFIX)):
        return METRIC_PREFIX + name
    return name


def tag_column(name: str) -> str:
    return TAG_PREFIX + name


@dataclass(slots=True)
class Shape:
    """What a partition's columns must hold: every metric and tag name, and whether any metric
    value was not a number."""

    metrics: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    other: bool = False

    def add(self, other: Shape) -> None:
        self.metrics |= other.metrics
        self.tags |= other.tags
        self.other = self.other or other.other

    def schema(self, segments: Iterable[str]) -> pa.Schema:
        """The Parquet schema, with the covered segments and the column mapping as metadata."""
        tags = sorted(self.tags)
        metrics = sorted(self.metrics)
        fields = [
            *HEAD,
            *(pa.field(tag_column(t), pa.string()) for t in tags),
            *(pa.field(metric_column(m), pa.float64()) for m in metrics),
            *TAIL,
        ]
        if self.other:
            fields.append(pa.field(OTHER_METRICS, STRING_MAP))
        columns = {tag_column(t): ["tag", t] for t in tags}
        columns |= {metric_column(m): ["metric", m] for m in metrics}
        metadata = {
            SEGMENTS_KEY: json.dumps(sorted(segments)).encode(),
            COLUMNS_KEY: json.dumps(columns, sort_keys=True).encode(),
        }
        return pa.schema(fields, metadata=metadata)


def shape_of(schema: pa.Schema) -> Shape:
    """The Shape a file of ours was written with (ValueError when it is not one of ours)."""
    metadata = schema.metadata or {}
    if COLUMNS_KEY not in metadata:
        raise ValueError("no gateway.columns metadata: not written by the gateway")
    shape = Shape(other=OTHER_METRICS in schema.names)
    for kind, name in json.loads(metadata[COLUMNS_KEY]).values():
        (shape.metrics if kind == "metric" else shape.tags).add(name)
    return shape


def segments_of(schema: pa.Schema) -> frozenset[str]:
    """The segments (file stems) whose lines a file of ours holds."""
    metadata = schema.metadata or {}
    if SEGMENTS_KEY not in metadata:
        raise ValueError("no gateway.segments metadata: not written by the gateway")
    return frozenset(json.loads(metadata[SEGMENTS_KEY]))
