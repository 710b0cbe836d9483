"""Calls that do not finish at once: awaited in a task of their own, or settled by a
callback when all they wait on is a Future.

**Tasks.** :func:`go_async` runs a call's awaitable (the coroutine of an ``async def``, a
Future with a timeout, a recovery) in a real asyncio task (:func:`drive`): the call's
code sees a real current task, working timeouts, TaskGroups and its own copy of the
run's contextvars. The task applies the timeout and the error policy, and hands the
result on when it is done.

**Futures.** A call that an executor sends off the loop returns a Future: a
``concurrent.futures`` Future from a user's thread pool, or an ``_calls.Answer`` from
conveyor's own executors (its thread pool, process chunks, Dask). Its code does not run
on the loop, so while it waits a task would have nothing to do: :func:`await_future`
hands the Future to the run's :class:`Completions`, and :func:`finish` settles it when it
is done, by :func:`drive`'s rules, without a task. Answers are settled in bulk: the
sender tells their waiter (``Completions.settle``) in the one loop callback that brings
a chunk's answer or a thread pool's completions, item after item in order, with no loop
callback per item.
Only what must await gets one: a failed call that the policy retries or recovers, a
result that is itself awaitable, and every call of a task with a timeout
(``asyncio.timeout`` needs a task: ``Stage.futures`` is None for those).

Threads complete their Futures in their own threads. Their done callbacks queue the
Future and wake the loop once for each batch of completions: ``call_soon_threadsafe``
writes to the loop's self-pipe, so one write serves every Future that completes before
the loop gets to it. (Measured, 2,000 x ``sleep(0.01)`` on 64 threads: a wake and a task
per item cost 44-91 µs, 0.91x ``ThreadPoolExecutor(64).map``; this path and
``_threads``' pool, 1.01-1.02x, 5-12 µs per item.)

**Counting and ownership.** Both count a call as running (the concurrency limit), its
item as in flight, and the run as busy, from when it waits until the result is handed on
(the ledger's ``call_waits``, ``waited``, ``work_stopped``; a task started eagerly that
never suspends is a call made at once, counted by nothing). A task is in
the run's ``tasks`` once it suspends; a Future is in ``Completions.waiting`` until it is
settled. The run's ``abort()`` cancels both, and a Future completing after that settles
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from ._calls import (
    _CANCELLED,
    _ERROR,
    AWAIT,
    KINDS_GET,
    VALUE,
    Answer,
    discard,
    kind_of,
    settle,
    start_task,
)
from ._roles import StageRole

if TYPE_CHECKING:
    import concurrent.futures
    import contextvars

    AnyFuture = asyncio.Future[Any] | concurrent.futures.Future[Any] | Answer


class Caller(StageRole, Protocol):
    """A stage (``_stage.Stage``), as its waiting calls see it: where a call's Future
    waits without a task (None: the task has a timeout, which needs a task)."""

    @property
    def futures(self) -> Completions | None: ...


__all__ = ["Completions", "Recovery", "await_future", "drive", "finish", "go_async"]


def go_async(
    stage: Caller,
    awaitable: Any,
    context: contextvars.Context,
    item: Any,
    node: Any,
    origin: Any = None,
) -> None:
    """Await a call's result in a real task of its own, counted while it waits.

    On 3.12+ the task starts eagerly (``start_task``): a call that never suspends is
    done when its task is made, and is a call made at once, as a plain function's:
    nothing ran beside it, so nothing counted it, and its result goes on as a plain
    call's does (no ledger transition for a single stage: with two, 0.88x of f35dcf8 on
    three trivial ``async def`` stages on 3.14). A call that suspends is counted from
    then on (``call_waits``), until its result is out (``waited``, in ``_hand_on``).
    """
    run = stage.run
    if run.closed:  # a call made while the run unwinds: start nothing
        discard(awaitable)
        return
    # The item's node, whether the call waits (counted, its task listed by the run),
    # the task, the result of a call done in its first step, and the item's origin.
    place = [node, False, None, _NO_RESULT, origin]
    task = start_task(drive(stage, awaitable, item, place), loop=stage.loop, context=context)
    place[2] = task
    if not task.done():
        # It suspended (or, on 3.11, has not started): nothing was appended behind it
        # yet, so its place in the order is the tail, now. An item whose call never
        # suspends costs no node.
        stage.ledger.call_waits(stage)
        if node is None and stage.list is not None:
            place[0] = stage.list.append()
        place[1] = True
        run.tasks[task] = awaitable
    elif place[3] is not _NO_RESULT:
        # Done in its first step: its result goes on now that asyncio has applied any
        # cancellation the call requested of its own task and returned without awaiting
        # (then the task ended cancelled, as in asyncio).
        if task.cancelled():
            if not run.closed:
                run.fail(stage.policy.annotate(asyncio.CancelledError(), item))
            return
        if run.closed:  # (the call failed the run)
            return
        result = place[3]
        if KINDS_GET(type(result)) == VALUE:
            stage.downstream.push(result, node, origin)
        else:
            stage.emit(result, node, origin)
        if stage.is_batch:
            stage.call_done(item)


_NO_RESULT: Any = object()


def await_future(
    stage: Caller, future: Any, context: contextvars.Context, item: Any, node: Any, origin: Any
) -> None:
    """Wait for a call's Future without a task, counted as :func:`go_async` counts one."""
    if stage.run.closed:
        discard(future)
        return
    stage.ledger.call_waits(stage)
    if node is None and stage.list is not None:
        node = stage.list.append()
    completions: Completions = stage.futures  # type: ignore[assignment]
    if type(future) is Answer and future.waiter is None and not future.state:
        # (``Completions.add``'s common case, inline: one call fewer per item)
        completions.waiting[future] = (stage, item, node, context, origin)
        future.waiter = completions.on_answer
    else:
        completions.add(stage, future, context, item, node, origin)


