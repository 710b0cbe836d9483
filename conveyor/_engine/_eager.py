"""Eager start of coroutines.

Creating an asyncio task per call costs ~10 us; most trivial ``async def`` calls finish
without ever suspending. So the engine runs the first step of a call synchronously
(``coro.send(None)``) and only wraps the coroutine in a task when it actually suspends.

During that first step ``asyncio.current_task()`` must not be the engine's own task:
``asyncio.timeout``, ``TaskGroup`` and aiohttp's timers capture it and cancel it later.
So the first step runs with a :class:`TaskProxy` installed as the current task; if the
call suspends, the proxy is bound to the real task and forwards cancellation to it.

A call that suspends is carried on by a task: a new one, or (see :class:`Handoff`) the
task of a call that just finished and whose result started it.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from asyncio import tasks as _asyncio_tasks
from collections.abc import Coroutine, Generator
from typing import Any, Protocol

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

UNSTARTED: Any = object()
"""``first`` of a call whose coroutine has not run yet (see :class:`Driver`)."""


class Owner(Protocol):
    """What a :class:`Driver` reports a call's outcome to (a stage)."""

    def _returned(self, result: Any, item: Any, node: Any, at_once: bool) -> None: ...

    def _raised(self, exc: Exception, item: Any, node: Any) -> Coroutine[Any, Any, Any]: ...

    def _annotate(self, exc: BaseException, item: Any) -> BaseException: ...


Call = tuple[Owner, Coroutine[Any, Any, Any], Any, contextvars.Context, Any, Any]
"""A call for a driver: ``(owner, coroutine, first, context, item, node)``.

``first`` is what the coroutine yielded when it was started eagerly, or
:data:`UNSTARTED`; ``context`` is the copy of the run's context the call runs in.
"""


class Home(Protocol):
    """The run a :class:`Driver` works for."""

    handoff: Handoff
    closed: bool

    def driver_ended(self, error: BaseException | None) -> None:
        """Called in the last step of a driver's task (``error``: why it ended early)."""


class Handoff:
    """Where a finishing call leaves the next call that its task may take over.

    Creating a task per call that suspends is the largest per-call cost under wide I/O.
    When a call finishes inside a :class:`Driver`, its result often starts the next
    stage's call (or a queued one). Rather than spawn a task for that call, the finishing
    driver carries it on: ``driver`` is set while the finishing call's result is handed
    on, and ``offer()`` leaves a call here for it.
    """

    __slots__ = ("call", "driver")

    def __init__(self) -> None:
        self.driver: asyncio.Task[Any] | None = None
        self.call: Call | None = None

    def offer(self, call: Call) -> asyncio.Task[Any] | None:
        """Leave ``call`` for the finishing driver; its task, or ``None`` if there is none."""
        driver = self.driver
        # A task with a cancellation request pending would pass it on to the new call.
        if driver is None or self.call is not None or driver.cancelling():
            return None
        self.call = call
        return driver


class Driver(Coroutine[Any, Any, Any]):
    """The coroutine of a call's task: it runs a call, then any calls handed over to it.

    It drives the user's coroutine itself and reports the outcome to the call's owner:
    the result, or the exception (the owner returns a recovery coroutine, which the
    driver runs next in the same context).

    A call started eagerly has already yielded ``first``: the task's first step re-yields
    it. A cancellation that arrives before that step is thrown straight into the
    coroutine, so the user's code sees ``CancelledError`` at its ``await`` and its clean-up
    runs. An :data:`UNSTARTED` call runs its first step in the task, with the task as the
    current one.

    When the call ends, a call left in the :class:`Handoff` is taken over, each of its
    steps run in that call's own context.
    """

    __slots__ = ("_context", "_coro", "_first", "_home", "_item", "_node", "_owner")

    def __init__(self, call: Call, home: Home) -> None:
        self._owner: Owner | None
        self._owner, self._coro, self._first, _, self._item, self._node = call
        self._context: contextvars.Context | None = None  # the task's own: the call's
        self._home = home

    def send(self, value: Any) -> Any:
        try:
            first = self._first
            if first is not _NOTHING:
                self._first = _NOTHING
                if first is not UNSTARTED:
                    return first
            try:
                if self._context is None:
                    return self._coro.send(value)
                return self._context.run(self._coro.send, value)
            except StopIteration as stop:
                return self._returned(stop.value, first is UNSTARTED)
            except Exception as exc:
                return self._raised(exc)
        except StopIteration:  # the end, already reported by _take_over
            raise
        except BaseException as exc:
            return self._crashed(exc)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._first = _NOTHING
        exc = typ if val is None and tb is None else typ(val).with_traceback(tb)
        try:
            try:
                if self._context is None:
                    return self._coro.throw(exc)
                return self._context.run(self._coro.throw, exc)
            except StopIteration as stop:
                return self._returned(stop.value, False)
            except Exception as error:
                return self._raised(error)
        except StopIteration:
            raise
        except BaseException as error:
            return self._crashed(error)

    def _crashed(self, exc: BaseException) -> Any:
        """The task ends early: cancelled, or the engine's own code failed."""
        if self._owner is not None and not self._home.closed:
            self._owner._annotate(exc, self._item)  # a call cancelled from outside
        self._home.driver_ended(exc)
        if isinstance(exc, Exception):
            raise StopIteration  # the run has it now (and raises it to its consumer)
        raise exc

    def _returned(self, result: Any, at_once: bool) -> Any:
        owner = self._owner
        if owner is not None:
            self._owner = None
            owner._returned(result, self._item, self._node, at_once)
        return self._take_over()

    def _raised(self, exc: Exception) -> Any:
        owner = self._owner
        if owner is None:  # the engine's own coroutine failed: the task fails the run
            raise exc
        self._owner = None
        self._coro = owner._raised(exc, self._item, self._node)
        return self.send(None)

    def _take_over(self) -> Any:
        handoff = self._home.handoff
        call = handoff.call
        if call is None:
            self._home.driver_ended(None)
            raise StopIteration
        handoff.call = None
        self._owner, self._coro, self._first, self._context, self._item, self._node = call
        return self.send(None)

    def close(self) -> None:
        if self._context is None:
            self._coro.close()
        else:
            self._context.run(self._coro.close)

    def __await__(self) -> Generator[Any, Any, Any]:  # pragma: no cover - tasks use send
        raise TypeError("a Driver is run by a task, not awaited")
