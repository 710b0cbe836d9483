"""What a run tells the ``conveyor`` logger (standard :mod:`logging`).

Only the failure path and a run's edges log, never an item on the happy path:

* **WARNING** a retry: the task, the item (shortened), the error, the attempt, the delay.
  Under ``PipelineContext(retry_log="summary")`` no line per retry: one line per task that
  retried, at the end of the run (how many retries, on how many items, the commonest
  errors).
* **INFO** a call that failed for good and was skipped or emitted as a ``Failure``; a run's
  end when anything was retried, skipped or emitted (a count per task); which executor a
  stage runs on when it is not the loop (once per run), and each choice of ``"auto"``.
* **WARNING** a circuit breaker opened; **INFO** it is half-open, or closed again.
* **DEBUG** a call that failed for good under ``on_error="fail"`` (its exception reaches
  the consumer, annotated); the end of a run that had no failures; chunk sizes.

**Structured fields.** Every record also carries its facts as attributes of the
:class:`logging.LogRecord` (``extra=``), named with the ``conveyor_`` prefix so they never
clash with the record's own (``FIELDS`` lists them; docs/logging.md documents them): a JSON
formatter, or structlog's ``ExtraAdder``, gets fields rather than text. The run's own
fields (run id, pipeline) are fixed when the run is built (:class:`RunLog`), a stage's
(task) when its policy is (:class:`StageLog`); code that logs for a run without holding
its ``RunLog`` (the ``"auto"`` executor, process chunks, an error handler) finds its
fields in the run's :mod:`contextvars` context (``_log_fields``), where every call runs.

Each message is formatted only if the logger is enabled for its level.
"""

from __future__ import annotations

import contextvars
import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import short_repr
from . import _log_fields
from ._registry import kind_of

if TYPE_CHECKING:
    from .._spec import StageSpec
    from ..context import RetryLog
    from ..errors import RetryConfig
    from ._ledger import Account

logger = logging.getLogger("conveyor")

OUTCOMES = ("retried", "skipped", "emitted", "failed")

# The attributes a record of the ``conveyor`` logger may carry (each only where it
# applies), with what they hold. docs/logging.md has the same table; a test checks it.
FIELDS = {
    "conveyor_event": "what happened: retry, gave_up, retry_summary, run_end, executor, "
    "auto, window, limit_capped, loop_blocked, chunk, callback_failed, handler, "
    "circuit_open, circuit_half_open, circuit_closed",
    "conveyor_run_id": "the run's id (its context's pipeline_id)",
    "conveyor_pipeline": "the run's stages, 'fetch | parse'",
    "conveyor_task": "the task's name",
    "conveyor_item": "the item (or batch), shortened with reprlib",
    "conveyor_batch_size": "the batch's length (batch tasks)",
    "conveyor_attempt": "the attempt that failed (1 is the first call)",
    "conveyor_max_attempts": "retry_attempts: the attempts allowed in all",
    "conveyor_delay": "seconds until the next attempt (circuit_open: until a probe may start)",
    "conveyor_outcome": "retried, skipped, emitted, failed; a run's end: finished, failed, "
    "closed; a circuit breaker's new state: open, half_open, closed",
    "conveyor_error_type": "the exception's class name",
    "conveyor_error": "'Type: message', the message cut at 200 characters",
    "conveyor_executor": "where the task runs ('thread:4', 'process:2', auto's choice)",
    "conveyor_counts": "a run's end: {task: {outcome: count}} of the tasks that failed",
    "conveyor_retries": "a retry summary: the task's retries in the run",
    "conveyor_items": "a retry summary: the items (or batches) retried at least once",
    "conveyor_errors": "a retry summary: {exception class: retries}, commonest first",
    "conveyor_chunk_size": "process chunks: the next chunk's size",
    "conveyor_circuit": "a circuit breaker: its name, or its repr",
    "conveyor_failures": "circuit_open: the consecutive failures that opened it",
}


class LoggedStage(Protocol):
    """What the log reads of a stage (``_stage.Stage``)."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> StageSpec: ...
    @property
    def executor(self) -> Any: ...
    @property
    def account(self) -> Account: ...
    @property
    def policy(self) -> LoggedPolicy: ...


class LoggedPolicy(Protocol):
    """What the log reads of a stage's error policy (``_policy.Policy``)."""

    @property
    def log(self) -> StageLog: ...


