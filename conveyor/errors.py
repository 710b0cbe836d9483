"""Error policies: what a task does when a call fails.

Order of decisions for a failing call: retries first (``retry_attempts`` total attempts,
only for exceptions matching ``retry_on``), then the task's :class:`ErrorHandler` if it
has one, then its ``on_error`` action.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import random
import reprlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._engine._log_fields import run_fields
from .breaker import CircuitOpenError
from .retry_after import read_retry_after

__all__ = [
    "ErrorAction",
    "ErrorHandler",
    "Failure",
    "LoggingErrorHandler",
    "RetryConfig",
]

T = TypeVar("T")

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = 6


def short_repr(value: object) -> str:
    return _repr.repr(value)


class ErrorAction(enum.StrEnum):
    """What happens to an item whose call failed (after retries and the error handler)."""

    FAIL = "fail"
    """The exception reaches the consumer; the rest of the run is cancelled."""
    SKIP_ITEM = "skip_item"
    """The item is dropped. For a batch, the batch is split to drop only the failing items."""
    SKIP_BATCH = "skip_batch"
    """Batch tasks only: the whole batch is dropped."""
    EMIT = "emit"
    """A :class:`Failure` record takes the item's place and flows to the consumer."""


@dataclasses.dataclass(frozen=True)
class RetryConfig:
    """When and how often a failing call is tried again.

    ``max_attempts`` counts all attempts (1 means no retry). An exception is retried if
    it is an instance of ``retry_on`` and ``retry_if(exc)`` (when given) is true: e.g.
    ``retry_if=lambda e: e.status >= 500`` retries 5xx responses, not 4xx. A
    ``TimeoutError`` from ``timeout`` is retried like any other exception.

    The delay before attempt ``n + 1`` is ``d = base_delay * backoff_multiplier ** (n -
    1)`` with exponential backoff, else ``d = base_delay``; with ``jitter`` ``j`` (0.1 by
    default) it is drawn uniformly from ``[d * (1 - j), d * (1 + j)]``, so that calls
    failing together do not retry in lockstep; never more than ``max_delay``.

    ``retry_after(exc)`` (by default the ``Retry-After`` header of an HTTP client's
    exception; ``None``: none) comes first: a number of seconds is the delay,
    without backoff or jitter, capped by ``max_delay``; ``None`` falls back to the backoff
    (see ``conveyor.retry_after``). A :class:`~conveyor.CircuitOpenError` is never
    retried: the breaker refused the call, and would refuse its retry.
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    exponential_backoff: bool = True
    max_delay: float = 60.0
    backoff_multiplier: float = 2.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_if: Callable[[BaseException], bool] | None = None
    jitter: float = 0.1
    retry_after: Callable[[BaseException], float | None] | None = read_retry_after

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether failed attempt number ``attempt`` (1-based) is tried again."""
        return (
            attempt < self.max_attempts
            and isinstance(exc, self.retry_on)
            and not isinstance(exc, CircuitOpenError)
            and (self.retry_if is None or bool(self.retry_if(exc)))
        )

    def delay_for(self, exc: BaseException, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` raised ``exc``: what
        ``retry_after`` says, else the backoff's :meth:`delay_after`."""
        if self.retry_after is not None:
            seconds = self.retry_after(exc)
            if seconds is not None:
                if (
                    isinstance(seconds, bool)
                    or not isinstance(seconds, (int, float))
                    or math.isnan(seconds)
                ):
                    raise TypeError(
                        f"retry_after returned {seconds!r} for {type(exc).__name__}; it must "
                        f"return a number of seconds, or None to use the backoff"
                    )
                return min(max(0.0, float(seconds)), self.max_delay)
        return self.delay_after(attempt)

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.exponential_backoff:
            delay = self.base_delay * self.backoff_multiplier ** (attempt - 1)
        else:
            delay = self.base_delay
        if self.jitter:
            delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return min(delay, self.max_delay)


@dataclasses.dataclass(frozen=True, slots=True)
class Failure(Generic[T]):
    """Stands in for an item whose task failed under ``on_error="emit"``.

    Later tasks pass it through untouched; the consumer receives it where the item's
    result would have been.
    """

    item: T
    exception: BaseException
    task_name: str
    attempts: int

    def __repr__(self) -> str:
        return (
            f"Failure(task={self.task_name!r}, item={short_repr(self.item)}, "
            f"exception={self.exception!r}, attempts={self.attempts})"
        )


class ErrorHandler:
    """Decides what happens to a failed call once its retries are used up.

    ``handle_error`` returns ``(continue_, value)``: with ``continue_`` true, ``value`` is
    used as the call's result (``None`` drops the item); otherwise the task's ``on_error``
    action applies. For a batch task ``item`` is the batch (a list).
    """

    async def handle_error(
        self, error: Exception, item: Any, task_name: str, attempt: int
    ) -> tuple[bool, Any]:
        raise NotImplementedError


class LoggingErrorHandler(ErrorHandler):
    """Logs the error and continues with ``replacement_value`` (``None`` drops the item)."""

    def __init__(self, logger: logging.Logger | None = None, replacement_value: Any = None) -> None:
        self.logger = logger or logging.getLogger("conveyor")
        self.replacement_value = replacement_value

    async def handle_error(
        self, error: Exception, item: Any, task_name: str, attempt: int
    ) -> tuple[bool, Any]:
        self.logger.error(
            "Error in %s (attempt %d): %s",
            task_name,
            attempt,
            error,
            extra=run_fields(
                "handler",
                conveyor_task=task_name,
                conveyor_item=short_repr(item),
                conveyor_attempt=attempt,
                conveyor_error_type=type(error).__name__,
            ),
        )
        return True, self.replacement_value
