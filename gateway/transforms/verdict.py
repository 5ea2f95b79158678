"""Verdict: what one step made of a batch of readings."""

from __future__ import annotations

from gateway.errors import RejectReason
from gateway.model import Reading


class Verdict:
    """Readings kept (in order), rejected with a reason and detail, and how many were dropped.

    Every reading of the batch is in exactly one of the three.
    """

    __slots__ = ("dropped", "kept", "rejected")

    def __init__(
        self,
        kept: list[Reading],
        rejected: list[tuple[Reading, RejectReason, str]] | None = None,
        dropped: int = 0,
    ) -> None:
        self.kept = kept
        self.rejected = rejected if rejected is not None else []
        self.dropped = dropped

    def __repr__(self) -> str:
        return (
            f"Verdict(kept={len(self.kept)}, rejected={len(self.rejected)}, dropped={self.dropped})"
        )
