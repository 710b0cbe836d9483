"""Tasks: functions made into pipeline stages by ``@single_task`` and ``@batch_task``.

A task wraps an ``async def``, a plain ``def``, a generator function or an async generator
function. What the function returns decides what flows on:

* ``None`` drops the item;
* a ``list`` becomes one item per element;
* a generator / async generator becomes one item per yielded value, pulled lazily (paced
  by the run's window); yielded ``None`` values are dropped;
* anything else (a tuple too) is one item.

A task is a frozen :class:`~conveyor._spec.StageSpec` (function, validated options,
side inputs, resources) with composition on top. Tasks are immutable: ``with_inputs``
and ``with_resources`` return new tasks, ``|`` builds a new pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar, Unpack, overload

from ._engine._registry import kind_of
from ._spec import BatchTaskOptions, StageSpec, TaskOptions, make_options
from ._spec_branches import BranchesSpec
from .adaptive import AdaptiveLimit
from .context import ExecutionMode, get_current_context
from .errors import ErrorAction, ErrorHandler, Failure, RetryConfig
from .pipeline import Pipeline
from .stream import AsyncStream

__all__ = ["BaseTask", "BatchTask", "SingleTask"]

In = TypeVar("In")
Out = TypeVar("Out")
R = TypeVar("R")
X = TypeVar("X")


class BaseTask(Generic[In, Out]):
    """A function made into a pipeline stage: build one with a decorator, or directly
    (``SingleTask(func, **options)``; options not given take the decorators' defaults)."""

    _batch: ClassVar[bool] = False
    _decorator: ClassVar[str] = "single_task"

    def __init__(self, func: Callable[..., Any], /, **options: Unpack[BatchTaskOptions]) -> None:
        check_callable(func, self._decorator)
        valid = make_options(options, batch=self._batch, where=type(self).__name__)
        self._init(func, valid)

    def _init(self, func: Callable[..., Any], options: TaskOptions) -> None:
        name = options.task_name or getattr(func, "__name__", None) or repr(func)
        self.spec = StageSpec(func=func, name=name, batch=self._batch, options=options)
        self._attr_name: str | None = None
        with contextlib.suppress(AttributeError):  # exotic callables
            self.__doc__ = func.__doc__

    @classmethod
    def _from_options(cls, func: Callable[..., Any], options: TaskOptions) -> Self:
        task = cls.__new__(cls)
        task._init(func, options)
        return task

    # -- the options, read-only ------------------------------------------------------

    @property
    def func(self) -> Callable[..., Any]:
        return self.spec.func

    @property
    def task_name(self) -> str:
        return self.spec.name

    @property
    def options(self) -> TaskOptions:
        return self.spec.options

    @property
    def on_error(self) -> ErrorAction:
        return self.spec.options.on_error

    @property
    def retry_config(self) -> RetryConfig:
        return self.spec.options.retry_config

    @property
    def error_handler(self) -> ErrorHandler | None:
        return self.spec.options.error_handler

    @property
    def timeout(self) -> float | None:
        return self.spec.options.timeout

    @property
    def concurrency_limit(self) -> int | AdaptiveLimit | None:
        return self.spec.options.concurrency_limit

    # -- composition -----------------------------------------------------------------

    def _pipeline(self) -> Pipeline[In, Out]:
        return Pipeline([self])

    @overload
    def __or__(
        self: BaseTask[In, X | Failure[Any]], other: BaseTask[X, R] | Pipeline[X, R]
    ) -> Pipeline[In, R | Failure[Any]]: ...
    @overload
    def __or__(self, other: BaseTask[Out, R] | Pipeline[Out, R]) -> Pipeline[In, R]: ...

    def __or__(self, other: Any) -> Any:
        """Compose: this task, then ``other`` (see :meth:`Pipeline.__or__`)."""
        return self._pipeline() | other

    def __ror__(self, other: Any) -> Any:
        return Pipeline.__ror__(self._pipeline(), other)

    def __and__(self, other: BaseTask[In, R] | Pipeline[In, R]) -> SingleTask[In, tuple[Out, R]]:
        """``a & b``: ``conveyor.parallel(a, b)`` (see :mod:`conveyor.compose`)."""
        return branch_task("parallel", [self, other])

    def __rand__(self, other: Pipeline[In, R]) -> SingleTask[In, tuple[R, Out]]:
        return branch_task("parallel", [other, self])

    def __call__(self, items: Iterable[In] | AsyncIterable[In] | Any = ..., /) -> AsyncStream[Out]:
        """Run this task alone over ``items`` (see :meth:`Pipeline.__call__`)."""
        return self._pipeline()(items)

    def run(self, items: Iterable[In] | AsyncIterable[In] | Any = ..., /) -> list[Out]:
        """From synchronous code: this task alone over ``items`` (see Pipeline.run)."""
        return self._pipeline().run(items)

    def iter(self, items: Iterable[In] | AsyncIterable[In] | Any = ..., /) -> Iterator[Out]:
        """From synchronous code: stream this task's results (see Pipeline.iter)."""
        return self._pipeline().iter(items)

    def as_completed(self, items: Iterable[In] | AsyncIterable[In]) -> AsyncStream[Out]:
        return self._pipeline().as_completed(items)

    def with_execution_mode(self, mode: ExecutionMode | str) -> Pipeline[In, Out]:
        """A one-stage pipeline of this task that runs in ``mode``."""
        return self._pipeline().with_execution_mode(mode)

    def with_context(self, **updates: Any) -> Pipeline[In, Out]:
        """A one-stage pipeline of this task with a context (see Pipeline.with_context)."""
        return self._pipeline().with_context(**updates)

    def with_items(self) -> Pipeline[In, tuple[Any, Out]]:
        """A one-stage pipeline of this task whose results are paired with their input
        items (see :meth:`Pipeline.with_items`)."""
        return self._pipeline().with_items()

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of this task alone (see :meth:`Pipeline.to_mermaid`)."""
        return self._pipeline().to_mermaid()

    def get_context(self) -> Any:
        """The context of the current run (``None`` outside one)."""
        return get_current_context()

    # -- side inputs and resources ---------------------------------------------------

    def with_inputs(self, *args: Any, **kwargs: Any) -> Self:
        """A copy of this task that is called as ``func(item, *args, **kwargs)``.

        Each side input is resolved at the start of every run, never cached across runs:
        a plain value is passed as is; a coroutine or other awaitable is awaited (a
        coroutine can be awaited only once, so it serves one run); an async iterable or
        :class:`AsyncStream` contributes its first item. A context manager (an HTTP
        session, a connection) is refused here: declare it with :meth:`with_resources`.
        """
        for key, value in [*enumerate(args), *kwargs.items()]:
            if hasattr(value, "__aenter__") and not getattr(value, "is_conveyor_stream", 0):
                raise TypeError(
                    f"side input {key!r} of task {self.task_name!r} is a context manager "
                    f"({type(value).__name__}); side inputs are values. Open it for each "
                    f"run with .with_resources(name=factory), e.g. "
                    f".with_resources(session=aiohttp.ClientSession)"
                )
        return self._replace(args=args, kwargs=tuple(kwargs.items()))

    def with_resources(self, **resources: Any) -> Self:
        """A copy of this task that receives run-scoped resources as keyword arguments.

        Each resource is a context manager (async or not) or a callable of no arguments
        returning one, e.g. ``with_resources(session=aiohttp.ClientSession)``. It is
        opened once per run, before the first call, and closed when the run ends
        (normally, on an error, on early exit or on cancellation), after every call of
        the run has ended. The same factory given to several tasks is opened once per run
        and shared by them.
        """
        return self._replace(resources=self.spec.resources + tuple(resources.items()))

    def _replace(self, **changes: Any) -> Self:
        clone = self._from_options(self.spec.func, self.spec.options)
        clone.spec = dataclasses.replace(self.spec, **changes)
        clone._attr_name = self._attr_name
        return clone

    # -- methods ---------------------------------------------------------------------

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr_name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Self:
        """On an instance, a task whose function is bound to it (one per instance)."""
        if instance is None:
            return self
        bound = self._replace(func=types.MethodType(self.spec.func, instance))
        if self._attr_name is not None:
            # __slots__ classes have no __dict__: they get a fresh bound task each access
            with contextlib.suppress(AttributeError):
                instance.__dict__[self._attr_name] = bound
        return bound

    def _options_repr(self) -> list[str]:
        executor = self.spec.options.executor
        if kind_of(executor).name == "inline":
            return []
        # A module (executor=ray) by the name it is written with, not its file's path.
        shown = executor.__name__ if isinstance(executor, types.ModuleType) else repr(executor)
        return [f"executor={shown}"]

    def __repr__(self) -> str:
        parts = self._options_repr()
        return f"{self.task_name}({', '.join(parts)})" if parts else self.task_name


class SingleTask(BaseTask[In, Out]):
    """A task called once per item."""


class BatchTask(BaseTask[In, Out]):
    """A task called with a list of items.

    Batches are flushed when they reach ``max_size``; when ``max_wait`` seconds have
    passed since their first item (if they hold at least ``min_size``); when the input
    ends (a remainder smaller than ``min_size`` is dropped, and counted in the
    statistics); and when ``max_in_flight_bytes`` admits fewer large items than a batch
    holds. A run's window (``max_in_flight``) is raised to hold a whole batch of every
    batch stage at once, so it never cuts a batch short. Ordered runs compose batches in
    input order, as-completed runs in arrival order. ``concurrency_limit`` (default 1)
    bounds how many batches run at once.

    With ``key=f``, one batch is open per key ``f(item)`` (each holds items of one key;
    ``max_size``, ``min_size`` and ``max_wait`` apply per key) and at most ``max_keys``
    (default 1024) are open at once: see docs/composition.md, "Batches by key".
    """

    _batch = True
    _decorator = "batch_task"

    @property
    def min_size(self) -> int:
        return self.spec.options.min_size

    @property
    def max_size(self) -> int:
        return self.spec.options.max_size

    @property
    def max_wait(self) -> float | None:
        return self.spec.options.max_wait

    @property
    def key(self) -> Callable[[Any], Any] | None:
        """The key function of a keyed batch task (one open batch per key), or None."""
        return self.spec.options.key

    @property
    def max_keys(self) -> int | None:
        """At most this many keys have an open batch at once (keyed batch tasks)."""
        return self.spec.options.max_keys

    def _options_repr(self) -> list[str]:
        parts = [f"max_size={self.max_size}"]
        if self.min_size != 1:
            parts.append(f"min_size={self.min_size}")
        if self.max_wait is not None:
            parts.append(f"max_wait={self.max_wait}")
        if self.key is not None:
            name = getattr(self.key, "__name__", type(self.key).__name__)
            parts.append(f"key={name}, max_keys={self.max_keys}")
        return parts + super()._options_repr()


def branch_task(
    kind: Literal["parallel", "route"],
    branches: list[Any],
    *,
    name: str | None = None,
    on_error: ErrorAction | str = ErrorAction.FAIL,
    **shape: Any,
) -> SingleTask[Any, Any]:
    """The task of a branch stage (``conveyor.parallel``, ``conveyor.route``: see
    :mod:`conveyor.compose`): each branch a task or a pipeline."""
    # (Each branch's specs first: they check it is a task or a pipeline, naming it.)
    lines = tuple(
        (_label(branch, kind), specs)
        for index, branch in enumerate(branches)
        for specs in (_specs(branch, kind, index),)
    )
    if name is None:
        name = f"{kind}({', '.join(label for label, _ in lines)})"
    task: SingleTask[Any, Any] = SingleTask(_branches, task_name=name, on_error=on_error)
    task.spec = dataclasses.replace(task.spec, branches=BranchesSpec(kind, lines, **shape))
    return task


def _branches(item: Any) -> Any:
    """(A branch stage's function: the engine's branch stage makes its calls instead.)"""
    raise RuntimeError("a branch stage's calls are made by its run (conveyor._engine._branch)")


def _label(branch: Any, kind: str) -> str:
    stages = branch.stages if isinstance(branch, Pipeline) else [branch]
    return " | ".join(stage.spec.name for stage in stages)


def _specs(branch: Any, kind: str, index: int) -> tuple[StageSpec, ...]:
    which = f"branch {index} of parallel()" if kind == "parallel" else "a branch of route()"
    if isinstance(branch, Pipeline):
        if branch.checkpoint is not None or branch.paired:
            raise TypeError(
                f"{which} ({branch!r}) runs as part of the run it is "
                f"in: give it the pipeline without with_checkpoint() or with_items() (set "
                f"those on the whole pipeline)"
            )
        if not branch.stages:
            raise ValueError(f"{which} has no stage: give it a task or a pipeline")
        return tuple(task.spec for task in branch.stages)
    if isinstance(getattr(branch, "spec", None), StageSpec):
        return (branch.spec,)
    raise TypeError(
        f"{which} must be a task (@single_task, @batch_task) or a "
        f"Pipeline, got {type(branch).__name__}: {branch!r}"
        + (" (decorate the function with @single_task)" if callable(branch) else "")
    )


def check_callable(func: Any, decorator: str) -> None:
    if not callable(func):
        raise TypeError(
            f"@{decorator} decorates a function, got {type(func).__name__}: {func!r}. "
            f"Use @{decorator} on an async or plain function (or generator function)."
        )