class LoggedRun(Protocol):
    """What the log reads of a run (``_run.Run``)."""

    error: BaseException | None

    @property
    def finished(self) -> bool: ...

    @property
    def stages(self) -> Sequence[LoggedStage]: ...


class RunLog:
    """The log of one run: the fields every record of the run carries (its id, its
    pipeline), its records, and a :class:`StageLog` for each stage's policy. Built with the
    run, before anything logs; :meth:`install` puts the fields in the run's
    :mod:`contextvars` context."""

    __slots__ = ("fields", "retry_log")

    def __init__(self, run_id: str | None, names: Sequence[str], retry_log: RetryLog) -> None:
        self.fields: dict[str, Any] = {
            "conveyor_run_id": run_id,
            "conveyor_pipeline": " | ".join(names),
        }
        self.retry_log = retry_log

    def install(self, context: contextvars.Context) -> None:
        """Make this run's fields those ``_log_fields.run_fields`` finds for code running
        in ``context`` (the run's)."""
        _log_fields.install(context, self.fields)

    def stage(self, spec: StageSpec) -> StageLog:
        """The log of a stage of the run (its policy's)."""
        return StageLog(self, spec)

    def extra(self, event: str, **fields: Any) -> dict[str, Any]:
        """The ``extra=`` of a record of this run."""
        return {"conveyor_event": event, **self.fields, **fields}

    def log(self, level: int, event: str, message: str, *args: Any, **fields: Any) -> None:
        """A record of this run at ``level``: ``message % args``, with the run's fields,
        ``conveyor_event=event`` and ``fields`` (named with their prefix, each listed in
        ``FIELDS``)."""
        if logger.isEnabledFor(level):
            logger.log(level, message, *args, extra=self.extra(event, **fields))

    def info(self, event: str, message: str, *args: Any, **fields: Any) -> None:
        """An INFO record of this run (see :meth:`log`)."""
        self.log(logging.INFO, event, message, *args, **fields)

    def warning(self, event: str, message: str, *args: Any, **fields: Any) -> None:
        """A WARNING record of this run (see :meth:`log`)."""
        self.log(logging.WARNING, event, message, *args, **fields)

    def exception(self, event: str, message: str) -> None:
        """An ERROR record with the exception being handled."""
        logger.exception(message, extra=self.extra(event))

    def ended(self, run: LoggedRun) -> None:
        """The end of a run (finished, failed or closed early): under ``"summary"`` one
        line per task that retried, then what failed, per task."""
        for stage in run.stages:
            stage.policy.log.summarise()
        how = "finished" if run.finished else "failed" if run.error is not None else "closed"
        parts = []
        counts: dict[str, dict[str, int]] = {}
        for stage in run.stages:
            tally = stage.account.outcomes()
            failed = {key: tally[key] for key in OUTCOMES if tally[key]}
            if failed:
                parts.append(f"{stage.name}: {', '.join(f'{n} {k}' for k, n in failed.items())}")
                # (Two stages of one task: their counts added, as a dict has one key.)
                mine = counts.setdefault(stage.name, {})
                for key, count in failed.items():
                    mine[key] = mine.get(key, 0) + count
        level = logging.INFO if parts else logging.DEBUG
        if logger.isEnabledFor(level):
            summary = "; ".join(parts) if parts else "no call failed"
            logger.log(
                level,
                "run of %s %s: %s",
                self.fields["conveyor_pipeline"],
                "was closed" if how == "closed" else how,
                summary,
                extra=self.extra("run_end", conveyor_outcome=how, conveyor_counts=counts),
            )

    def executors(self, run: LoggedRun) -> None:
        """Once per run: the stages that run off the loop, and on what."""
        if logger.isEnabledFor(logging.INFO):
            for stage in run.stages:
                if kind_of(stage.spec.options.executor).logged:
                    logger.info(
                        "task %r runs on %r",
                        stage.name,
                        stage.executor,
                        extra=self.extra(
                            "executor",
                            conveyor_task=stage.name,
                            conveyor_executor=repr(stage.executor),
                        ),
                    )


