"""Reading segment files, whatever state they are in (open, sealed, gzipped): whole lines only.

Used by recovery, seeding, compaction, the audit and the tests, so that what counts as a line
(ends in a newline; an open segment's last line may be a write in progress) is decided once.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from gateway.layout import GZIP_SUFFIX, OPEN_SUFFIX, SEALED_SUFFIX

BLOCK_BYTES = 1 << 20


@contextlib.contextmanager
def open_segment(directory: Path, stem: str) -> Iterator[IO[bytes]]:
    """A sealed segment's bytes, uncompressed, by stem.

    The `.jsonl.gz` is preferred: it exists only once complete (written to a temp name, fsynced,
    renamed), and then the `.jsonl` is about to go. A `.jsonl` that vanishes while we look has
    just been gzipped, so the `.gz` is tried again.
    """
    base = directory / stem
    for suffix in (GZIP_SUFFIX, SEALED_SUFFIX, GZIP_SUFFIX):
        path = Path(f"{base}{suffix}")
        try:
            raw = path.open("rb")  # closed below; only its absence is caught here
        except FileNotFoundError:
            continue
        with raw:
            if suffix == GZIP_SUFFIX:
                with gzip.GzipFile(fileobj=raw) as unpacked:
                    yield unpacked  # type: ignore[misc]  # a GzipFile reads bytes like IO[bytes]
            else:
                yield raw
        return
    raise FileNotFoundError(f"segment {stem} in {directory}: neither {SEALED_SUFFIX} nor .gz")


@contextlib.contextmanager
def open_live_segment(directory: Path, stem: str) -> Iterator[IO[bytes]]:
    """An open segment's bytes; if it was sealed since it was listed, the sealed file's."""
    try:
        source = (directory / f"{stem}{OPEN_SUFFIX}").open("rb")
    except FileNotFoundError:
        with open_segment(directory, stem) as sealed:
            yield sealed
        return
    with source:
        yield source


@contextlib.contextmanager
def open_segment_file(path: Path) -> Iterator[IO[bytes]]:
    """One segment file's bytes, uncompressed when its name says `.jsonl.gz`."""
    with path.open("rb") as raw:
        if path.name.endswith(GZIP_SUFFIX):
            with gzip.GzipFile(fileobj=raw) as unpacked:
                yield unpacked  # type: ignore[misc]  # a GzipFile reads bytes like IO[bytes]
        else:
            yield raw


def complete_lines(source: IO[bytes]) -> Iterator[bytes]:
    """The non-blank lines that end in a newline: an open segment's last line may be a write
    in progress, and a crash may leave a torn one until recovery cuts it."""
    for line in source:
        if line.endswith(b"\n") and line.strip():
            yield line


def blocks(source: IO[bytes], block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """A stream in blocks of `block_bytes`, to its end."""
    return iter(lambda: source.read(block_bytes), b"")


def whole_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Blocks of a stream, re-cut to end at line ends (a last line without one comes last)."""
    carry = b""
    for block in chunks:
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            carry += block
            continue
        yield carry + block[:cut]
        carry = block[cut:]
    if carry:
        yield carry


def blocks_from_end(
    file: IO[bytes], end: int, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of a seekable file's blocks before `end`, last block first."""
    while end > 0:
        start = max(0, end - block_bytes)
        file.seek(start)
        yield start, file.read(end - start)
        end = start


def line_blocks_from_end(file: IO[bytes], block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """A seekable file's lines in blocks of whole lines, last block first (lines in file order
    within a block): a large segment's tail costs only the blocks that are read."""
    carry = b""  # a line whose start is in an earlier block
    for start, read in blocks_from_end(file, file.seek(0, os.SEEK_END), block_bytes):
        block = read + carry
        cut = block.find(b"\n") + 1 if start > 0 else 0
        if start > 0 and cut == 0:  # one line longer than a block
            carry = block
            continue
        carry, lines = block[:cut], block[cut:]
        if lines:
            yield lines


def end_of_last_line(file: IO[bytes], size: int, block_bytes: int) -> int:
    """The offset just past the last newline before `size` (0 when there is none)."""
    for start, block in blocks_from_end(file, size, block_bytes):
        newline = block.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
    return 0
