"""Eager start of coroutines.

Creating an asyncio task per call costs ~10 us; most trivial ``async def`` calls finish
without ever suspending. So the engine runs the first step of a call synchronously
(``coro.send(None)``) and only wraps the coroutine in a task when it actually suspends.

During that first step ``asyncio.current_task()`` must not be the engine's own task:
``asyncio.timeout``, ``TaskGroup`` and aiohttp's timers capture it and cancel it later.
So the first step runs with a :class:`TaskProxy` installed as the current task; if the
call suspends, the proxy is bound to the real task and forwards cancellation to it.
"""

from __future__ import annotations

import asyncio
import types
from asyncio import tasks as _asyncio_tasks
from collections.abc import Coroutine, Generator
from typing import Any

# The loop -> current task mapping that asyncio.current_task() reads (the C one when the
# C accelerator is in use: asyncio.tasks re-exports it).
current_tasks: dict[asyncio.AbstractEventLoop, Any] = _asyncio_tasks._current_tasks  # type: ignore[attr-defined]


class TaskProxy:
    """Stands in for the task of a call during its synchronous first step."""

    __slots__ = ("_cancels", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._cancels: list[Any] = []

    def bind(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        for msg in self._cancels:
            task.cancel(msg)
        self._cancels.clear()

    def cancel(self, msg: Any = None) -> bool:
        if self._task is not None:
            return self._task.cancel(msg)
        self._cancels.append(msg)
        return True

    def cancelling(self) -> int:
        return self._task.cancelling() if self._task is not None else len(self._cancels)

    def uncancel(self) -> int:
        if self._task is not None:
            return self._task.uncancel()
        if self._cancels:
            self._cancels.pop()
        return len(self._cancels)

    def done(self) -> bool:
        return self._task.done() if self._task is not None else False

    def cancelled(self) -> bool:
        return self._task.cancelled() if self._task is not None else False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def get_name(self) -> str:
        return self._task.get_name() if self._task is not None else "conveyor-eager-call"

    def __getattr__(self, name: str) -> Any:
        if self._task is None:
            raise AttributeError(f"{name!r} is not available during a call's first step")
        return getattr(self._task, name)


@types.coroutine
def resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """``yield from`` for a coroutine that has already run up to its first suspension."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


_NOTHING: Any = object()


class Started(Coroutine[Any, Any, Any]):
    """A coroutine already advanced to its first suspension, handed to an asyncio task.

    The task's first step re-yields what the coroutine yielded. A cancellation that
    arrives before that step is thrown straight into the coroutine, so the user's code
    sees ``CancelledError`` at its ``await`` and its clean-up runs (a plain wrapper
    coroutine would die unstarted and leave the user's coroutine to the garbage collector).
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def send(self, value: Any) -> Any:
        first = self._first
        if first is not _NOTHING:
            self._first = _NOTHING
            return first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._first = _NOTHING
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - old-style throw

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:  # pragma: no cover - tasks use send
        return (yield from self._coro.__await__())
