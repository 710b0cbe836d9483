"""Binding a stage's function for one run: side inputs resolved, resources opened.

Side inputs (``task.with_inputs(...)``) are resolved at the start of every run, never
cached: a plain value is passed as is; a coroutine or other awaitable is awaited (a
coroutine serves one run); an async iterable or stream contributes its first item.

Resources (``task.with_resources(name=...)``) are opened on the run's exit stack before
its first call and closed when the run ends, however it ends. A resource is an async (or
plain) context manager, or a factory of one: a callable of no arguments, called once per
run. A factory (or manager) given to several tasks is opened once per run and shared.
Each reaches the function as the keyword argument it was declared under.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Collection
from typing import Any

from .._spec import StageSpec

Invoke = Callable[[Any], Any]


async def bind_stage(
    spec: StageSpec,
    stack: contextlib.AsyncExitStack,
    opened: dict[int, Any],
    *,
    with_item: bool,
) -> Invoke:
    """``invoke(item)`` for this run: ``func(item, *args, **kwargs, **resources)``."""
    func = spec.func
    args = [await resolve_side_input(value) for value in spec.args]
    kwargs = {key: await resolve_side_input(value) for key, value in spec.kwargs}
    for key, resource in spec.resources:
        kwargs[key] = await _open(resource, key, spec.name, stack, opened)
    # Partials of module-level functions, not lambdas: a process executor pickles them.
    if not with_item:
        return functools.partial(_without_item, func, args, kwargs)
    if spec.batch:
        return functools.partial(_with_batch, func, args, kwargs)
    if args or kwargs:
        return functools.partial(_with_item, func, args, kwargs)
    return func


def _without_item(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], _: Any) -> Any:
    return func(*args, **kwargs)


def _with_batch(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], batch: Any
) -> Any:
    return func(list(batch), *args, **kwargs)  # a list of its own, whatever the caller keeps


def _with_item(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], item: Any) -> Any:
    return func(item, *args, **kwargs)


async def _open(
    resource: Any, key: str, task: str, stack: contextlib.AsyncExitStack, opened: dict[int, Any]
) -> Any:
    if id(resource) in opened:
        return opened[id(resource)]
    manager = resource
    if not _is_manager(manager) and callable(manager):
        manager = manager()
        if inspect.isawaitable(manager) and not _is_manager(manager):
            manager = await manager
    if _is_manager(manager) and hasattr(manager, "__aenter__"):
        value = await stack.enter_async_context(manager)
    elif _is_manager(manager):
        value = stack.enter_context(manager)
    else:
        raise TypeError(
            f"resource {key!r} of task {task!r} must be a context manager (async or not) or "
            f"a callable returning one, got {type(manager).__name__}: {manager!r}"
        )
    opened[id(resource)] = value
    return value


def _is_manager(value: Any) -> bool:
    """A context manager instance (a class, such as ``aiohttp.ClientSession``, is a factory)."""
    return not isinstance(value, type) and (
        hasattr(value, "__aenter__") or hasattr(value, "__enter__")
    )


async def resolve_side_input(value: Any) -> Any:
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
            if getattr(type(value), "is_conveyor_stream", False):  # one run's results
                async with value:  # type: ignore[attr-defined]
                    return await anext(value)  # type: ignore[call-overload]
            return await anext(aiter(value))
        except StopAsyncIteration:
            raise ValueError(
                f"side input {value!r} produced no item: an async iterable side input "
                "contributes its first item to each run"
            ) from None
    if isinstance(value, Awaitable):
        return await value
    return value


async def close_resources(
    stack: contextlib.AsyncExitStack,
    tasks: Collection[asyncio.Task[Any]],
    running: list[concurrent.futures.Future[Any]],
) -> None:
    """Close a run's resources (its ``stack``) once every other task of the run (in
    ``tasks``) has ended, and every call still ``running`` on a user's thread pool (such
    a call cannot be cancelled: it must not see its resource closed).

    The caller (the run's supervisor) may be cancelled at any point, even before this
    starts (a call that fails at once cancels the run from inside the supervisor's own
    step), so the closing runs to its end (see :func:`complete`).
    """
    supervisor = asyncio.current_task()

    async def close() -> None:
        while others := [task for task in tasks if task is not supervisor and not task.done()]:
            await asyncio.wait(others)
        if running:
            calls = [asyncio.wrap_future(future) for future in running]
            await asyncio.wait(calls)
            for call in calls:  # (their outcome is the run's no more: retrieved, dropped)
                if not call.cancelled():
                    call.exception()
        await stack.aclose()

    await complete(close())


async def complete(closing: Awaitable[Any]) -> None:
    """Await ``closing`` (a clean-up) to its end, even if the caller is cancelled meanwhile.

    A run's clean-up happens while the run is being cancelled: its supervisor may hold a
    cancellation not yet delivered (the run failed from inside the supervisor's own step)
    or receive one while it waits. Awaited directly, the clean-up would be cancelled at
    its first ``await``, half-way (a source's thread left reading, its file open). So it
    runs in a task of its own, awaited to its end however often the caller is cancelled;
    then the caller's cancellation goes on. (Only the clean-up's own cancellation, as at
    the event loop's shutdown, stops it.)
    """
    if not inspect.iscoroutine(closing):  # (an async generator's aclose() is not one)
        closing = _awaited(closing)
    task = asyncio.get_running_loop().create_task(closing)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():  # the clean-up itself was cancelled (or ended meanwhile)
                raise
            cancelled = exc  # the caller's: delivered once the clean-up has ended
            continue
        break
    if cancelled is not None:
        raise cancelled


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
