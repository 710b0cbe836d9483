"""The executor seam: how a stage's call is made, what comes back, and the call's task.

An :class:`Executor` turns a stage's function (with its side inputs and resources bound)
into the per-item call the engine makes: ``executor.bind(invoke)`` returns a callable of
one item. Whatever that callable returns is accepted (:func:`kind_of`):

* a plain value (the result), ``None``, a ``list``, a generator: see ``_stage``'s rules;
* a coroutine, an asyncio Future or a ``concurrent.futures.Future``: awaited in a real
  asyncio task of its own (:func:`start_task`), so the call's code sees a real current
  task, working timeouts, TaskGroups and its own copy of the run's contextvars.

The default, :data:`INLINE`, calls the function on the event loop: a plain function runs
to completion, an ``async def`` returns its coroutine. Threads, processes and clusters
plug in here and nowhere else (``_executors`` names them, ``_pools``, ``_dask`` and
``_auto`` implement them).

An executor may be *run-scoped*: then it has ``async open(stack, shared)``, which the
run calls before its first call, and which returns the executor to use for that run.
Pools it creates go on the run's exit stack ``stack`` and close when the run ends;
``shared`` lets the tasks of a run share them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable
from types import AsyncGeneratorType, CoroutineType, GeneratorType, NoneType
from typing import Any, Protocol

from ..errors import Failure

__all__ = [
    "INLINE",
    "Executor",
    "InlineExecutor",
    "as_awaitable",
    "discard",
    "kind_of",
    "settle",
    "start_task",
]


class Executor(Protocol):
    """Decides how a stage's calls are made."""

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The per-item call for ``invoke``: returns a value, a coroutine or a Future."""
        ...


class InlineExecutor:
    """Calls on the event loop; an ``async def``'s coroutine runs in a task of its own."""

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return invoke  # no wrapper: a plain call costs one function call

    def __repr__(self) -> str:
        return "inline"


INLINE = InlineExecutor()


# -- what a call gives back ----------------------------------------------------------------

VALUE, NONE, LIST, EXPAND, AWAIT = 0, 1, 2, 3, 4

_KINDS: dict[type, int] = {
    NoneType: NONE,
    list: LIST,
    GeneratorType: EXPAND,
    AsyncGeneratorType: EXPAND,
    CoroutineType: AWAIT,
    Failure: VALUE,
    int: VALUE,
    str: VALUE,
    float: VALUE,
    tuple: VALUE,
    dict: VALUE,
}
KINDS_GET = _KINDS.get
VALUE_TYPES: set[type] = {kind for kind, value in _KINDS.items() if value == VALUE}
"""The types known to be plain values (kept with ``_KINDS``): one look-up tells a tight
loop that a result goes on as it is (see ``_fused``)."""


def kind_of(result_type: type) -> int:
    """What a result of this type is (cached per type: one dict look-up per result)."""
    kind = _KINDS.get(result_type)
    if kind is None:
        # Futures are awaited; any other type (lists' subclasses too) is one item.
        if issubclass(result_type, (asyncio.Future, concurrent.futures.Future)):
            kind = AWAIT
        else:
            kind = VALUE
        if len(_KINDS) < 4096:  # bounded, whatever types flow through
            _KINDS[result_type] = kind
            if kind == VALUE:
                VALUE_TYPES.add(result_type)
    return kind


def as_awaitable(result: Any) -> Awaitable[Any]:
    """A coroutine or asyncio Future as is; a ``concurrent.futures.Future`` wrapped."""
    if isinstance(result, concurrent.futures.Future):
        return asyncio.wrap_future(result)
    return result  # type: ignore[no-any-return]


def discard(awaitable: Any) -> None:
    """Let go of a call's awaitable that no task will await (the run is over): close a
    coroutine that never started (else it warns "never awaited"); cancel a Future, or
    read its exception (else it warns "exception was never retrieved")."""
    if isinstance(awaitable, concurrent.futures.Future):
        awaitable.cancel()  # (a call running in a thread or process runs to its end)
        return
    if type(awaitable) is CoroutineType:
        if inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED:
            awaitable.close()
    elif (
        isinstance(awaitable, asyncio.Future)
        and not awaitable.cancel()
        and not awaitable.cancelled()
    ):
        awaitable.exception()


async def settle(result: Any, kind: int | None) -> tuple[Any, int]:
    """A call's result, awaited while it is awaitable, and its kind.

    One rule for every call: a coroutine (or Future) that a call returns is awaited, in
    the call's task, whether an ``async def`` returned it (a forgotten ``await``) or a
    plain function or an executor did.
    """
    if kind is None:
        kind = KINDS_GET(type(result))
    if kind is None:
        kind = kind_of(type(result))
    while kind == AWAIT:
        result = await as_awaitable(result)
        kind = kind_of(type(result))
    return result, kind


# -- the call's task -------------------------------------------------------------------------

start_task: Callable[..., asyncio.Task[Any]]
"""``start_task(coro, loop=loop, context=context)``: a real task for a call's coroutine.

On 3.12+ it is started eagerly: its first step runs now, as the current task, and a call
that never suspends is done on return, with no loop step (``eager_start=True`` is the
public contract of ``asyncio.create_eager_task_factory`` since 3.12, and a documented
parameter of ``asyncio.Task`` since 3.14). 3.11 has no eager start: the task starts on
the loop's next step. (A ``functools.partial`` rather than a function: one Python call
fewer per call, about 5% of the async path.)
"""
if sys.version_info >= (3, 12):
    start_task = functools.partial(asyncio.Task, eager_start=True)
else:
    start_task = asyncio.Task


def run_error(exc: BaseException) -> BaseException:
    """What a run raises to its consumer for an exception that escaped a call's task.

    ``CancelledError`` (not the run's own cancellation: that closes the run first) would
    read as the consumer being cancelled, and ``StopIteration`` or ``StopAsyncIteration``
    raised from ``__anext__`` as the end of the stream: each becomes a RuntimeError
    caused by it, with its notes."""
    if isinstance(exc, asyncio.CancelledError):
        wrapped = RuntimeError(
            "a call was cancelled from outside the pipeline (a task cancelled "
            "itself, or CancelledError was raised in it)"
        )
    elif isinstance(exc, (StopIteration, StopAsyncIteration)):
        wrapped = RuntimeError(f"{type(exc).__name__} escaped from a task: {exc!r}")
    else:
        return exc
    wrapped.__cause__ = exc
    for note in getattr(exc, "__notes__", ()):
        wrapped.add_note(note)
    return wrapped
