"""Segment: one JSON Lines file, `<name>.jsonl.open` while written, `<name>.jsonl` once sealed."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiofiles
from aiofiles.threadpool.binary import AsyncFileIO

from gateway.layout import GZIP_SUFFIX, GZIP_TMP_SUFFIX, OPEN_SUFFIX, SEALED_SUFFIX, segment_name

__all__ = ["GZIP_LEVEL", "Segment", "fsync_dir", "gzip_sealed", "make_dirs", "segment_name"]

# zlib level 6 is the usual trade; gzip's default 9 costs about twice the CPU for ~3% on JSON.
GZIP_LEVEL = 6

T = TypeVar("T")


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (new files, renames) survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> None:
    """`mkdir -p`, fsyncing each parent that gained an entry, so the path survives a crash.

    A path component that exists but is not a directory raises FileExistsError or
    NotADirectoryError (both mean "not_a_directory" to the caller).
    """
    missing: list[Path] = []
    path = directory
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():  # another gateway sharing the tree may have made it meanwhile
                raise
        fsync_dir(path.parent)


def gzip_sealed(sealed: Path) -> None:
    """Compress a sealed segment to `.jsonl.gz`: temp file, fsync, rename, drop the original.

    Readers see either the `.jsonl` or the complete `.jsonl.gz`; a crash in between leaves both,
    which recovery resolves by removing the `.jsonl`. The `.gz` keeps the segment's modification
    time (its last write), also when recovery compresses it long after.
    """
    stem = sealed.name[: -len(SEALED_SUFFIX)]
    tmp = sealed.with_name(stem + GZIP_TMP_SUFFIX)
    with open(sealed, "rb") as src, open(tmp, "wb") as raw:
        # mtime=0 and the final name in the header: the same segment always compresses the same.
        with gzip.GzipFile(
            filename=stem + SEALED_SUFFIX, fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0
        ) as packed:
            shutil.copyfileobj(src, packed, 1 << 20)
        raw.flush()
        written_at = os.fstat(src.fileno()).st_mtime_ns
        os.utime(raw.fileno(), ns=(written_at, written_at))
        os.fsync(raw.fileno())
    os.rename(tmp, sealed.with_name(stem + GZIP_SUFFIX))
    fsync_dir(sealed.parent)
    os.unlink(sealed)
    fsync_dir(sealed.parent)


def _seal_file(open_path: Path, sealed_path: Path) -> None:
    os.rename(open_path, sealed_path)
    fsync_dir(open_path.parent)


def _discard_file(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _consume_result(future: asyncio.Future[Any]) -> None:
    # A timed-out operation finishes unobserved; read its outcome so asyncio does not warn.
    if not future.cancelled():
        future.exception()


class Segment:
    """One segment file. `size` counts bytes of completed writes, `durable_size` bytes fsynced.

    Every operation runs in a thread under `timeout_s`. A timeout cannot stop the thread, so each
    operation first waits for the previous one to end: a truncate never races a late write.
    """

    def __init__(self, directory: Path, name: str, timeout_s: float) -> None:
        self.directory = directory
        self.name = name
        self.open_path = directory / (name + OPEN_SUFFIX)
        self.sealed_path = directory / (name + SEALED_SUFFIX)
        self.size = 0
        self.durable_size = 0
        self.opened_at = time.monotonic()
        self._timeout_s = timeout_s
        self._file: AsyncFileIO | None = None
        # True when the file may hold bytes past `size` (a failed or undone write).
        self._tail_suspect = False
        self._renamed = False
        self._busy: asyncio.Future[Any] | None = None

    @property
    def dirty(self) -> bool:
        return self.size > self.durable_size

    async def create(self) -> None:
        """Make the directory and the file, then fsync the directory so the file survives."""
        await self._io(lambda: asyncio.to_thread(make_dirs, self.directory))

        def exclusive(path: str, flags: int) -> int:
            # Never append to someone else's file: the name must be new.
            return os.open(path, flags | os.O_EXCL, 0o644)

        # Unbuffered O_APPEND: a failed write leaves nothing queued in a Python buffer, and after
        # a truncate the next write lands at the new end of file.
        self._file = await self._io(
            lambda: aiofiles.open(self.open_path, "ab", buffering=0, opener=exclusive)
        )
        try:
            await self._io(lambda: asyncio.to_thread(fsync_dir, self.directory))
        except BaseException:
            await self._abandon()
            raise

    async def write(self, data: bytes) -> None:
        """Append all of `data`; on failure the file is cut back to `size` before the next write."""
        file = self._require_file()
        await self._repair_tail()
        self._tail_suspect = True
        await self._io(lambda: self._write_all(file, data))
        self._tail_suspect = False
        self.size += len(data)

    def rewind(self, size: int) -> None:
        """Forget bytes past `size` (an undone or unsynced write); they are cut off lazily."""
        if size < self.size:
            self.size = size
            self.durable_size = min(self.durable_size, size)
            self._tail_suspect = True

    async def sync(self) -> None:
        """fsync the file if it holds unsynced bytes."""
        if not self.dirty:
            return
        file = self._require_file()
        size = self.size
        await self._io(lambda: asyncio.to_thread(os.fsync, file.fileno()))
        self.durable_size = size

    async def seal(self, compress: bool) -> bool:
        """fsync, close, rename to `.jsonl`, fsync the directory, optionally gzip.

        Safe to call again after a failure. Returns False when the segment was empty and was
        removed instead (nothing to read, so nothing to seal).
        """
        if self._file is not None:
            await self._repair_tail()
            await self.sync()
            file, self._file = self._file, None
            await self._io(file.close)
        if self.size == 0:
            await self._io(lambda: asyncio.to_thread(_discard_file, self.open_path))
            return False
        if not self._renamed:
            await self._io(lambda: asyncio.to_thread(_seal_file, self.open_path, self.sealed_path))
            self._renamed = True
        if compress:
            await self._io(lambda: asyncio.to_thread(gzip_sealed, self.sealed_path))
        return True

    async def _abandon(self) -> None:
        """Best effort after a failed create: close and remove the empty file."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                await self._io(file.close)
                await self._io(lambda: asyncio.to_thread(_discard_file, self.open_path))
            except OSError:
                pass  # an empty `.open` file is removed by recovery at the next start

    async def _repair_tail(self) -> None:
        if self._tail_suspect:
            file = self._require_file()
            await self._io(lambda: file.truncate(self.size))
            self._tail_suspect = False

    @staticmethod
    async def _write_all(file: AsyncFileIO, data: bytes) -> None:
        # A raw write may be short (e.g. the disk fills mid-way); the next call reports why.
        view = memoryview(data)
        while view:
            written = await file.write(view)
            view = view[written:]

    def _require_file(self) -> AsyncFileIO:
        if self._file is None:
            raise RuntimeError(f"segment {self.name} is not open")
        return self._file

    async def _io(self, operation: Callable[[], Awaitable[T]]) -> T:
        async with asyncio.timeout(self._timeout_s):
            if self._busy is not None and not self._busy.done():
                await asyncio.wait({self._busy})
            task = asyncio.ensure_future(operation())
            task.add_done_callback(_consume_result)
            self._busy = task
            return await asyncio.shield(task)
