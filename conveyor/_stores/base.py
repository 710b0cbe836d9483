"""What the checkpoint and its stores share: :class:`CheckpointBusy`,
:class:`CheckpointSummary` (both exported by ``conveyor``, from ``conveyor.checkpoint``),
the states recorded, and URLs shown without their password. (A module of its own so that
the stores, which ``conveyor.checkpoint`` picks, do not import it back.)
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

__all__ = ["DONE", "FAILED", "CheckpointBusy", "CheckpointSummary", "masked"]

DONE = "done"
FAILED = "failed"


class CheckpointBusy(RuntimeError):
    """Another run (in this process or another) is using the checkpoint."""


@dataclass(frozen=True)
class CheckpointSummary:
    """What a checkpoint holds: items ``done`` and ``failed`` (handled by a policy),
    and the last run's start, end (``None``: it did not end cleanly, or is running),
    outcome (``"finished"``, ``"failed"``, ``"closed"``, ``None``) and the items it
    skipped as done earlier. Times are ``time.time()`` values."""

    done: int
    failed: int
    last_run_started: float | None
    last_run_ended: float | None
    last_run_outcome: str | None
    last_run_skipped: int


def masked(url: str) -> str:
    """``url`` without its password (for messages and reprs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))
