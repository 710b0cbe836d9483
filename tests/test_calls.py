"""Unit tests of the executor seam (``conveyor._engine._calls``).

Covers ``kind_of`` (what a call's result is: a value, None, a list, something to expand,
something to await), ``as_awaitable``, the executors (``INLINE``, ``PoolExecutor``,
``executor_for``) and ``start_task``: a real asyncio task, eager on Python 3.12+, running
in the context it is given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from conveyor import Failure
from conveyor._engine._calls import (
    AWAIT,
    EXPAND,
    INLINE,
    KINDS_GET,
    LIST,
    NONE,
    VALUE,
    as_awaitable,
    kind_of,
    start_task,
)
from conveyor._engine._pools import PoolExecutor, Processes
from conveyor._engine._registry import build as executor_for
from conveyor._engine._threads import RunThreads
from conveyor._spec import StageSpec, make_options


def spec_with(executor: Any) -> StageSpec:
    options = make_options({"executor": executor}, batch=False, where="test")
    return StageSpec(func=abs, name="f", batch=False, options=options)


var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

EAGER = sys.version_info >= (3, 12)


class MyList(list):  # type: ignore[type-arg]
    pass


class MyFuture(asyncio.Future):  # type: ignore[type-arg]
    pass


class Anything:
    pass


class LooksAwaitable:
    def __await__(self) -> Iterator[None]:
        yield


def gen() -> Iterator[int]:
    yield 1


async def agen() -> AsyncIterator[int]:
    yield 1


async def coro() -> int:
    return 1


# -- kind_of ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: None, NONE),
        (lambda: [1], LIST),
        (lambda: [], LIST),
        (gen, EXPAND),
        (agen, EXPAND),
        (lambda: 1, VALUE),
        (lambda: "s", VALUE),
        (lambda: (1, 2), VALUE),
        (lambda: {"a": 1}, VALUE),
        (lambda: MyList([1]), VALUE),  # a list's subclass is one item
        (Anything, VALUE),
        (LooksAwaitable, VALUE),  # only coroutines and Futures are awaited
        (lambda: Failure(1, ValueError(), "t", 1), VALUE),
        (lambda: concurrent.futures.Future(), AWAIT),
    ],
)
def test_kind_of(make: Callable[[], Any], kind: int) -> None:
    result = make()
    assert kind_of(type(result)) == kind
    assert kind_of(type(result)) == kind  # the cached answer is the same


async def test_kind_of_awaitables() -> None:
    c = coro()
    try:
        assert kind_of(type(c)) == AWAIT
    finally:
        c.close()
    loop = asyncio.get_running_loop()
    assert kind_of(asyncio.Future) == AWAIT
    assert kind_of(type(loop.create_future())) == AWAIT
    assert kind_of(MyFuture) == AWAIT
    assert kind_of(asyncio.Task) == AWAIT


def test_kind_of_caches_new_types() -> None:
    class Fresh:
        pass

    class FreshFuture(concurrent.futures.Future):  # type: ignore[type-arg]
        pass

    assert KINDS_GET(Fresh) is None and KINDS_GET(FreshFuture) is None
    assert kind_of(Fresh) == VALUE
    assert kind_of(FreshFuture) == AWAIT
    assert KINDS_GET(Fresh) == VALUE and KINDS_GET(FreshFuture) == AWAIT


def test_kinds_are_distinct_and_value_is_falsy() -> None:
    # The engine tests ``if kind:`` to tell a plain value from everything else.
    assert len({VALUE, NONE, LIST, EXPAND, AWAIT}) == 5
    assert not VALUE and all((NONE, LIST, EXPAND, AWAIT))


# -- as_awaitable -------------------------------------------------------------------------


async def test_as_awaitable_keeps_coroutines_and_asyncio_futures() -> None:
    c = coro()
    assert as_awaitable(c) is c
    assert await c == 1
    future = asyncio.get_running_loop().create_future()
    assert as_awaitable(future) is future
    future.cancel()


async def test_as_awaitable_wraps_a_concurrent_future() -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    wrapped = as_awaitable(future)
    assert isinstance(wrapped, asyncio.Future)
    future.set_result(7)
    assert await wrapped == 7


# -- executors ----------------------------------------------------------------------------


def test_inline_bind_returns_the_function_itself() -> None:
    def f(x: int) -> int:
        return x

    assert INLINE.bind(f) is f
    assert repr(INLINE) == "inline"


def test_executor_for() -> None:
    assert executor_for(spec_with(None)) is INLINE
    assert executor_for(spec_with("inline")) is INLINE
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        executor = executor_for(spec_with(pool))
        assert isinstance(executor, PoolExecutor) and executor.pool is pool
        assert repr(executor) == "ThreadPoolExecutor"
    custom = PoolExecutor(concurrent.futures.ThreadPoolExecutor(1))
    assert executor_for(spec_with(custom)) is custom
    custom.pool.shutdown()
    assert repr(executor_for(spec_with("thread:3"))) == "thread:3"
    assert isinstance(executor_for(spec_with("thread")), RunThreads)
    assert repr(executor_for(spec_with("process:3"))) == "'process:3'"
    with concurrent.futures.ProcessPoolExecutor(1) as processes:
        chunked = executor_for(spec_with(processes))
        assert isinstance(chunked, Processes) and chunked.user_pool is processes


def test_pool_executor_on_a_thread_pool_runs_in_a_thread_with_a_context_copy() -> None:
    def invoke(item: int) -> tuple[int, int, str]:
        seen = var.get()
        var.set("set in the thread")
        return item * 2, threading.get_ident(), seen

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = PoolExecutor(pool).bind(invoke)

        def from_caller() -> concurrent.futures.Future[Any]:
            var.set("caller")  # after bind: the copy is taken per call
            return call(21)

        future = contextvars.copy_context().run(from_caller)
        assert isinstance(future, concurrent.futures.Future)
        value, thread, seen = future.result(timeout=5)
    assert value == 42
    assert thread != threading.get_ident()
    assert seen == "caller"
    assert var.get() == "unset"  # nothing leaked back


def test_pool_executor_copies_the_context_per_call() -> None:
    def invoke(item: int) -> str:
        before = var.get()
        var.set(f"call {item}")
        return before

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = PoolExecutor(pool).bind(invoke)
        var_token = var.set("caller")
        try:
            first = call(1).result(timeout=5)
            second = call(2).result(timeout=5)
            assert var.get() == "caller"
        finally:
            var.reset(var_token)
    assert (first, second) == ("caller", "caller")  # call 1's set did not reach call 2


def test_pool_executor_on_another_pool_submits_the_call_as_is() -> None:
    submitted: list[tuple[Any, tuple[Any, ...]]] = []

    class Recording(concurrent.futures.Executor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
            submitted.append((fn, args))
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_result(fn(*args))
            return future

    def invoke(item: int) -> int:
        return item + 1

    future = PoolExecutor(Recording()).bind(invoke)(1)
    assert future.result() == 2
    assert submitted == [(invoke, (1,))]


# -- start_task ---------------------------------------------------------------------------


def start(c: Any, context: contextvars.Context | None = None) -> asyncio.Task[Any]:
    loop = asyncio.get_running_loop()
    return start_task(coro=c, loop=loop, context=context or contextvars.copy_context())


async def test_start_task_returns_a_real_task() -> None:
    task = start(coro())
    assert isinstance(task, asyncio.Task)
    assert await task == 1


async def test_inside_the_call_the_current_task_is_its_task() -> None:
    seen: list[asyncio.Task[Any] | None] = []

    async def call() -> None:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())

    task = start(call())
    await task
    assert seen == [task, task]


@pytest.mark.skipif(not EAGER, reason="eager start needs Python 3.12+")
async def test_a_call_that_never_suspends_is_done_on_return() -> None:
    seen: list[asyncio.Task[Any] | None] = []

    async def call() -> int:
        seen.append(asyncio.current_task())
        return 5

    task = start(call())
    assert task.done()
    assert task.result() == 5
    assert seen == [task]


@pytest.mark.skipif(not EAGER, reason="eager start needs Python 3.12+")
async def test_first_step_runs_at_once_on_eager_pythons() -> None:
    steps: list[str] = []

    async def call() -> None:
        steps.append("first")
        await asyncio.sleep(0)
        steps.append("second")

    task = start(call())
    assert steps == ["first"] and not task.done()
    await task
    assert steps == ["first", "second"]


@pytest.mark.skipif(EAGER, reason="Python 3.11 starts tasks on the next loop step")
async def test_task_starts_on_the_next_step_on_311() -> None:
    steps: list[str] = []

    async def call() -> None:
        steps.append("first")

    task = start(call())
    assert steps == [] and not task.done()
    await task
    assert steps == ["first"]


async def test_start_task_runs_in_the_given_context() -> None:
    context = contextvars.copy_context()
    context.run(var.set, "given")

    async def call() -> str:
        seen = var.get()
        var.set("changed by the call")
        await asyncio.sleep(0)
        return seen

    assert await start(call(), context) == "given"
    assert context[var] == "changed by the call"  # it ran in that very context
    assert var.get() == "unset"


# -- a call that cancels its own task (issue 17, item 7.1) -------------------------------


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
@pytest.mark.parametrize("suspends", [False, True])
async def test_a_call_that_cancels_its_task_and_returns_is_reported(
    mode: str, suspends: bool
) -> None:
    """``current_task().cancel(); return -1``: in asyncio that task ends cancelled, so -1
    is not a result; the run fails as for any call cancelled from inside, naming the item
    (it used to deliver -1)."""
    from conveyor import single_task

    delivered: list[int] = []

    @single_task
    async def selfish(x: int) -> int:
        if suspends:
            await asyncio.sleep(0)
        if x == 3:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            return -1
        return x

    stream = selfish.with_execution_mode(mode)(range(6))
    with pytest.raises(RuntimeError, match="cancelled from outside") as info:
        async for value in stream:
            delivered.append(value)
    assert info.value.__notes__ == ["conveyor: raised by task 'selfish' on 3"]
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    assert -1 not in delivered


async def test_a_retried_call_that_cancels_its_task_and_returns_is_reported() -> None:
    from conveyor import single_task

    attempts: list[int] = []

    @single_task(retry_attempts=2, retry_delay=0)
    async def flaky(x: int) -> int:
        attempts.append(x)
        if attempts.count(x) == 1 and x == 2:
            raise ValueError("first attempt")
        if x == 2:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            return -1
        return x

    with pytest.raises(RuntimeError, match="cancelled from outside") as info:
        await flaky(range(4)).collect()
    assert info.value.__notes__ == ["conveyor: raised by task 'flaky' on 2"]


async def test_a_call_that_uses_a_timeout_inside_is_not_taken_for_cancelled() -> None:
    """``asyncio.timeout`` inside a call cancels and uncancels its task: a normal result."""
    from conveyor import single_task

    @single_task
    async def patient(x: int) -> int:
        try:
            async with asyncio.timeout(0.001):
                await asyncio.sleep(1)
        except TimeoutError:
            return x
        return -1

    assert await patient(range(5)).collect() == [0, 1, 2, 3, 4]
