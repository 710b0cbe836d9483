"""Tasks: functions made into pipeline stages by ``@single_task`` and ``@batch_task``.

A task wraps an ``async def``, a plain ``def``, a generator function or an async generator
function. What the function returns decides what flows on:

* ``None`` drops the item;
* a ``list`` becomes one item per element;
* a generator / async generator becomes one item per yielded value, pulled lazily (paced
  by the run's window); yielded ``None`` values are dropped;
* anything else (a tuple too) is one item.

Tasks are immutable: ``with_inputs`` returns a new task, ``|`` builds a new pipeline.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import types
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

from . import _options
from .context import get_current_context
from .errors import ErrorAction, ErrorHandler, RetryConfig

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .stream import AsyncStream

__all__ = ["BaseTask", "BatchTask", "SingleTask"]

In = TypeVar("In")
Out = TypeVar("Out")
R = TypeVar("R")


class BaseTask(Generic[In, Out]):
    """A function made into a pipeline stage. Build one with a decorator."""

    _is_batch: ClassVar[bool] = False

    func: Callable[..., Any]
    task_name: str
    on_error: ErrorAction
    retry_config: RetryConfig
    error_handler: ErrorHandler | None
    timeout: float | None
    concurrency_limit: int | None

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        on_error: ErrorAction,
        retry_config: RetryConfig,
        error_handler: ErrorHandler | None,
        task_name: str | None,
        concurrency_limit: int | None,
        timeout: float | None,
    ) -> None:
        self.func = func
        self.task_name = task_name or getattr(func, "__name__", None) or repr(func)
        self.on_error = on_error
        self.retry_config = retry_config
        self.error_handler = error_handler
        self.timeout = timeout
        self.concurrency_limit = concurrency_limit
        self._side_args: tuple[Any, ...] = ()
        self._side_kwargs: dict[str, Any] = {}
        self._attr_name: str | None = None
        with contextlib.suppress(AttributeError):  # exotic callables
            self.__doc__ = func.__doc__

    # -- composition -----------------------------------------------------------------

    def __or__(self, other: BaseTask[Out, R] | Pipeline[Out, R]) -> Pipeline[In, R]:
        from .pipeline import Pipeline

        first: Pipeline[In, Out] = Pipeline([self])
        return first | other

    def __call__(self, items: Iterable[In] | AsyncIterable[In] | Any = ..., /) -> AsyncStream[Out]:
        """Run this task alone over ``items`` (see :meth:`Pipeline.__call__`)."""
        from .pipeline import Pipeline

        pipeline: Pipeline[In, Out] = Pipeline([self])
        return pipeline(items)

    def as_completed(self, items: Iterable[In] | AsyncIterable[In]) -> AsyncStream[Out]:
        from .pipeline import Pipeline

        pipeline: Pipeline[In, Out] = Pipeline([self])
        return pipeline.as_completed(items)

    def get_context(self) -> Any:
        """The context of the current run (``None`` outside one)."""
        return get_current_context()

    # -- side inputs -----------------------------------------------------------------

    def with_inputs(self, *args: Any, **kwargs: Any) -> Self:
        """A copy of this task that is called as ``func(item, *args, **kwargs)``.

        Each side input is resolved at the start of every run, never cached across runs:
        a plain value is passed as is; a coroutine or other awaitable is awaited (a
        coroutine can be awaited only once, so it serves one run); an async iterable or
        :class:`AsyncStream` contributes its first item.
        """
        clone = copy.copy(self)
        clone._side_args = args
        clone._side_kwargs = dict(kwargs)
        return clone

    async def _invoker_for_run(self, *, with_item: bool = True) -> Callable[[Any], Any]:
        """The per-run call seam: ``invoke(item)`` with side inputs resolved."""
        func = self.func
        args = [await _resolve_side_input(value) for value in self._side_args]
        kwargs = {key: await _resolve_side_input(v) for key, v in self._side_kwargs.items()}
        if not with_item:
            return lambda _: func(*args, **kwargs)
        if self._is_batch:
            if args or kwargs:
                return lambda batch: func(list(batch), *args, **kwargs)
            return lambda batch: func(list(batch))
        if args or kwargs:
            return lambda item: func(item, *args, **kwargs)
        return func

    # -- methods ---------------------------------------------------------------------

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr_name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Self:
        """On an instance, a task whose function is bound to it (one per instance)."""
        if instance is None:
            return self
        bound = copy.copy(self)
        bound.func = types.MethodType(self.func, instance)
        if self._attr_name is not None:
            # __slots__ classes have no __dict__: they get a fresh bound task each access
            with contextlib.suppress(AttributeError):
                instance.__dict__[self._attr_name] = bound
        return bound

    def _options_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{self.task_name}{self._options_repr()}"


class SingleTask(BaseTask[In, Out]):
    """A task called once per item."""


class BatchTask(BaseTask[In, Out]):
    """A task called with a list of items.

    Batches are flushed when they reach ``max_size``; when ``max_wait`` seconds have
    passed since their first item (if they hold at least ``min_size``); when the input
    ends (a remainder smaller than ``min_size`` is dropped); and when the run's window is
    full of items waiting for this batch (so a window smaller than ``max_size`` cannot
    deadlock). Ordered runs compose batches in input order, as-completed runs in arrival
    order. ``concurrency_limit`` (default 1) bounds how many batches run at once.
    """

    _is_batch = True
    min_size: int
    max_size: int
    max_wait: float | None

    def _options_repr(self) -> str:
        parts = [f"max_size={self.max_size}"]
        if self.min_size != 1:
            parts.append(f"min_size={self.min_size}")
        if self.max_wait is not None:
            parts.append(f"max_wait={self.max_wait}")
        return f"({', '.join(parts)})"


async def _resolve_side_input(value: Any) -> Any:
    from .stream import AsyncStream

    if inspect.iscoroutine(value):
        if inspect.getcoroutinestate(value) != inspect.CORO_CREATED:
            raise RuntimeError(
                f"side input {value!r} is a coroutine that an earlier run already awaited; "
                "a coroutine serves one run. Pass a fresh coroutine for each run (build "
                "the task with .with_inputs(...) per run) or an async iterable."
            )
        return await value
    if isinstance(value, AsyncIterable):
        try:
            if isinstance(value, AsyncStream):
                async with value:
                    return await value.__anext__()
            return await anext(aiter(value))
        except StopAsyncIteration:
            raise ValueError(
                f"side input {value!r} produced no item: an async iterable side input "
                "contributes its first item to each run"
            ) from None
    if isinstance(value, Awaitable):
        return await value
    return value


def _common_options(
    *,
    decorator: str,
    batch: bool,
    on_error: Any,
    retry_attempts: Any,
    retry_delay: Any,
    retry_exponential_backoff: Any,
    retry_max_delay: Any,
    retry_on: Any,
    error_handler: Any,
    task_name: Any,
    concurrency_limit: Any,
    timeout: Any,
) -> dict[str, Any]:
    _options.check_int("concurrency_limit", concurrency_limit, 1, optional=True)
    _options.check_seconds("timeout", timeout, optional=True)
    if timeout == 0:
        raise ValueError("timeout must be > 0 seconds (or None for no timeout)")
    _options.check_error_handler(error_handler)
    _options.check_task_name(task_name)
    return {
        "on_error": _options.parse_on_error(on_error, batch=batch),
        "retry_config": _options.build_retry(
            retry_attempts, retry_delay, retry_exponential_backoff, retry_max_delay, retry_on
        ),
        "error_handler": error_handler,
        "task_name": task_name,
        "concurrency_limit": concurrency_limit,
        "timeout": None if timeout is None else float(timeout),
    }
