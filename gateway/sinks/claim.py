"""Claim a data directory at start: an exclusive lock per client id, then a write probe.

Recovery seals every `.open` segment of its client id, taking it for a crash's leftover. A
second gateway on the same directory with the same client id would seal the first one's live
segments under it (its next rotation then fails and nothing is acked again). So each gateway
holds `flock(LOCK_EX)` on `<data_dir>/<client_id>.lock` (which records its PID) from before
recovery until it stops, and a second one refuses to start. The kernel drops the lock when its
process dies, however it dies: recovery after SIGKILL needs nothing. Dead-letter files live in
`<data_dir>/dead-letter/`, under the same lock.

A directory that cannot take a file is found at start, not at the first message: a probe file
is created, written, fsynced and removed in the data and the dead-letter directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gateway.config import FilesConfig
from gateway.errors import StartupError
from gateway.layout import DEAD_LETTER_DIR
from gateway.sinks.segment import fsync_dir, make_dirs

LOCK_SUFFIX = ".lock"
PROBE_NAME = ".write-probe"


class DataDirLock:
    """An exclusive lock on `<directory>/<owner>.lock`, held until release() or process exit."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def take(cls, directory: Path, owner: str, who: str = "") -> DataDirLock:
        """Lock for `owner` (a client id), making the directory if needed; StartupError naming
        the directory and the PID that holds it when another process does (`who` says what
        that process is: another gateway with this client id unless given)."""
        path = directory / f"{owner}{LOCK_SUFFIX}"
        fd = _open_lock_file(directory, path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _recorded_pid(fd)
            os.close(fd)
            other = who or f"another gateway with client id {owner!r}"
            instead = "another data directory" if who else "another data directory or client id"
            raise StartupError(
                "data_dir_in_use",
                f"data directory {directory} is in use by {other} (pid {pid or 'unknown'}, "
                f"lock {path}): stop it first, or give this one {instead}",
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StartupError(
                "data_dir_not_writable", f"cannot lock {path}: {exc.strerror}"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # no stale PID for a reader to believe
            os.close(self._fd)
            self._fd = -1


def lock_holder(directory: Path, owner: str) -> int | None:
    """The PID holding `owner`'s lock in `directory` (0 when it is held but unrecorded), or
    None when nobody holds it. Takes the lock for an instant: ask before starting the owner."""
    path = directory / f"{owner}{LOCK_SUFFIX}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _recorded_pid(fd)
    finally:
        os.close(fd)  # releases the lock if we took it
    return None


async def claim_data_dir(files: FilesConfig, client_id: str) -> DataDirLock:
    """Lock `files.data_dir` for `client_id`, then probe it and its dead-letter directory.

    StartupError when the directory is taken or either directory cannot take a file; the
    probe has `files.write_timeout_s` (a hung disk must not hang the start)."""
    lock = DataDirLock.take(files.data_dir, client_id)
    try:
        for what, directory in (
            ("data directory", files.data_dir),
            ("dead-letter directory", files.data_dir / DEAD_LETTER_DIR),
        ):
            try:
                async with asyncio.timeout(files.write_timeout_s):
                    await asyncio.to_thread(probe_writable, directory, what)
            except TimeoutError:
                raise StartupError(
                    "data_dir_not_writable",
                    f"{what} {directory}: a probe write did not finish within "
                    f"{files.write_timeout_s:g}s",
                ) from None
    except BaseException:
        lock.release()
        raise
    return lock


def probe_writable(directory: Path, what: str = "directory") -> None:
    """Create, write, fsync and remove a file in `directory` (made if missing); blocking.
    StartupError naming the directory (as `what`) and the cause."""
    probe = directory / f"{PROBE_NAME}-{os.getpid()}"
    with _as_startup_error(what, directory):
        make_dirs(directory)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
        fsync_dir(directory)


def _open_lock_file(directory: Path, path: Path) -> int:
    with _as_startup_error("data directory", directory):
        make_dirs(directory)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


@contextlib.contextmanager
def _as_startup_error(what: str, directory: Path) -> Iterator[None]:
    """An OSError becomes a StartupError naming `what`, the directory and the cause."""
    try:
        yield
    except (FileExistsError, NotADirectoryError):
        raise StartupError(
            "data_dir_not_writable", f"{what} {directory} is not a directory (or a parent is not)"
        ) from None
    except OSError as exc:
        raise StartupError(
            "data_dir_not_writable", f"{what} {directory} is not writable: {exc.strerror}"
        ) from exc


def _recorded_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0
