"""Metrics, one registry passed in per gateway (prometheus_client is owned here and in http.py).

gateway.py     GatewayMetrics: every metric of one gateway
histogram.py   LoopHistogram: a histogram observed per reading on the event loop
collectors.py  metrics read at scrape time (values a mapping left out, sensor values)
storage.py     StorageMetrics: compaction and retention
http.py        HttpMetrics: the metrics port's own
workers.py     SupervisorMetrics, and MergedWorkers: the workers' metrics as one view
exposition.py  parse_exposition: Prometheus text -> samples
"""

from prometheus_client import CollectorRegistry

from gateway.metrics.exposition import Exposition, parse_exposition
from gateway.metrics.gateway import CHANNELS, LATENCY_BUCKETS, SINKS, GatewayMetrics
from gateway.metrics.histogram import LoopHistogram
from gateway.metrics.http import HttpMetrics
from gateway.metrics.storage import StorageMetrics
from gateway.metrics.workers import MergedWorkers, SupervisorMetrics

# So that other modules need not import prometheus_client themselves.
Registry = CollectorRegistry

__all__ = [
    "CHANNELS",
    "LATENCY_BUCKETS",
    "SINKS",
    "Exposition",
    "GatewayMetrics",
    "HttpMetrics",
    "LoopHistogram",
    "MergedWorkers",
    "Registry",
    "StorageMetrics",
    "SupervisorMetrics",
    "parse_exposition",
]