async def drive(stage: Caller, awaitable: Any, item: Any, place: list[Any]) -> None:
    """The coroutine of a call's task: await the call, recover, hand the result on.

    ``place`` is ``[node, waits, task, result, origin]``: the item's node when the
    result is handed on, whether the call waits (counted, the task in the run's list),
    the task, the result of a call done in its first step (see ``go_async``), and the
    item's origin.
    """
    run = stage.run
    try:
        try:
            if type(awaitable) is Recovery:
                result = await stage.policy.recover(awaitable.error, item)
            else:
                try:
                    if stage.timeout is None:
                        result = await awaitable
                        kind = KINDS_GET(type(result))
                        if kind != VALUE:
                            result, kind = await settle(result, kind)
                    else:
                        async with asyncio.timeout(stage.timeout):
                            result, kind = await settle(await awaitable, None)
                except Exception as exc:
                    result = await stage.policy.recover(exc, item)
            task = place[2]
            if task is None:
                # Started eagerly (3.12+) and never suspended: still inside the Task's
                # constructor. ``go_async`` hands the result on once it returns (a look
                # at the task then costs a method, not current_task() and cancelling():
                # 11% of three trivial async stages on 3.14).
                place[3] = result
                return
            if task.cancelling():
                # A cancellation was requested: if the call asked for it and returned
                # without awaiting again, it is still pending, and in asyncio the task
                # ends cancelled. The next await delivers it (reported below, the result
                # is not handed on); else (a request already delivered, e.g. the count a
                # TaskGroup leaves on 3.11 and 3.12) it returns and the result goes on.
                await asyncio.sleep(0)
        except asyncio.CancelledError as exc:
            if not run.closed:  # not the run's own cancellation: the call's
                run.fail(stage.policy.annotate(exc, item))
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            if getattr(exc, "__notes__", None):  # the policy's own: annotated
                run.fail(exc)
            else:
                stage.crashed(exc, item)
            return
        _hand_on(stage, result, place[0], item, place[4])
        place[3] = None  # (its work stopped with it)
    finally:
        if place[1]:
            del run.tasks[place[2]]  # (listed: go_async has stored it)
        if place[1] and place[3] is _NO_RESULT:  # (counted, not handed on above)
            stage.ledger.work_stopped()


def _hand_on(stage: Caller, result: Any, node: Any, item: Any, origin: Any) -> None:
    """A waited call's result goes on; its slot is free, and its work stops."""
    if not stage.run.closed:  # else a call that ignored its cancellation: start nothing
        if KINDS_GET(type(result)) == VALUE:
            stage.downstream.push(result, node, origin)
        else:
            stage.emit(result, node, origin)
    gate = stage.gate
    if gate is None:
        stage.ledger.waited(stage, item, True)
    else:  # (its next turn may start before the run looks for a stall)
        stage.ledger.waited(stage, item, False)
        gate.call_ended(item)
        stage.ledger.work_stopped()


