"""Log setup: text for people, JSON lines for services; and the rate limit of repeated lines."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Protocol


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker:
            entry["worker"] = self._worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextStream(Protocol):
    """Where log lines go: stderr, or anything that writes text as stderr does."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class TextFormatter(logging.Formatter):
    """`2026-11-25T12:00:00.123+01:00 WARNING gateway.app: message`: local time, with its offset
    from UTC (RFC 3339), so that a line read elsewhere or across a DST change is unambiguous."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        local = time.localtime(record.created)
        offset = time.strftime("%z", local)  # +0100
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local)
        return f"{stamp}.{int(record.msecs):03d}{offset[:3]}:{offset[3:]}"


def setup_logging(level: str, fmt: str, worker: str = "", stream: TextStream | None = None) -> None:
    """Logs to `stream` (stderr); `worker` names the process when several run (`--processes`)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        where = f"[{worker}] " if worker else ""
        handler.setFormatter(
            TextFormatter(f"%(asctime)s %(levelname)-7s {where}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class OncePer:
    """Lets each kind of log line through once per `interval_s`, counting the ones held back.

    For causes that can repeat thousands of times a second (a broker refusing us, clients
    sending garbage): the first is logged, then one line per interval says how many more.
    `kind` must come from a fixed set (a reason code), never from network text.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def allow(self, kind: str) -> int | None:
        """None: hold this one back (counted). Else let it through: how many were held back
        since the last one let through."""
        now = time.monotonic()
        logged_at, held = self._last.get(kind, (now - self._interval_s, 0))
        if now - logged_at < self._interval_s:
            self._last[kind] = (logged_at, held + 1)
            return None
        self._last[kind] = (now, 0)
        return held

    def forget(self) -> None:
        """Let the next line of every kind through."""
        self._last.clear()
