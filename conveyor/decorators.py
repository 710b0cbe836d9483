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
    window; batch tasks: 1); ``"auto"`` or :class:`~conveyor.adaptive.AdaptiveLimit` for a limit
    that tunes itself to the service's latency and errors, within the window (see
    ``conveyor.adaptive``).
``timeout``
    Seconds allowed per call; a timeout is a ``TimeoutError``, retried and handled like
    any other error.
``executor``
    How calls are made: ``"inline"`` (default: on the event loop; an ``async def`` runs
    in a task of its own), ``"thread"``/``"thread:N"`` (a thread pool of the run),
    ``"process"``/``"process:N"`` (a process pool of the run, in measured chunks),
    ``"auto"`` (chosen by measuring the calls), a ``concurrent.futures.Executor``, a
    ``dask.distributed.Client``, the ``ray`` module (after ``ray.init()``), or an object of
    the :class:`conveyor.abc.Executor` protocol. See docs/executors.md.
``chunk_size``
    Items per chunk sent to another process (``"process"``, a process pool, Dask, Ray,
    ``"auto"``); default: sized from measurements, 100-250 ms of work per chunk.
``rate_limit``
    ``(calls, per_seconds)``: at most ``calls`` calls of this task start in any
    ``per_seconds``, across its concurrent calls; a :class:`~conveyor.RateLimit` given to
    several tasks is one quota for all of them. Waiting for a turn is not part of the
    call: the ``timeout`` does not count it. ``RateLimit(calls, per, burst=b)`` spaces
    starts evenly (at most ``b`` at once); ``RateLimit(..., key=f)`` keeps one quota per
    key ``f(item)`` (single tasks). See ``conveyor.rate``.
``concurrency_limit_per_key``
    ``(key_function, n)``: at most ``n`` calls at once per key (e.g. per host), besides
    ``concurrency_limit``; items waiting for one key hold no slot and never hold up
    other keys (single tasks). See ``conveyor._engine._lanes``.
``priority``
    A function of the item returning a number: among items waiting for this task's
    slots or turns, the highest starts first (FIFO among equals); an ordered run's
    output order is unchanged (single tasks).
``cache``
    A :class:`~conveyor.cache.Cache`: an item whose result it holds is answered from it, with
    no call (no executor, rate limit, retry or timeout); only successful results other
    than ``None`` are stored; per item for batch tasks (which must then return one result
    per item). See ``conveyor._engine._cache`` and docs/durable-runs.md.
``retry_after``
    A function of a retried exception: seconds to wait before the retry (capped by
    ``retry_max_delay``), or ``None`` for the backoff. Default: the ``Retry-After`` header
    of an HTTP client's exception (:func:`~conveyor.read_retry_after`); ``None``: ignore it.
``circuit_breaker``
    A :class:`~conveyor.CircuitBreaker`, shared by the tasks calling one service: while it
    is open, calls fail at once with :class:`~conveyor.CircuitOpenError` (under
    ``on_error``) or wait. See ``conveyor.breaker``.

Every option is declared once, in ``conveyor._spec.TaskOptions``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal, Protocol, TypeVar, Unpack, overload

from ._spec import (
    BatchOnlyOptions,
    BatchTaskOptions,
    CommonOptions,
    SingleTaskOptions,
    make_options,
)
from .errors import ErrorAction, Failure
from .tasks import BatchTask, SingleTask, check_callable

__all__ = ["batch_task", "single_task"]

T = TypeVar("T")
R = TypeVar("R")


class _SingleDecorator(Protocol):
    @overload
    def __call__(self, func: Callable[..., AsyncIterator[R]], /) -> SingleTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., Iterator[R]], /) -> SingleTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., Awaitable[R | None]], /) -> SingleTask[Any, R]: ...
    @overload
    def __call__(self, func: Callable[..., R | None], /) -> SingleTask[Any, R]: ...