class Recovery:
    """Stands for a call whose first attempt raised synchronously: its task recovers."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class Completions:
    """The Futures a run's calls wait on, and their completions, brought to the loop."""

    __slots__ = ("context", "done", "loop", "on_answer", "running", "scheduled", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, context: contextvars.Context) -> None:
        self.loop = loop
        self.context = context
        self.waiting: dict[Any, tuple[Caller, Any, Any, contextvars.Context, Any]] = {}
        self.done: deque[Any] = deque()  # completed in threads, not yet settled
        self.scheduled = False  # whether a drain is on its way to the loop
        # Futures of calls that were running in a thread when the run ended (see cancel)
        self.running: list[concurrent.futures.Future[Any]] = []
        self.on_answer = self.settle  # (an Answer's waiter: bound once, not per item)

    def add(
        self,
        stage: Caller,
        future: AnyFuture,
        context: contextvars.Context,
        item: Any,
        node: Any,
        origin: Any,
    ) -> None:
        self.waiting[future] = (stage, item, node, context, origin)
        if isinstance(future, Answer):  # (its sender settles it on the loop, and tells us)
            if future.state:  # settled already (a pool being torn down cancelled it)
                self.loop.call_soon(self.settle, future, context=self.context)
            elif future.waiter is None:
                future.waiter = self.on_answer
            else:  # (statistics time the call: their callback first)
                future.add_done_callback(self.on_answer)
        elif isinstance(future, asyncio.Future):
            future.add_done_callback(self.settle, context=self.context)
        else:
            future.add_done_callback(self._completed)

    def _completed(self, future: concurrent.futures.Future[Any]) -> None:
        """(In the thread that completed ``future``.) Queue it; wake the loop if needed."""
        self.done.append(future)
        if not self.scheduled:
            # (Cleared by the drain before it reads the queue: a Future queued after
            # that read schedules a drain of its own.)
            self.scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                self.loop.call_soon_threadsafe(self._drain, context=self.context)

    def _drain(self) -> None:
        self.scheduled = False
        done = self.done
        while done:
            self.settle(done.popleft())

    def settle(self, future: Any) -> None:
        entry = self.waiting.pop(future, None)
        if entry is not None:  # (else cancelled with the run: nothing to settle)
            stage, item, node, context, origin = entry
            finish(stage, future, item, node, context, origin)

    def cancel(self) -> None:
        """The run is over: cancel every Future still waiting, and forget them all."""
        waiting = list(self.waiting)
        self.waiting.clear()
        for future in waiting:
            if isinstance(future, (asyncio.Future, Answer)):
                discard(future)
            elif not future.cancel():  # running in a thread: it runs to its end
                self.running.append(future)


def finish(
    stage: Caller,
    future: AnyFuture,
    item: Any,
    node: Any,
    context: contextvars.Context,
    origin: Any,
) -> None:
    """Settle a call whose Future is done: ``Stage.drive``'s rules, without its task."""
    run = stage.run
    working = True  # (until the ledger stops its work)
    try:
        if type(future) is Answer:  # (its outcome read directly: the items of a chunk)
            state = future.state
            cancelled = state == _CANCELLED
            error = future.value if state == _ERROR else None
        else:
            cancelled = future.cancelled()
            error = None if cancelled else future.exception()
        if cancelled:  # not by the run (that forgets its Futures first)
            run.fail(stage.policy.annotate(asyncio.CancelledError(), item))
            return
        if error is None:
            result = future.value if type(future) is Answer else future.result()
            kind = KINDS_GET(type(result))
            if kind is None:
                kind = kind_of(type(result))
            if kind == AWAIT:  # the call gave back an awaitable: awaited in a task
                _to_task(stage, result, context, item, node, origin)
                return
            if kind:
                stage.emit_kind(kind, result, node, origin)
            else:  # (one item: ``Stage.emit`` without its second look at the kind)
                stage.downstream.push(result, node, origin)
        elif not isinstance(error, Exception):
            stage.crashed(error, item)
            return
        elif not stage.policy.settles_at_once(error, item):
            _to_task(stage, Recovery(error), context, item, node, origin)
            return
        else:
            try:  # (in the call's context: a checkpoint reads its origins there)
                result = context.run(stage.policy.final, error, item, 1)
            except BaseException as final:
                run.fail(final)
                return
            stage.emit(result, node, origin)
        gate = stage.gate
        if gate is None:
            stage.ledger.waited(stage, item, True)
            working = False
        else:  # (as ``_hand_on``)
            stage.ledger.waited(stage, item, False)
            gate.call_ended(item)
    finally:
        if working:
            stage.ledger.work_stopped()


def _to_task(
    stage: Caller,
    awaitable: Any,
    context: contextvars.Context,
    item: Any,
    node: Any,
    origin: Any,
) -> None:
    """Go on in a call's task (``go_async`` counts the item again: uncount it here)."""
    stage.ledger.call_moves_to_task(stage)
    go_async(stage, awaitable, context, item, node, origin)
