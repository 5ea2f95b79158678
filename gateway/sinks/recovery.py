"""Crash recovery of one client id's segments: cut torn lines, seal, tidy gzips, find the seq."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from gateway.layout import (
    GZIP_SUFFIX,
    GZIP_TMP_SUFFIX,
    OPEN_SUFFIX,
    SEALED_SUFFIX,
    SEGMENT_SUFFIXES,
)
from gateway.segment_reader import end_of_last_line
from gateway.sinks.segment import fsync_dir, gzip_sealed

_TAIL_CHUNK_BYTES = 64 * 1024


@dataclass(slots=True)
class Recovered:
    """What recovery found and did; `segments`: this client id's sealed segments, as left."""

    next_seq: int = 1
    torn_lines: int = 0
    sealed: int = 0
    segments: list[Path] = field(default_factory=list)


def recover_segments(root: Path, partition_glob: str, client_id: str, compress: bool) -> Recovered:
    """Repair what a crash of this client id left under `root`; blocking, run it in a thread.

    Only names `<client_id>-<seq>.…` are touched: other gateways may share the directory and
    their `.open` files are theirs, alive or not. A segment keeps its modification time (the
    time of its last write) through recovery: the dedupe window's seeding picks segments by it.
    """
    # The seq is followed directly by `.jsonl`, so client id `gw` never matches `gw-2-00000001`.
    pattern = re.compile(
        rf"^{re.escape(client_id)}-(\d{{8,}})"
        "(" + "|".join(map(re.escape, SEGMENT_SUFFIXES)) + ")$"
    )
    result = Recovered()
    last_seq = 0
    for directory in sorted(root.glob(partition_glob)):
        if not directory.is_dir():
            continue
        found: dict[str, set[str]] = {}
        for entry in os.scandir(directory):
            match = pattern.match(entry.name)
            if match:
                last_seq = max(last_seq, int(match[1]))
                stem = entry.name[: -len(match[2])]
                found.setdefault(stem, set()).add(match[2])
        for stem, suffixes in sorted(found.items()):
            kept = _recover_one(directory, stem, suffixes, compress, result)
            if kept is not None:
                result.segments.append(kept)
    result.next_seq = last_seq + 1
    return result


def _recover_one(
    directory: Path, stem: str, suffixes: set[str], compress: bool, result: Recovered
) -> Path | None:
    """Repair one segment; the sealed file it is now (None when nothing is left)."""
    base = directory / stem
    if GZIP_TMP_SUFFIX in suffixes:  # a gzip that never finished; the source is still there
        os.unlink(f"{base}{GZIP_TMP_SUFFIX}")
    if GZIP_SUFFIX in suffixes and SEALED_SUFFIX in suffixes:
        # The .gz was complete (fsynced before its rename); the crash came before the unlink.
        os.unlink(f"{base}{SEALED_SUFFIX}")
        fsync_dir(directory)
    if compress and SEALED_SUFFIX in suffixes and GZIP_SUFFIX not in suffixes:
        # Sealed but not yet compressed when the crash came (or gzip was turned on since).
        gzip_sealed(Path(f"{base}{SEALED_SUFFIX}"))
        return Path(f"{base}{GZIP_SUFFIX}")
    if OPEN_SUFFIX not in suffixes:
        if GZIP_SUFFIX in suffixes:
            return Path(f"{base}{GZIP_SUFFIX}")
        return Path(f"{base}{SEALED_SUFFIX}") if SEALED_SUFFIX in suffixes else None
    open_path = Path(f"{base}{OPEN_SUFFIX}")
    kept, torn = _cut_torn_tail(open_path)
    result.torn_lines += torn
    if kept == 0:
        open_path.unlink()
        fsync_dir(directory)
        return None
    sealed = Path(f"{base}{SEALED_SUFFIX}")
    os.rename(open_path, sealed)
    fsync_dir(directory)
    result.sealed += 1
    if compress:
        gzip_sealed(sealed)
        return Path(f"{base}{GZIP_SUFFIX}")
    return sealed


def _cut_torn_tail(path: Path) -> tuple[int, int]:
    """Truncate after the last newline and fsync; return (bytes kept, torn lines cut: 0 or 1)."""
    with open(path, "r+b", buffering=0) as file:
        size = file.seek(0, os.SEEK_END)
        keep = end_of_last_line(file, size, _TAIL_CHUNK_BYTES)
        if keep < size:
            written_at = os.fstat(file.fileno()).st_mtime_ns
            file.truncate(keep)
            os.utime(file.fileno(), ns=(written_at, written_at))  # the cut is not a write
        os.fsync(file.fileno())
    return keep, int(keep < size)
