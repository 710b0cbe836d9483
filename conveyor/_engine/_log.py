"""What a run tells the ``conveyor`` logger (standard :mod:`logging`).

Only the failure path and a run's edges log, never an item on the happy path:

* **WARNING** a retry: the task, the item (shortened), the error, the attempt, the delay.
* **INFO** a call that failed for good and was skipped or emitted as a ``Failure``; a run's
  end when anything was retried, skipped or emitted (a count per task); which executor a
  stage runs on when it is not the loop (once per run), and each choice of ``"auto"``.
* **DEBUG** a call that failed for good under ``on_error="fail"`` (its exception reaches
  the consumer, annotated); the end of a run that had no failures; chunk sizes.

Each message is formatted only if the logger is enabled for its level.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import short_repr
from ._registry import kind_of

if TYPE_CHECKING:
    from .._spec import StageSpec
    from ..errors import RetryConfig
    from ._ledger import Account

logger = logging.getLogger("conveyor")

OUTCOMES = ("retried", "skipped", "emitted", "failed")


class LoggedPolicy(Protocol):
    """What the log reads of a stage's error policy (``_policy.Policy``)."""

    name: str
    batch: bool
    retry: RetryConfig


class LoggedStage(Protocol):
    """What the log reads of a stage (``_stage.Stage``)."""

    name: str
    spec: StageSpec
    executor: Any
    account: Account


class LoggedRun(Protocol):
    """What the log reads of a run (``_run.Run``)."""

    error: BaseException | None

    @property
    def finished(self) -> bool: ...

    @property
    def stages(self) -> Sequence[LoggedStage]: ...


def retrying(
    policy: LoggedPolicy, item: Any, exc: BaseException, attempt: int, delay: float
) -> None:
    if logger.isEnabledFor(logging.WARNING):
        logger.warning(
            "task %r failed on %s (attempt %d of %d): %s; retrying in %.2f s",
            policy.name,
            _what(item, policy.batch),
            attempt,
            policy.retry.max_attempts,
            _error(exc),
            delay,
        )


def gave_up(policy: LoggedPolicy, item: Any, exc: BaseException, outcome: str, batch: bool) -> None:
    """A call failed for good: ``outcome`` is ``"failed"``, ``"skipped"`` or ``"emitted"``."""
    level = logging.DEBUG if outcome == "failed" else logging.INFO
    if logger.isEnabledFor(level):
        action = {"failed": "raised", "skipped": "skipped", "emitted": "emitted as a Failure"}
        logger.log(
            level,
            "task %r gave up on %s (%s): %s",
            policy.name,
            _what(item, batch),
            action[outcome],
            _error(exc),
        )


def end_of_run_logged(run: LoggedRun) -> None:
    """The end of a run (finished, failed or closed early): what failed, per task."""
    how = "finished" if run.finished else "failed" if run.error is not None else "was closed"
    parts = []
    for stage in run.stages:
        tally = stage.account.outcomes()
        counts = [f"{tally[key]} {key}" for key in OUTCOMES if tally[key]]
        if counts:
            parts.append(f"{stage.name}: {', '.join(counts)}")
    level = logging.INFO if parts else logging.DEBUG
    if logger.isEnabledFor(level):
        names = " | ".join(stage.name for stage in run.stages)
        summary = "; ".join(parts) if parts else "no call failed"
        logger.log(level, "run of %s %s: %s", names, how, summary)


def executors_logged(run: LoggedRun) -> None:
    """Once per run: the stages that run off the loop, and on what."""
    if logger.isEnabledFor(logging.INFO):
        for stage in run.stages:
            if kind_of(stage.spec.options.executor).logged:
                logger.info("task %r runs on %r", stage.name, stage.executor)


def _what(item: Any, batch: bool) -> str:
    if batch and isinstance(item, list):
        return f"a batch of {len(item)} items {short_repr(item)}"
    return f"item {short_repr(item)}"


def _error(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
