"""``@single_task`` and ``@batch_task``.

Both accept an ``async def``, a plain ``def``, a generator function or an async generator
function, and take the same error options:

``on_error``
    ``"fail"`` (default: the exception reaches the consumer and the run is cancelled),
    ``"skip_item"`` (drop the item; a batch is split to find and drop only the failing
    items), ``"skip_batch"`` (batches only: drop the whole batch) or ``"emit"`` (a
    :class:`~conveyor.Failure` takes the item's place and reaches the consumer).
``retry_attempts``, ``retry_delay``, ``retry_exponential_backoff``, ``retry_max_delay``,
``retry_on``
    ``retry_attempts`` counts all attempts; only exceptions matching ``retry_on`` (a type
    or tuple, default ``Exception``) are retried, after ``retry_delay`` seconds, doubling
    with exponential backoff, never more than ``retry_max_delay``.
``error_handler``
    An :class:`~conveyor.ErrorHandler` consulted once retries are used up.
``task_name``
    The name used in error notes and reprs (default: the function's name).
``concurrency_limit``
    Most calls of this task running at once (single tasks: unlimited within the run's
    window; batch tasks: 1).
``timeout``
    Seconds allowed per call; a timeout is a ``TimeoutError``, retried and handled like
    any other error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar, overload

from . import _options
from .errors import ErrorAction, ErrorHandler
from .tasks import BatchTask, SingleTask, _common_options

__all__ = ["batch_task", "single_task"]

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)


class _SingleDecorator(Protocol):
    @overload
    def __call__(self, func: Callable[..., AsyncIterator[R]], /) -> SingleTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., Iterator[R]], /) -> SingleTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., Awaitable[R | None]], /) -> SingleTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., R | None], /) -> SingleTask[Any, R]: ...


class _BatchDecorator(Protocol):
    @overload
    def __call__(self, func: Callable[..., AsyncIterator[R]], /) -> BatchTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., Iterator[R]], /) -> BatchTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., Awaitable[list[R]]], /) -> BatchTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., Awaitable[R | None]], /) -> BatchTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., list[R]], /) -> BatchTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., R | None], /) -> BatchTask[Any, R]: ...


@overload
def single_task(func: Callable[[T], AsyncIterator[R]], /) -> SingleTask[T, R]: ...
@overload
def single_task(func: Callable[[T], Iterator[R]], /) -> SingleTask[T, R]: ...
@overload
def single_task(func: Callable[[T], Awaitable[R | None]], /) -> SingleTask[T, R]: ...
@overload
def single_task(func: Callable[[T], R | None], /) -> SingleTask[T, R]: ...
@overload
def single_task(func: Callable[..., Any], /) -> SingleTask[Any, Any]: ...
@overload
def single_task(
    func: None = None,
    /,
    *,
    on_error: ErrorAction | str = "fail",
    retry_attempts: int = 1,
    retry_delay: float = 1.0,
    retry_exponential_backoff: bool = True,
    retry_max_delay: float = 60.0,
    retry_on: type[Exception] | tuple[type[Exception], ...] = (Exception,),
    error_handler: ErrorHandler | None = None,
    task_name: str | None = None,
    concurrency_limit: int | None = None,
    timeout: float | None = None,
) -> _SingleDecorator: ...


def single_task(
    func: Callable[..., Any] | None = None,
    /,
    *,
    on_error: ErrorAction | str = "fail",
    retry_attempts: int = 1,
    retry_delay: float = 1.0,
    retry_exponential_backoff: bool = True,
    retry_max_delay: float = 60.0,
    retry_on: type[Exception] | tuple[type[Exception], ...] = (Exception,),
    error_handler: ErrorHandler | None = None,
    task_name: str | None = None,
    concurrency_limit: int | None = None,
    timeout: float | None = None,
) -> Any:
    """Make a function into a task called once per item (``@single_task`` or with options)."""
    options = _common_options(
        decorator="single_task",
        batch=False,
        on_error=on_error,
        retry_attempts=retry_attempts,
        retry_delay=retry_delay,
        retry_exponential_backoff=retry_exponential_backoff,
        retry_max_delay=retry_max_delay,
        retry_on=retry_on,
        error_handler=error_handler,
        task_name=task_name,
        concurrency_limit=concurrency_limit,
        timeout=timeout,
    )

    def decorate(fn: Callable[..., Any]) -> SingleTask[Any, Any]:
        _options.check_callable(fn, "single_task")
        return SingleTask(fn, **options)

    return decorate if func is None else decorate(func)


def batch_task(
    func: Callable[..., Any] | None = None,
    /,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    max_wait: float | None = None,
    on_error: ErrorAction | str = "fail",
    retry_attempts: int = 1,
    retry_delay: float = 1.0,
    retry_exponential_backoff: bool = True,
    retry_max_delay: float = 60.0,
    retry_on: type[Exception] | tuple[type[Exception], ...] = (Exception,),
    error_handler: ErrorHandler | None = None,
    task_name: str | None = None,
    concurrency_limit: int | None = None,
    timeout: float | None = None,
) -> _BatchDecorator:
    """Make a function of a list of items into a batch task.

    ``max_size`` defaults to ``min_size`` (as in conveyor-streaming); ``max_wait`` (seconds
    since a batch's first item) flushes batches holding at least ``min_size`` items.
    """
    if func is not None:
        raise TypeError(
            "@batch_task needs its options: write @batch_task(max_size=...) "
            "(with parentheses) above the function"
        )
    _options.check_int("min_size", min_size, 1)
    _options.check_int("max_size", max_size, 1, optional=True)
    size = min_size if max_size is None else max_size
    if size < min_size:
        raise ValueError(f"max_size ({max_size}) must be >= min_size ({min_size})")
    _options.check_seconds("max_wait", max_wait, optional=True)
    options = _common_options(
        decorator="batch_task",
        batch=True,
        on_error=on_error,
        retry_attempts=retry_attempts,
        retry_delay=retry_delay,
        retry_exponential_backoff=retry_exponential_backoff,
        retry_max_delay=retry_max_delay,
        retry_on=retry_on,
        error_handler=error_handler,
        task_name=task_name,
        concurrency_limit=concurrency_limit,
        timeout=timeout,
    )

    def decorate(fn: Callable[..., Any]) -> BatchTask[Any, Any]:
        _options.check_callable(fn, "batch_task")
        task: BatchTask[Any, Any] = BatchTask(fn, **options)
        task.min_size = min_size
        task.max_size = size
        task.max_wait = None if max_wait is None else float(max_wait)
        return task

    return decorate