class _EmitSingleDecorator(Protocol):
    """``@single_task(on_error="emit")``: the task yields its results or Failures."""

    @overload
    def __call__(
        self, func: Callable[..., AsyncIterator[R]], /
    ) -> SingleTask[Any, R | Failure[Any]]: ...
    @overload
    def __call__(
        self, func: Callable[..., Iterator[R]], /
    ) -> SingleTask[Any, R | Failure[Any]]: ...
    @overload
    def __call__(
        self, func: Callable[..., Awaitable[R | None]], /
    ) -> SingleTask[Any, R | Failure[Any]]: ...
    @overload
    def __call__(self, func: Callable[..., R | None], /) -> SingleTask[Any, R | Failure[Any]]: ...


class _EmitBatchDecorator(Protocol):
    """``@batch_task(on_error="emit")``: the task yields its results or Failures."""

    @overload
    def __call__(
        self, func: Callable[..., AsyncIterator[R]], /
    ) -> BatchTask[Any, R | Failure[Any]]: ...
    @overload
    def __call__(self, func: Callable[..., Iterator[R]], /) -> BatchTask[Any, R | Failure[Any]]: ...
    @overload
    def __call__(
        self, func: Callable[..., Awaitable[list[R]]], /
    ) -> BatchTask[Any, R | Failure[Any]]: ...
    @overload
    def __call__(
        self, func: Callable[..., Awaitable[R | None]], /
    ) -> BatchTask[Any, R | Failure[Any]]: ...
    @overload
    def __call__(self, func: Callable[..., list[R]], /) -> BatchTask[Any, R | Failure[Any]]: ...
    @overload
    def __call__(self, func: Callable[..., R | None], /) -> BatchTask[Any, R | Failure[Any]]: ...


Emit = Literal["emit", ErrorAction.EMIT]


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
@overload  # (more specific than the next: on_error="emit" adds Failure to the type)
def single_task(  # type: ignore[overload-overlap]
    func: None = None, /, *, on_error: Emit, **options: Unpack[CommonOptions]
) -> _EmitSingleDecorator: ...
@overload
def single_task(func: None = None, /, **options: Unpack[SingleTaskOptions]) -> _SingleDecorator: ...


def single_task(
    func: Callable[..., Any] | None = None, /, **options: Unpack[SingleTaskOptions]
) -> Any:
    """Make a function into a task called once per item (``@single_task`` or with options)."""
    valid = make_options(options, batch=False, where="@single_task")

    def decorate(fn: Callable[..., Any]) -> SingleTask[Any, Any]:
        check_callable(fn, "single_task")
        return SingleTask._from_options(fn, valid)

    return decorate if func is None else decorate(func)


@overload  # (more specific than the next: on_error="emit" adds Failure to the type)
def batch_task(  # type: ignore[overload-overlap]
    func: None = None, /, *, on_error: Emit, **options: Unpack[BatchOnlyOptions]
) -> _EmitBatchDecorator: ...
@overload
def batch_task(func: None = None, /, **options: Unpack[BatchTaskOptions]) -> _BatchDecorator: ...


def batch_task(
    func: Callable[..., Any] | None = None, /, **options: Unpack[BatchTaskOptions]
) -> Any:
    """Make a function of a list of items into a batch task.

    ``max_size`` defaults to ``min_size`` (as in conveyor-streaming); ``max_wait`` (seconds
    since a batch's first item) flushes batches holding at least ``min_size`` items.
    ``key=f`` keeps one open batch per key ``f(item)`` (the sizes and ``max_wait`` apply
    per key), at most ``max_keys`` (default 1024) at once, the least recently fed sent off
    first (see docs/composition.md, "Batches by key").
    """
    if func is not None:
        raise TypeError(
            "@batch_task needs its options: write @batch_task(max_size=...) "
            "(with parentheses) above the function"
        )
    valid = make_options(options, batch=True, where="@batch_task")

    def decorate(fn: Callable[..., Any]) -> BatchTask[Any, Any]:
        check_callable(fn, "batch_task")
        return BatchTask._from_options(fn, valid)

    return decorate
