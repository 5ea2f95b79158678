"""GET a URL, and read a gateway's /metrics as `gateway top` does (gateway/top/scrape.py's
fetch and Scrape: one parser for the gateway, its tools, its tests and its benchmarks)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterable

from gateway.top.scrape import Scrape, fetch

__all__ = [
    "Scrape",
    "get",
    "get_sync",
    "merge",
    "scrape",
    "scrape_sync",
    "stored",
    "total",
    "value",
]

WRITTEN = "gateway_readings_written_total"
REJECTED = "gateway_readings_rejected_total"


def get_sync(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """(status, body); an HTTP error status is an answer too. OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get_sync, url)


def scrape_sync(url: str, timeout_s: float = 5.0) -> Scrape:
    """The /metrics of `url` (a base URL or the /metrics URL itself); OSError unless 200."""
    return fetch(url, timeout_s)


async def scrape(url: str) -> Scrape:
    return await asyncio.to_thread(fetch, url)


def value(samples: Scrape, name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0 when absent (a counter that never moved)."""
    return sum(v for got, v in samples.samples.get(name, ()) if got == labels)


def total(samples: Scrape, name: str) -> float:
    """Sum over all label sets of one sample name."""
    return samples.value(name)


def stored(samples: Scrape) -> float:
    """Readings that are durable: in a data file or a dead-letter file."""
    return samples.value(WRITTEN) + samples.value(REJECTED)


def merge(scrapes: Iterable[Scrape]) -> Scrape:
    """Several gateways as one: their samples side by side (totals and buckets add up)."""
    at = 0.0
    merged: dict[str, list[tuple[dict[str, str], float]]] = {}
    for one in scrapes:
        at = max(at, one.at)
        for name, rows in one.samples.items():
            merged.setdefault(name, []).extend(rows)
    return Scrape(at, merged)
