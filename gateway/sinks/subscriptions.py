"""What the broker was last told to deliver to this client id, kept beside the data.

A persistent session keeps its subscriptions at the broker across restarts: a filter removed
from the config would keep delivering unless unsubscribed. The gateway writes the filters the
broker granted to `<data_dir>/<client_id>.subscriptions.json` (temp file, fsync, rename) and,
at the next connect, unsubscribes those no longer configured.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from gateway.sinks.segment import fsync_dir

SUFFIX = ".subscriptions.json"


def remembered_subscriptions(data_dir: Path, client_id: str) -> list[str]:
    """The filters last granted to `client_id` (none when never written or unreadable)."""
    try:
        loaded = json.loads((data_dir / f"{client_id}{SUFFIX}").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    filters = loaded.get("filters") if isinstance(loaded, dict) else None
    return [f for f in filters if isinstance(f, str)] if isinstance(filters, list) else []


async def remember_subscriptions(data_dir: Path, client_id: str, filters: list[str]) -> None:
    """Write the filters the broker granted (in a thread: it fsyncs)."""
    await asyncio.to_thread(_write, data_dir, client_id, sorted(filters))


def _write(data_dir: Path, client_id: str, filters: list[str]) -> None:
    path = data_dir / f"{client_id}{SUFFIX}"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump({"client_id": client_id, "filters": filters}, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(data_dir)
