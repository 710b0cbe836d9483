"""The runtime of one task within one run (batch tasks: see ``_batch``).

A stage receives items through ``push(item, node)`` and sends results downstream with
``downstream.push(result, node)``.

``node`` is the item's place in its segment's reorder list (see ``_order``) in an ordered
run. It is ``None`` in an as-completed run, and also, in an ordered run, for an item that
has not needed a place yet: such an item belongs at the tail of the list, because nothing
can be appended behind it while it is passed on synchronously. A stage gives it a node
(``self.place``) only when it has to wait: a call that suspends, a queue, a generator. An
item that goes through without waiting never costs a node.

Calls are made through ``self.invoke(item)``: the one seam where an executor (threads,
processes, a cluster) can take over a call. An ``async`` task's call is started eagerly
(see ``_eager``); a plain function is called inline, so a sync task that never blocks
costs a function call, not an asyncio task. Adjacent plain-function single stages are
*fused* (unless the later one has a concurrency limit): a plain call's result goes
straight into the next plain call, in the same copy of the run's context, as if the
functions were composed by hand.

Results: ``None`` drops the item, a ``list`` becomes several items, a generator or async
generator becomes several items lazily (paced by the run's window), anything else is one
item. A :class:`~conveyor.errors.Failure` passes through later stages untouched.

Counting: ``running`` counts a stage's calls that went on asynchronously (the concurrency
limit) and ``inflight`` the items it holds across an ``await`` (queued, in such calls,
expanding, accumulated in a batch). A call that completes inline is not counted: it is
always made while its caller still counts something, or before the input is exhausted,
so the run can never be judged finished underneath it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from types import AsyncGeneratorType, CoroutineType, GeneratorType, NoneType
from typing import TYPE_CHECKING, Any

from ..errors import ErrorAction, Failure, short_repr
from ._eager import UNSTARTED, Call, TaskProxy, current_tasks, resume
from ._order import CLOSED, EMPTY, Node, OrderList, Sentinel

if TYPE_CHECKING:
    import contextvars

    from ..tasks import BaseTask
    from ._run import Run

UNLIMITED = 1 << 62

# After this many of its calls have suspended, an async stage starts calls lazily.
LAZY_AFTER = 16

# Results a fused call chain does not hand straight to the next plain function.
_NOT_PLAIN = frozenset({NoneType, list, GeneratorType, AsyncGeneratorType, CoroutineType, Failure})


class Sink:
    """Anything a stage can send results to."""

    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        raise NotImplementedError


class SegmentEnd(Sink):
    """End of a segment of an ordered run: a result settles its place in the list.

    A result without a node belongs at the tail: if the list is empty it is next in
    order and goes straight to ``ready`` (the reader's own input), else it gets a node.
    """

    __slots__ = ("list", "ready")

    def __init__(self, order: OrderList, ready: Callable[[Any], None]) -> None:
        self.list = order
        self.ready = ready

    def push(self, item: Any, node: Any) -> None:
        if node is not None:
            self.list.resolve(node, item)
        elif self.list.head.next is None:
            self.ready(item)
        else:
            self.list.append().value = item


def annotate(exc: BaseException, task_name: str, item: Any, batch: bool) -> BaseException:
    what = f"a batch of {len(item)} items {short_repr(item)}" if batch else short_repr(item)
    exc.add_note(f"conveyor: raised by task {task_name!r} on {what}")
    return exc


class Stage(Sink):
    """What single and batch stages share: calling, results, errors, bookkeeping."""

    __slots__ = (
        "_draining",
        "action",
        "call",
        "chain",
        "context",
        "downstream",
        "handler",
        "inflight",
        "invoke",
        "is_batch",
        "limit",
        "list",
        "loop",
        "name",
        "pending",
        "plain",
        "proxy",
        "retry",
        "run",
        "running",
        "suspensions",
        "task",
        "timeout",
    )

    def __init__(self, run: Run, task: BaseTask[Any, Any], limit: int) -> None:
        self.run = run
        self.task = task
        self.loop = run.loop
        self.context = run.context
        self.name = task.task_name
        self.retry = task.retry_config
        self.action = ErrorAction(task.on_error)
        self.handler = task.error_handler
        self.timeout = task.timeout
        self.limit = limit
        self.invoke: Callable[[Any], Any] = task.func  # replaced once side inputs resolve
        # A plain function (generator functions too) is called inline; an async one is
        # started eagerly. A callable that is not what it looks like still works: both
        # paths handle whatever the call returns.
        self.plain = not inspect.iscoroutinefunction(task.func)
        self.call: Callable[[Any, Any], None] = self._call if self.plain else self._call_async
        self.chain: SingleStage | None = None  # the plain, unlimited stage fused after this
        self.downstream: Sink = Sink()
        self.list: OrderList | None = None  # the reorder list this stage emits into
        self.running = 0
        self.inflight = 0
        self.suspensions = 0
        self.pending: deque[tuple[Any, Any]] = deque()
        self.proxy = TaskProxy(self.loop)
        self._draining = False
        self.is_batch = False

    def place(self, node: Node | None) -> Node | None:
        """The item's node, created at the list's tail if it has none yet (see above)."""
        if node is None and self.list is not None:
            return self.list.append()
        return node

    # -- calling ---------------------------------------------------------------------

    def _call(self, item: Any, node: Any) -> None:
        """Call a plain function, and the fused plain functions after it, inline."""
        # Every call runs in its own copy of the run's context, as a task would: what a
        # call sets in a ContextVar stays with that call (and the calls fused after it).
        context = self.context.copy()
        stage = self
        while True:
            try:
                result = context.run(stage.invoke, item)
            except Exception as exc:
                stage._failed(exc, item, node)
                return
            kind = type(result)
            following = stage.chain
            if following is None or kind in _NOT_PLAIN:
                break
            stage, item = following, result
        if kind in _NOT_PLAIN:
            stage._plain_result(result, context, item, node)
            return
        stage.downstream.push(result, node)
        if stage.is_batch:
            stage._call_done(item)

    def _plain_result(
        self, result: Any, context: contextvars.Context, item: Any, node: Any
    ) -> None:
        if type(result) is CoroutineType:  # a plain function that returned a coroutine
            self._call_async(item, node, result, context)
            return
        self._emit(result, node)
        if self.is_batch:
            self._call_done(item)

    def _call_async(
        self,
        item: Any,
        node: Any,
        coro: Coroutine[Any, Any, Any] | None = None,
        context: contextvars.Context | None = None,
    ) -> None:
        """Call an ``async`` function and run it up to its first suspension, inline.

        During that step the current task is the stage's proxy (see ``_eager``). Given a
        ``coro`` (one a plain function returned), that is the call to start.
        """
        loop = self.loop
        if context is None:
            context = self.context.copy()
        previous = current_tasks.get(loop)
        current_tasks[loop] = self.proxy
        try:
            if coro is None:
                coro = self.invoke(item)
                if type(coro) is not CoroutineType:  # marked as a coroutine function...
                    _restore_current(loop, previous)
                    self._plain_result(coro, context, item, node)
                    return
            yielded = context.run(coro.send, None)
        except StopIteration as stop:
            if previous is None:  # _restore_current, inlined on the hot path
                del current_tasks[loop]
            else:
                current_tasks[loop] = previous
            result = stop.value
            if type(result) in _NOT_PLAIN:
                self._emit(result, node)
            else:
                self.downstream.push(result, node)
            if self.is_batch:
                self._call_done(item)
            return
        except Exception as exc:
            _restore_current(loop, previous)
            self._failed(exc, item, node)
            return
        except asyncio.CancelledError as exc:
            _restore_current(loop, previous)
            self.run.fail(self._annotate(exc, item))  # the run itself is not cancelled
            return
        except BaseException:
            _restore_current(loop, previous)
            raise
        self._suspended(coro, yielded, context, item, node, previous)

    def _suspended(
        self,
        coro: Coroutine[Any, Any, Any],
        yielded: Any,
        context: contextvars.Context,
        item: Any,
        node: Any,
        previous: Any,
    ) -> None:
        """A call suspended (with the proxy still current): a task carries it on."""
        loop = self.loop
        proxy = self.proxy
        self._went_async()
        try:
            if self.timeout is not None:
                # Enter the timeout now, while the proxy is current: it is the task the
                # timeout will cancel (the proxy forwards that to the real one).
                coro = self._timed(coro, yielded)
                yielded = context.run(coro.send, None)
        finally:
            _restore_current(loop, previous)
        self.proxy = TaskProxy(loop)
        proxy.bind(self._carry_on((self, coro, yielded, context, item, self.place(node))))
        self.suspensions += 1
        if self.suspensions >= LAZY_AFTER and not self.plain:
            self.call = self._call_lazily

    def _call_lazily(self, item: Any, node: Any) -> None:
        """Start a call in a task of its own (or a handed-over one), not inline.

        A stage switches to this after ``LAZY_AFTER`` calls have suspended, so calls that
        wait for I/O anyway skip the inline first step and the proxy. It switches back as
        soon as a call turns out to complete on its first step (see ``_returned``).
        """
        try:
            coro = self.invoke(item)
        except Exception as exc:
            self._failed(exc, item, node)
            return
        context = self.context.copy()
        if type(coro) is not CoroutineType:
            self._plain_result(coro, context, item, node)
            return
        self._went_async()
        if self.timeout is not None:
            coro = self._timed(coro, UNSTARTED)
        self._carry_on((self, coro, UNSTARTED, context, item, self.place(node)))

    def _carry_on(self, call: Call) -> asyncio.Task[Any]:
        """The task that runs ``call``: a finishing one that takes it over, or a new one."""
        run = self.run
        task = None if run.closed else run.handoff.offer(call)
        if task is None:
            task = run.spawn_driver(call)
        return task

    async def _timed(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
        async with asyncio.timeout(self.timeout):
            if yielded is UNSTARTED:
                return await coro
            return await resume(coro, yielded)

    def _went_async(self) -> None:
        """A call goes on past the synchronous hand-on: count it until ``_finished``."""
        self.running += 1
        if not self.is_batch:  # a batch's items are counted from the moment they arrive
            self.inflight += 1

    # Driver callbacks (see _eager.Owner).

    def _returned(self, result: Any, item: Any, node: Any, at_once: bool) -> None:
        if at_once:  # started lazily, but did not wait after all: start calls eagerly
            self.suspensions = 0
            self.call = self._call_async
        handoff = self.run.handoff
        handoff.driver = current_tasks.get(self.loop)
        try:
            self._finished(result, item, node)
        finally:
            handoff.driver = None

    def _raised(self, exc: Exception, item: Any, node: Any) -> Coroutine[Any, Any, Any]:
        return self._recover(exc, item, node, 1)

    def _annotate(self, exc: BaseException, item: Any) -> BaseException:
        return annotate(exc, self.name, item, self.is_batch)

    async def _attempt(self, item: Any) -> Any:
        """One complete call, inside a task (retries)."""
        result = self.invoke(item)
        if type(result) is not CoroutineType:  # the same rule as _plain_result
            return result
        if self.timeout is None:
            return await result
        async with asyncio.timeout(self.timeout):
            return await result

    def _finished(self, result: Any, item: Any, node: Any) -> None:
        self.running -= 1
        if not self.run.closed:  # else a call that ignored its cancellation: start nothing
            self._emit(result, node)
        self._call_done(item)

    def _call_done(self, item: Any) -> None:
        """Bookkeeping once a call's result is out: start queued work, report idleness."""
        self.inflight -= 1
        if self.pending and not self._draining:
            self._start_pending()
        if not self.inflight and self.run.source_done:
            self.run.stage_idle()

    def _start_pending(self) -> None:
        self._draining = True
        try:
            while self.pending and self.running < self.limit and not self.run.closed:
                item, node = self.pending.popleft()
                self.call(item, node)
                if not self.is_batch:
                    self.inflight -= 1  # only now: it stays counted during its call
        finally:
            self._draining = False

    # -- results ---------------------------------------------------------------------

    def _emit(self, result: Any, node: Any) -> None:
        """Send a call's result downstream; ``node`` carries one window token."""
        if result is None:
            self._drop(node)
            return
        kind = type(result)
        if kind is list:
            self._emit_list(result, node)
        elif kind is GeneratorType or kind is AsyncGeneratorType:
            self._expand_lazily(result, node)
        else:
            self.downstream.push(result, node)

    def _drop(self, node: Any) -> None:
        if node is None:
            self.run.release(1)
        else:
            self.list.resolve(node, EMPTY)  # type: ignore[union-attr]

    def _emit_list(self, results: list[Any], node: Any) -> None:
        n = len(results)
        if n == 0:
            self._drop(node)
            return
        self.run.tokens += n - 1
        push = self.downstream.push
        if node is None:
            run = self.run
            for value in results:
                # Once one of them fails the run, the rest must not reach the consumer:
                # with no node, nothing else would hold them back.
                if run.closed:
                    return
                push(value, None)
            return
        order = self.list
        assert order is not None
        nodes = [node]
        for _ in range(n - 1):
            node = order.insert_after(node)
            nodes.append(node)
        for value, node in zip(results, nodes, strict=True):
            push(value, node)

    def _expand_lazily(self, gen: Any, node: Any) -> None:
        # The expansion keeps the stage busy, and keeps its item's window token, until the
        # generator ends: so the window also bounds how many expansions are under way.
        self.inflight += 1
        self.run.expanding += 1
        sentinel: Sentinel | None = None
        if self.list is not None:
            sentinel = self.list.open_sentinel(self.place(node))  # type: ignore[arg-type]
        self.run.spawn(self._expand(gen, sentinel), self.context.copy())

    async def _expand(
        self, gen: Generator[Any, Any, Any] | AsyncGenerator[Any, Any], sentinel: Sentinel | None
    ) -> None:
        run = self.run
        order = self.list
        push = self.downstream.push
        is_async = type(gen) is AsyncGeneratorType
        count = 0
        try:
            while not run.closed:
                if run.tokens - run.expanding >= run.limit:
                    await run.wait_for_room(sentinel, expansion=True)
                try:
                    if is_async:
                        child = await gen.__anext__()  # type: ignore[union-attr]
                    else:
                        child = next(gen)  # type: ignore[arg-type]
                except (StopIteration, StopAsyncIteration):
                    break
                count += 1
                if child is None:
                    continue
                run.tokens += 1
                if sentinel is None:
                    push(child, None)
                else:
                    assert order is not None and sentinel.prev is not None
                    push(child, order.insert_after(sentinel.prev))
        except Exception as exc:
            # Items already produced stay; the generator cannot be resumed or retried.
            try:
                result = await self._generator_failed(exc, count)
            except asyncio.CancelledError:
                raise
            except BaseException as final:
                run.fail(final)
                return
            if result is not None:
                run.tokens += 1
                node = None
                if sentinel is not None:
                    assert order is not None and sentinel.prev is not None
                    node = order.insert_after(sentinel.prev)
                self.downstream.push(result, node)
        finally:
            if is_async:
                await gen.aclose()  # type: ignore[union-attr]
            else:
                gen.close()  # type: ignore[union-attr]
        if sentinel is not None:
            assert order is not None
            order.resolve(sentinel, CLOSED)
        run.expanding -= 1
        run.release(1)
        self.inflight -= 1
        if not self.inflight:
            run.stage_idle()

    # -- errors ----------------------------------------------------------------------

    async def _generator_failed(self, exc: Exception, count: int) -> Any:
        """What stands in for the rest of a generator that raised after ``count`` items."""
        where = f"<output {count} of a generator>"
        if self.handler is not None:
            go_on, value = await self.handler.handle_error(exc, where, self.name, 1)
            if go_on:
                return value
        if self.action is ErrorAction.FAIL:
            raise annotate(exc, self.name, where, False)
        if self.action is ErrorAction.EMIT:
            return Failure(where, exc, self.name, 1)
        return None

    def _failed(self, exc: Exception, item: Any, node: Any) -> None:
        """The first attempt failed synchronously."""
        retry = self.retry
        if (
            self.handler is not None
            or (retry.max_attempts > 1 and isinstance(exc, retry.retry_on))
            or (self.is_batch and self.action is ErrorAction.SKIP_ITEM and len(item) > 1)
        ):
            self._went_async()
            self.run.spawn(self._recover(exc, item, self.place(node), 1), self.context.copy())
            return
        try:
            result = self._final_action(exc, item, 1)
        except BaseException as final:
            self.run.fail(final)
            return
        self._emit(result, node)
        if self.is_batch:
            self._call_done(item)

    async def _recover(self, exc: Exception, item: Any, node: Any, attempt: int) -> None:
        """Retries, then the error handler, then ``on_error``; in a task."""
        retry = self.retry
        try:
            while attempt < retry.max_attempts and isinstance(exc, retry.retry_on):
                await asyncio.sleep(retry.delay_after(attempt))
                attempt += 1
                try:
                    result = await self._attempt(item)
                except Exception as again:
                    exc = again
                else:
                    self._finished(result, item, node)
                    return
            result = await self._give_up(exc, item, attempt)
        except asyncio.CancelledError:
            raise
        except BaseException as final:
            self.running -= 1
            self.run.fail(final)
            return
        self._finished(result, item, node)

    async def _give_up(self, exc: Exception, item: Any, attempt: int) -> Any:
        """The result that stands in for a call that failed for good (or raise)."""
        if self.handler is not None:
            seen = list(item) if self.is_batch else item  # the handler may keep it
            go_on, value = await self.handler.handle_error(exc, seen, self.name, attempt)
            if go_on:
                return value
        return await self._fallback(exc, item, attempt)

    async def _fallback(self, exc: Exception, item: Any, attempt: int) -> Any:
        """``on_error`` for a call the handler (if any) did not rescue."""
        return self._final_action(exc, item, attempt)

    def _final_action(self, exc: Exception, item: Any, attempt: int) -> Any:
        action = self.action
        if action is ErrorAction.FAIL:
            raise annotate(exc, self.name, item, self.is_batch)
        if action is ErrorAction.EMIT:
            if self.is_batch:
                return [Failure(one, exc, self.name, attempt) for one in item]
            return Failure(item, exc, self.name, attempt)
        return None  # skip_item / skip_batch


class SingleStage(Stage):
    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        if type(item) is Failure:
            self.downstream.push(item, node)
            return
        if self.running < self.limit:
            self.call(item, node)
        else:
            self.inflight += 1
            self.pending.append((item, self.place(node)))


def _restore_current(loop: asyncio.AbstractEventLoop, previous: Any) -> None:
    """Put back the current task a call's first step displaced (``None``: there was none)."""
    if previous is None:
        del current_tasks[loop]
    else:
        current_tasks[loop] = previous
