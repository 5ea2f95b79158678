"""Prometheus text format -> samples, for readers of /metrics (`gateway top`)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Exposition = dict[str, list[tuple[dict[str, str], float]]]


def parse_exposition(text: str) -> Exposition:
    """Prometheus text format -> sample name -> [(labels, value)]; ValueError when malformed.

    Here because prometheus_client has one owner (STYLE.md §2); `gateway top` reads /metrics so.
    """
    samples: Exposition = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples
