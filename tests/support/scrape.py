"""Scrape /metrics over HTTP and parse it with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get_sync(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get_sync, url)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def scrape(base_url: str) -> Samples:
    status, text = await get(f"{base_url}/metrics")
    assert status == 200, f"/metrics answered {status}"
    return parse(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a counter that never moved)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    """Sum over all label sets of one sample name."""
    return sum(v for (n, _), v in samples.items() if n == name)