class StageLog:
    """The log of one stage's error policy: its retries (each, or tallied for a summary)
    and the calls it gave up on."""

    __slots__ = (
        "batch",
        "errors",
        "examples",
        "fields",
        "items",
        "max_attempts",
        "name",
        "retries",
        "summary",
    )

    def __init__(self, run: RunLog, spec: StageSpec) -> None:
        self.name = spec.name
        self.batch = spec.batch
        retry: RetryConfig = spec.options.retry_config
        self.max_attempts = retry.max_attempts
        self.fields = {**run.fields, "conveyor_task": spec.name}
        self.summary = run.retry_log == "summary"
        self.retries = 0
        self.items = 0
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # an error's last message, by class

    def _about(
        self, event: str, item: Any, batch: bool, exc: BaseException
    ) -> tuple[str, str, dict[str, Any]]:
        """What a record about a call says of its item and its error (each formatted
        once): the item as the message shows it, the error, the record's fields."""
        shown = short_repr(item)
        error = _error(exc)
        extra = {
            "conveyor_event": event,
            **self.fields,
            "conveyor_item": shown,
            "conveyor_error_type": type(exc).__name__,
            "conveyor_error": error,
        }
        if batch and isinstance(item, list):
            extra["conveyor_batch_size"] = len(item)
            return f"a batch of {len(item)} items {shown}", error, extra
        return f"item {shown}", error, extra

    def retrying(self, item: Any, exc: BaseException, attempt: int, delay: float) -> None:
        """A call failed and is tried again after ``delay`` seconds."""
        if self.summary:
            self.retries += 1
            if attempt == 1:
                self.items += 1
            kind = type(exc).__name__
            self.errors[kind] += 1
            self.examples[kind] = _message(exc)
            return
        if logger.isEnabledFor(logging.WARNING):
            what, error, extra = self._about("retry", item, self.batch, exc)
            extra["conveyor_attempt"] = attempt
            extra["conveyor_max_attempts"] = self.max_attempts
            extra["conveyor_delay"] = delay
            extra["conveyor_outcome"] = "retried"
            logger.warning(
                "task %r failed on %s (attempt %d of %d): %s; retrying in %.2f s",
                self.name,
                what,
                attempt,
                self.max_attempts,
                error,
                delay,
                extra=extra,
            )

    def gave_up(
        self, item: Any, exc: BaseException, outcome: str, batch: bool, attempt: int | None
    ) -> None:
        """A call failed for good: ``outcome`` is ``"failed"``, ``"skipped"`` or
        ``"emitted"``; ``attempt`` its last attempt (``None``: not known, e.g. an item of a
        batch that was split)."""
        level = logging.DEBUG if outcome == "failed" else logging.INFO
        if logger.isEnabledFor(level):
            what, error, extra = self._about("gave_up", item, batch, exc)
            extra["conveyor_outcome"] = outcome
            if attempt is not None:
                extra["conveyor_attempt"] = attempt
                extra["conveyor_max_attempts"] = self.max_attempts
            logger.log(
                level,
                "task %r gave up on %s (%s): %s",
                self.name,
                what,
                _ACTIONS[outcome],
                error,
                extra=extra,
            )

    def summarise(self) -> None:
        """Under ``retry_log="summary"``: the task's retries in one WARNING line."""
        if not self.retries or not logger.isEnabledFor(logging.WARNING):
            return
        commonest = self.errors.most_common(3)
        errors = ", ".join(
            f"{count} {kind}" + (f" ({self.examples[kind]!r})" if self.examples[kind] else "")
            for kind, count in commonest
        )
        others = sum(self.errors.values()) - sum(count for _, count in commonest)
        if others:
            errors += f", {others} others"
        units = "batches" if self.batch else "items"
        logger.warning(
            "task %r retried %d times on %d %s: %s",
            self.name,
            self.retries,
            self.items,
            units,
            errors,
            extra={
                "conveyor_event": "retry_summary",
                **self.fields,
                "conveyor_outcome": "retried",
                "conveyor_retries": self.retries,
                "conveyor_items": self.items,
                "conveyor_errors": dict(self.errors.most_common()),
            },
        )


_ACTIONS = {"failed": "raised", "skipped": "skipped", "emitted": "emitted as a Failure"}


def _message(exc: BaseException) -> str:
    text = str(exc)
    return text[:197] + "..." if len(text) > 200 else text


def _error(exc: BaseException) -> str:
    text = _message(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
