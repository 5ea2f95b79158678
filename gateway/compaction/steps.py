"""The named steps of one partition's compaction (compact.py), where a hook may stop it."""

from __future__ import annotations

from collections.abc import Callable

# write: after each row group into the temp file; fsync: the temp file is complete and
# durable; rename: it has its final name; fsync_dir: the rename is durable; delete: after the
# first JSON Lines segment the file holds was deleted.
STEPS = ("write", "fsync", "rename", "fsync_dir", "delete")

# Called with a step's name; it may raise to stop there (the state is safe at every step).
Step = Callable[[str], None]


def no_step(_name: str) -> None:
    return None
