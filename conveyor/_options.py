"""Validation of task options: bad values fail at decoration time, naming the parameter."""

from __future__ import annotations

import inspect
import math
from typing import Any

from .errors import ErrorAction, RetryConfig


def check_callable(func: Any, decorator: str) -> None:
    if not callable(func):
        raise TypeError(
            f"@{decorator} decorates a function, got {type(func).__name__}: {func!r}. "
            f"Use @{decorator} on an async or plain function (or generator function)."
        )


def check_int(name: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_seconds(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value}")


def parse_on_error(value: Any, *, batch: bool) -> ErrorAction:
    try:
        action = ErrorAction(value)
    except ValueError:
        choices = "'fail', 'skip_item', 'emit'" + (", 'skip_batch'" if batch else "")
        raise ValueError(f"on_error must be one of {choices}; got {value!r}") from None
    if action is ErrorAction.SKIP_BATCH and not batch:
        raise ValueError(
            "on_error='skip_batch' only applies to @batch_task; "
            "use on_error='skip_item' on a @single_task"
        )
    return action


def build_retry(
    retry_attempts: Any,
    retry_delay: Any,
    retry_exponential_backoff: Any,
    retry_max_delay: Any,
    retry_on: Any,
) -> RetryConfig:
    check_int("retry_attempts", retry_attempts, 1)
    check_seconds("retry_delay", retry_delay)
    check_seconds("retry_max_delay", retry_max_delay)
    if not isinstance(retry_exponential_backoff, bool):
        raise TypeError("retry_exponential_backoff must be a bool")
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if (
        not isinstance(retry_on, tuple)
        or not retry_on
        or not all(isinstance(t, type) and issubclass(t, Exception) for t in retry_on)
    ):
        raise TypeError(f"retry_on must be an exception type or a tuple of them, got {retry_on!r}")
    return RetryConfig(
        max_attempts=retry_attempts,
        base_delay=float(retry_delay),
        exponential_backoff=retry_exponential_backoff,
        max_delay=float(retry_max_delay),
        retry_on=retry_on,
    )


def check_error_handler(handler: Any) -> None:
    if handler is None:
        return
    method = getattr(handler, "handle_error", None)
    if isinstance(handler, type) or method is None or not inspect.iscoroutinefunction(method):
        raise TypeError(
            "error_handler must be an ErrorHandler instance with an "
            f"`async def handle_error(...)`, got {handler!r}"
        )


def check_task_name(name: Any) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"task_name must be a non-empty str, got {name!r}")
