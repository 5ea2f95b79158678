"""Seeding the dedupe window at start: the identities of the readings written last.

What a SIGKILL can leave behind is readings written but not yet acked; the broker redelivers
their messages when the gateway is back, and only the files know they are stored. So before
the first message, the window (sinks/dedupe.py) is filled from this client id's segments that
were last written within `window_s` of its last write (their modification time, which recovery
and gzip keep), newest first:

- plain segments are read backwards from their end, one block at a time, so a large segment
  costs only the part that is needed; gzip segments are streamed through once;
- no more than `max_identities` are read (the newest);
- when Parquet files changed within the span may hold some of those segments (compaction ran
  meanwhile, e.g. in a sibling worker or cron), a `gateway identities` child process reads their
  rows received within the span: pyarrow stays out of this process (as for compaction).

Blocking: run it in a thread. Only what the files hold is seeded, so a crash between claiming
an identity and writing it cannot make a later redelivery look like a repeat.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.layout import GZIP_SUFFIX, HOUR_GLOB, PARQUET_NAME
from gateway.segment_reader import (
    BLOCK_BYTES,
    blocks,
    line_blocks_from_end,
    open_segment_file,
    whole_lines,
)
from gateway.sinks.dedupe import Identity
from gateway.sinks.lines import IdentityReader

log = logging.getLogger(__name__)

# The `gateway identities` child: at most this long (it reads only row groups within the span).
PARQUET_TIMEOUT_S = 120.0


@dataclass(slots=True)
class Seeded:
    """What seeding read: identity chunks oldest first, and how much it took."""

    chunks: list[list[Identity]] = field(default_factory=list)
    identities: int = 0
    segments: int = 0
    parquet_files: int = 0
    unreadable: int = 0
    skipped_lines: int = 0
    seconds: float = 0.0


# A reader of Parquet identities: (files, client id, since epoch s) -> chunks of data lines.
ParquetReader = Callable[[list[Path], str, float], Iterator[bytes]]


def seed_identities(
    root: Path,
    segments: list[Path],
    *,
    client_id: str,
    window_s: float,
    max_identities: int,
    read_parquet: ParquetReader | None = None,
) -> Seeded:
    """The identities of the readings in `segments` (this client id's, as recovery left them)
    written within `window_s` of the last write, newest `max_identities` at most."""
    started = time.perf_counter()
    result = Seeded()
    dated: list[tuple[float, Path]] = []
    for path in segments:
        try:
            dated.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # compacted and deleted since recovery listed it
            continue
    if not dated:
        return result
    dated.sort(reverse=True)
    since = dated[0][0] - window_s
    reader = IdentityReader()
    newest_first: list[list[Identity]] = []
    left = max_identities
    for mtime, path in dated:
        if mtime < since or left <= 0:
            break
        try:
            chunk = _tail_identities(path, reader, left)
        except FileNotFoundError:  # compacted since: its lines are in Parquet (read below)
            continue
        except (OSError, EOFError, zlib.error) as exc:
            # Seeding saves storing twice, never storing at all: go on without this segment.
            log.warning(
                "dedupe window: cannot read %s (%s); its readings may be stored twice "
                "if redelivered",
                path,
                exc,
            )
            result.unreadable += 1
            continue
        result.segments += 1
        if chunk:
            newest_first.append(chunk)
            left -= len(chunk)
    if left > 0:
        parquet = _changed_parquet(root, since)
        if parquet:
            reader_of = read_parquet or read_parquet_in_child
            rows: list[Identity] = []
            try:
                for lines in reader_of(parquet, client_id, since):
                    rows += reader(lines)
            except OSError as exc:
                log.warning("dedupe window: cannot read recent Parquet files (%s)", exc)
                result.unreadable += len(parquet)
            result.parquet_files = len(parquet)
            if rows:
                newest_first.append(rows[-left:])  # compacted: older than every segment left
    result.chunks = newest_first[::-1]
    result.identities = sum(map(len, result.chunks))
    result.skipped_lines = reader.skipped
    result.seconds = time.perf_counter() - started
    return result


def _tail_identities(path: Path, reader: IdentityReader, limit: int) -> list[Identity]:
    """The last `limit` identities of one segment, in line order."""
    if path.name.endswith(GZIP_SUFFIX):
        found: list[Identity] = []
        with open_segment_file(path) as source:
            for lines in whole_lines(blocks(source, BLOCK_BYTES)):
                found += reader(lines)
                if len(found) > 2 * limit:  # keep only the newest in memory
                    del found[:-limit]
        return found[-limit:]
    newest_first: list[list[Identity]] = []
    count = 0
    with open(path, "rb") as source:
        for lines in line_blocks_from_end(source, BLOCK_BYTES):
            found = reader(lines)
            newest_first.append(found)
            count += len(found)
            if count >= limit:
                break
    in_order = [identity for block in reversed(newest_first) for identity in block]
    return in_order[-limit:]


def _changed_parquet(root: Path, since: float) -> list[Path]:
    """Parquet files written at or after `since`: only they can hold readings written since."""
    changed = []
    for path in root.glob(f"{HOUR_GLOB}/{PARQUET_NAME}"):
        try:
            if path.stat().st_mtime >= since:
                changed.append(path)
        except FileNotFoundError:
            continue
    return sorted(changed)


def read_parquet_in_child(files: list[Path], client_id: str, since: float) -> Iterator[bytes]:
    """Run `gateway identities` and yield its output in blocks of whole lines."""
    argv = [
        sys.executable, "-m", "gateway", "identities",
        "--client-id", client_id, "--since", repr(since),
        *map(str, files),
    ]  # fmt: skip
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        stdout = child.stdout
        timer = threading.Timer(PARQUET_TIMEOUT_S, child.kill)
        timer.start()
        try:
            yield from whole_lines(blocks(stdout, BLOCK_BYTES))
        finally:
            timer.cancel()
            code = child.wait()
    if code != 0:
        # Seeding saves storing twice, never storing at all: go on without these rows.
        log.warning("reading recent Parquet files for the dedupe window failed (exit %d)", code)
