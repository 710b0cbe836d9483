"""The executor seam: how a stage's call is made, what comes back, and the call's task.

An :class:`Executor` turns a stage's function (with its side inputs and resources bound)
into the per-item call the engine makes: ``executor.bind(invoke)`` returns a callable of
one item. Whatever that callable returns is accepted (:func:`kind_of`):

* a plain value (the result), ``None``, a ``list``, a generator: see ``_stage``'s rules;
* a coroutine, an asyncio Future or a ``concurrent.futures.Future``: awaited in a real
  asyncio task of its own (:func:`start_task`), so the call's code sees a real current
  task, working timeouts, TaskGroups and its own copy of the run's contextvars;
* an :class:`Answer`: the future of one item that conveyor's own executors (its thread
  pool, process chunks, Dask) send off the loop, settled on the loop by its sender, in
  bulk with the other answers that arrived together (see :class:`Answer`).

The default, :data:`INLINE`, calls the function on the event loop: a plain function runs
to completion, an ``async def`` returns its coroutine. Threads, processes and clusters
plug in here and nowhere else (``_registry`` declares them, ``_threads``, ``_pools``,
``_dask``, ``_ray`` and ``_auto`` implement them).

The protocol, with its optional parts (``open`` for a run-scoped executor, ``chunker``
for chunk figures), is public: :mod:`conveyor.abc`. The kinds of ``executor=`` values,
and which module builds each, are the registry's (``_registry``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable, Generator
from types import AsyncGeneratorType, CoroutineType, GeneratorType, NoneType
from typing import TYPE_CHECKING, Any

from ..abc import Executor
from ..errors import Failure

if TYPE_CHECKING:
    from .._spec import StageSpec

__all__ = [
    "INLINE",
    "Answer",
    "Executor",
    "InlineExecutor",
    "as_awaitable",
    "discard",
    "executor_for",
    "given",
    "kind_of",
    "settle",
    "start_task",
]


class InlineExecutor:
    """Calls on the event loop; an ``async def``'s coroutine runs in a task of its own."""

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return invoke  # no wrapper: a plain call costs one function call

    def __repr__(self) -> str:
        return "inline"


INLINE = InlineExecutor()


def executor_for(spec: StageSpec, option: Any) -> Executor:
    """The ``inline`` kind's executor (``None``, ``"inline"``): the one :data:`INLINE`."""
    return INLINE


def given(spec: StageSpec, option: Executor) -> Executor:
    """The ``bind`` kind's executor: the user's object itself (``conveyor.abc.Executor``)."""
    return option


# -- an item's answer, settled in bulk -----------------------------------------------------

_PENDING, _RESULT, _ERROR, _CANCELLED = 0, 1, 2, 3


