"""Composition beyond a line: fan-out and join (:func:`parallel`, ``a & b``) and routing
(:func:`route`). Merged inputs are :func:`conveyor.merge`; results paired with their input
items, :meth:`Pipeline.with_items`.

Each is a stage of its own in the pipeline it is put in: ``fetch | parallel(a, b) | store``.
Its branches (each a task or a pipeline) run concurrently with every other stage, each as
a run of its own fed item by item (see ``conveyor._engine._branch``): in the run's mode,
window (``max_in_flight``) and byte bound, under their own tasks' options (executors,
error policies, retries, batching, rate limits); the run's window is raised to hold a
full batch of every batch stage in a branch too. ``stream.stats`` lists each branch's
stages after the branch stage, named ``"<stage>/<branch stage>"``; ``to_mermaid()`` draws
the branches.

Order: in an ordered run, the stage's results are in input order, as any stage's; within
an item, a branch's results are in the order it made them.

Errors: a branch's task with ``on_error="fail"`` fails the run with its error; ``"emit"``
makes the item's result a :class:`~conveyor.errors.Failure`; ``"skip_item"`` leaves the
item out of that branch (in ``parallel`` its result there is ``None``). What the stage
itself raises (``route``'s ``key``, ``parallel``'s ``combine``) is handled by the stage's
own ``on_error``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar, overload

from .errors import ErrorAction
from .pipeline import Pipeline
from .tasks import BaseTask, SingleTask, branch_task

__all__ = ["parallel", "route"]

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
R = TypeVar("R")

Branch = BaseTask[T, A] | Pipeline[T, A]


@overload
def parallel(
    a: Branch[T, A], b: Branch[T, B], /, *, name: str | None = ..., on_error: str = ...
) -> SingleTask[T, tuple[A, B]]: ...
@overload
def parallel(
    a: Branch[T, A],
    b: Branch[T, B],
    c: Branch[T, C],
    /,
    *,
    name: str | None = ...,
    on_error: str = ...,
) -> SingleTask[T, tuple[A, B, C]]: ...
@overload
def parallel(
    a: Branch[T, A],
    b: Branch[T, B],
    /,
    *,
    combine: Callable[[T, A, B], R],
    name: str | None = ...,
    on_error: str = ...,
) -> SingleTask[T, R]: ...
@overload
def parallel(
    *branches: Branch[T, Any],
    combine: Callable[..., R] | None = ...,
    name: str | None = ...,
    on_error: str = ...,
) -> SingleTask[T, Any]: ...


def parallel(
    *branches: Any,
    combine: Callable[..., Any] | None = None,
    name: str | None = None,
    on_error: ErrorAction | str = ErrorAction.FAIL,
) -> SingleTask[Any, Any]:
    """A stage that gives every item to each branch, concurrently, and emits one result
    per item: the tuple of the branches' results, or ``combine(item, *results)``.

    A branch's result for an item is the one result it made of it; ``None`` if it made
    none (its function returned ``None``, a filter, ``on_error="skip_item"``); the list
    of its results if it made several (a list returned, a generator). A
    :class:`~conveyor.errors.Failure` from a branch (``on_error="emit"``) is the item's
    result (the first branch's, if several fail). A batch task in a branch must return
    one result per item of its batch, in order (each item gets its own; another number
    fails the run, naming it). ``combine`` runs on the event loop, once per item; what it
    returns goes on as any task's result (``None`` drops the item, a list is expanded).
    ``a & b`` is ``parallel(a, b)`` (for three branches, ``parallel(a, b, c)``: ``&``
    nests).
    """
    if len(branches) < 2:
        raise TypeError(
            f"parallel() takes at least two branches (tasks or pipelines), got {len(branches)}"
        )
    if combine is not None and not callable(combine):
        raise TypeError(
            f"parallel(combine=...) must be a function of (item, *results), got {combine!r}"
        )
    return branch_task("parallel", list(branches), name=name, on_error=on_error, combine=combine)


def route(
    key: Callable[[T], Hashable],
    branches: Mapping[Hashable, Branch[T, Any]],
    default: Branch[T, Any] | None = None,
    *,
    name: str | None = None,
    on_error: ErrorAction | str = ErrorAction.FAIL,
) -> SingleTask[T, Any]:
    """A stage that sends each item to exactly one branch, the one of ``key(item)``
    (items of no branch go to ``default``, or on unchanged if it is ``None``); each
    branch's results rejoin the stream, in input order in an ordered run.

    An item's results are whatever its branch made of it: none, one or several (each
    goes on as an item; a :class:`~conveyor.errors.Failure` goes on as one). ``key`` is
    called on the event loop, once per item; if it raises, the item fails under the
    stage's ``on_error``. A branch given for several values is one branch (one run).
    """
    if not callable(key):
        raise TypeError(f"route(key, ...): key must be a function of the item, got {key!r}")
    if not isinstance(branches, Mapping) or not branches:
        raise TypeError(
            "route(key, branches): branches must be a non-empty dict of {value: task or "
            f"pipeline}}, got {branches!r}"
        )
    lines: list[Any] = []
    routes: list[tuple[Hashable, int]] = []
    for value, branch in branches.items():
        index = next((i for i, one in enumerate(lines) if one is branch), None)
        if index is None:
            index = len(lines)
            lines.append(branch)
        routes.append((value, index))
    index_of_default = None
    if default is not None:
        index_of_default = len(lines)
        lines.append(default)
    return branch_task(
        "route",
        lines,
        name=name,
        on_error=on_error,
        key=key,
        routes=tuple(routes),
        default=index_of_default,
    )