class Answer:
    """The future of one item's call that conveyor's own executors send off the loop.

    An asyncio Future per item costs a loop callback (a ``Handle``, a turn of the loop)
    per item when it completes; an item sent in a chunk of 1,000 would pay 1,000 of them
    for one answer from the worker. An Answer is a plain object instead: its *sender* (a
    chunk's answer, a thread pool's batch of completions, on the loop) sets the outcome of
    every item that came back (:meth:`set_result`, :meth:`set_exception`,
    :meth:`cancel`) and then calls their waiters at once, in order (:func:`hand_on`):
    one loop callback per chunk or per wake-up, not per item.

    Only the loop touches an Answer, except that a worker thread may read
    :meth:`cancelled` before it starts a call (one field read). The engine waits for
    one without a task (``_waiting.Completions`` sets :attr:`waiter`), or awaits it in a
    call's task (``await answer``: a timeout, a retry); a task cancelled while it awaits
    one cancels it (and tells its waiters: see :meth:`__await__`), so that an item not
    yet sent is not sent, and its result, if it comes, is dropped. :meth:`cancel` itself
    tells no one: whoever cancels an Answer it does not own (the run's end) has stopped
    waiting for it already; a sender that cancels items (a pool shut down) hands them on.
    """

    __slots__ = ("item", "state", "value", "waiter")

    def __init__(self, item: Any) -> None:
        self.item = item  # (the sender's: what to send)
        self.state = _PENDING
        self.value: Any = None
        # Called with this Answer once it is settled and handed on (at most one: the
        # engine's, or the bridge of ``__await__``; ``add_done_callback`` chains more).
        self.waiter: Callable[[Answer], None] | None = None

    def done(self) -> bool:
        return self.state != _PENDING

    def cancelled(self) -> bool:
        return self.state == _CANCELLED

    def result(self) -> Any:
        state = self.state
        if state == _RESULT:
            return self.value
        if state == _ERROR:
            raise self.value
        if state == _CANCELLED:
            raise asyncio.CancelledError
        raise asyncio.InvalidStateError("the answer is not ready")

    def exception(self) -> BaseException | None:
        state = self.state
        if state == _ERROR:
            return self.value  # type: ignore[no-any-return]
        if state == _CANCELLED:
            raise asyncio.CancelledError
        if state == _PENDING:
            raise asyncio.InvalidStateError("the answer is not ready")
        return None

    def set_result(self, value: Any) -> None:
        """(The sender's.) Settle it with ``value``; :func:`hand_on` tells its waiter."""
        self.state = _RESULT
        self.value = value

    def set_exception(self, error: BaseException) -> None:
        self.state = _ERROR
        self.value = error

    def cancel(self) -> bool:
        """Cancel it if it is pending (see the class doc: no one is told)."""
        if self.state != _PENDING:
            return False
        self.state = _CANCELLED
        return True

    def add_done_callback(self, fn: Callable[[Answer], None]) -> None:
        """Call ``fn(answer)`` when it is handed on (after the waiter, if one is set)."""
        if self.state != _PENDING:
            fn(self)
            return
        first = self.waiter
        if first is None:
            self.waiter = fn
            return

        def both(answer: Answer) -> None:
            first(answer)
            fn(answer)

        self.waiter = both

    def __await__(self) -> Generator[Any, None, Any]:
        """Await it in a task (a call with a timeout, a retry): through an asyncio Future
        made now; if the task is cancelled meanwhile, so is the Answer, and its waiters
        are told (the task's bridge, done already; the statistics' timing of the call:
        ``_loop.TimedCall``, which records a call that timed out as having taken that
        long, as it does for a call on the loop)."""
        if self.state == _PENDING:
            bridge = asyncio.get_running_loop().create_future()
            self.add_done_callback(functools.partial(_bridge, bridge))
            try:
                yield from bridge
            except asyncio.CancelledError:
                if self.cancel():
                    waiter, self.waiter = self.waiter, None
                    if waiter is not None:
                        waiter(self)
                raise
        return self.result()

    def __repr__(self) -> str:
        state = ("pending", "result", "error", "cancelled")[self.state]
        return f"<Answer {state}>"


def _bridge(bridge: asyncio.Future[Any], answer: Answer) -> None:
    if bridge.done():  # (its task was cancelled)
        return
    if answer.state == _RESULT:
        bridge.set_result(answer.value)
    elif answer.state == _ERROR:
        bridge.set_exception(answer.value)
    else:
        bridge.cancel()


def hand_on(loop: asyncio.AbstractEventLoop, answers: list[Answer]) -> None:
    """(On the loop.) Tell the waiters of ``answers``, just settled, in order.

    A waiter that raises is reported to the loop's exception handler, as a Future's
    callback would be, and the others are still told: no answer is left unsettled. (A
    ``KeyboardInterrupt`` or ``SystemExit`` goes on up; the rest are told on the loop's
    next step.)"""
    count = len(answers)
    at = 0
    while at < count:
        try:
            while at < count:
                answer = answers[at]
                at += 1
                waiter = answer.waiter
                if waiter is not None:
                    answer.waiter = None
                    waiter(answer)
        except (KeyboardInterrupt, SystemExit):
            if at < count:
                loop.call_soon(hand_on, loop, answers[at:])
            raise
        except BaseException as exc:
            loop.call_exception_handler(
                {"message": "an answer's waiter raised", "exception": exc, "future": answer}
            )


# -- what a call gives back ----------------------------------------------------------------

VALUE, NONE, LIST, EXPAND, AWAIT = 0, 1, 2, 3, 4


class Regrouped(list[Any]):
    """A call's results that stand for more input items than the call's own: a
    ``route``'s result of a batch in its branch (see ``_branch``). They go on as a
    list's elements, carrying ``origins`` (the items') instead of the call's item's."""

    __slots__ = ("origins",)

    def __init__(self, results: list[Any], origins: tuple[Any, ...]) -> None:
        super().__init__(results)
        self.origins = origins


_KINDS: dict[type, int] = {
    NoneType: NONE,
    list: LIST,
    Regrouped: LIST,
    GeneratorType: EXPAND,
    AsyncGeneratorType: EXPAND,
    CoroutineType: AWAIT,
    Answer: AWAIT,
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
    if isinstance(awaitable, (concurrent.futures.Future, Answer)):
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
