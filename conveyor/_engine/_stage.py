"""The runtime of one task within one run (batch tasks add to it: see ``_batch``).

A stage receives items through ``push(item, node)`` (see ``_order.Sink`` for ``node``)
and sends results on with ``downstream.push(result, node)``. An item gets a node
(``place``) only when it has to wait: a call that suspends, a queue, a generator.

**Calls.** :meth:`Stage.call` is the one place a stage's call is made: ``self.call_fn``,
the executor's per-item callable (see ``_calls``), runs in a fresh copy of the run's
context. A plain result is handed on at once; an awaitable (the coroutine of an
``async def``, a Future) runs in a real asyncio task of its own (:meth:`Stage.drive`),
which applies the timeout and the error policy and hands the result on when it is done.
Adjacent plain-function single stages on the inline executor are *fused* (unless the
later one has a concurrency limit): a result goes straight into the next function, in the
same context copy, as if the functions were composed by hand.

**Results.** ``None`` drops the item, a ``list`` becomes several items, a generator or
async generator becomes several items lazily (``_expand``), anything else is one item. A
:class:`~conveyor.errors.Failure` passes through later stages untouched.

**Counting.** ``running`` counts calls under way in tasks (the concurrency limit) and
``inflight`` the items a stage holds across an ``await`` (queued, in such calls,
expanding, accumulated in a batch): the run is over when no stage holds anything.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from .._spec import StageSpec
from ..errors import Failure
from ._calls import (
    AWAIT,
    EXPAND,
    INLINE,
    KINDS_GET,
    LIST,
    NONE,
    VALUE,
    Executor,
    as_awaitable,
    discard,
    kind_of,
    settle,
    start_task,
)
from ._expand import expand
from ._order import EMPTY, Node, OrderList, Sink
from ._policy import Policy

if TYPE_CHECKING:
    import contextvars

    from ._run import Run

UNLIMITED = 1 << 62


class Stage(Sink):
    """What single and batch stages share: calling, results, errors, bookkeeping."""

    __slots__ = (
        "call_fn",
        "chain",
        "context",
        "downstream",
        "draining",
        "executor",
        "inflight",
        "invoke",
        "is_batch",
        "limit",
        "list",
        "loop",
        "name",
        "pending",
        "plain",
        "policy",
        "probe",
        "run",
        "running",
        "spec",
        "start",
        "timeout",
        "window",
    )

    def __init__(self, run: Run, spec: StageSpec, limit: int, executor: Executor) -> None:
        self.run = run
        self.window = run.window
        self.spec = spec
        self.loop = run.loop
        self.context = run.context
        self.name = spec.name
        self.timeout = spec.options.timeout
        self.limit = limit
        self.executor = executor
        self.invoke: Callable[[Any], Any] = spec.func  # bound to side inputs per run
        self.call_fn: Callable[[Any], Any] = spec.func  # the executor's call of invoke
        self.policy = Policy(spec, self.attempt)
        # A plain function on the loop may be fused with the next one (see above).
        self.plain = executor is INLINE and not spec.is_async
        # How an item's call starts: an async def on the loop skips the generic result
        # handling (its call always returns a coroutine).
        self.start: Callable[[Any, Any], None] = (
            self.call_coroutine if executor is INLINE and spec.is_async else self.call
        )
        self.chain: Stage | None = None
        self.downstream: Sink = Sink()
        self.list: OrderList | None = None  # the reorder list this stage emits into
        self.running = 0
        self.inflight = 0
        self.pending: deque[tuple[Any, Any]] = deque()
        self.draining = False
        self.is_batch = spec.batch
        self.probe: Any = None  # the stage's observer, if the run is observed (_observe)

    def bind(self, invoke: Callable[[Any], Any]) -> None:
        """Use ``invoke`` (the function with this run's side inputs) from now on."""
        self.invoke = invoke
        self.call_fn = self.executor.bind(invoke)

    def place(self, node: Node | None) -> Node | None:
        """The item's node, created at the list's tail if it has none yet (see above)."""
        if node is None and self.list is not None:
            return self.list.append()
        return node

    # -- calling ---------------------------------------------------------------------

    def call(self, item: Any, node: Any) -> None:
        """Make this stage's call on ``item`` (and the fused plain calls after it)."""
        # Every call runs in its own copy of the run's context, as a task would: what a
        # call sets in a ContextVar stays with that call (and the calls fused after it).
        context = self.context.copy()
        stage = self
        while True:
            try:
                result = context.run(stage.call_fn, item)
            except Exception as exc:
                stage.failed(exc, item, node, context)
                return
            except BaseException as exc:
                stage.crashed(exc, item)
                return
            kind = KINDS_GET(type(result))
            if kind is None:
                kind = kind_of(type(result))
            following = stage.chain
            if kind or following is None:
                break
            stage, item = following, result
        if kind == AWAIT:
            if type(result) is not CoroutineType:
                result = as_awaitable(result)
            stage.go_async(result, context, item, node)
            return
        if kind:
            stage.emit_kind(kind, result, node)
        else:
            stage.downstream.push(result, node)
        if stage.is_batch:
            stage.call_done(item)

    def call_coroutine(self, item: Any, node: Any) -> None:
        """:meth:`call` for an ``async def`` on the loop (its call returns a coroutine)."""
        try:
            coro = self.call_fn(item)  # (creating a coroutine runs none of its code)
        except Exception as exc:
            self.failed(exc, item, node, self.context.copy())
            return
        except BaseException as exc:
            self.crashed(exc, item)
            return
        if type(coro) is CoroutineType:
            self.go_async(coro, self.context.copy(), item, node)
        else:  # not what it looked like: the generic rules
            self.emit_result(coro, item, node)

    def emit_result(self, result: Any, item: Any, node: Any) -> None:
        kind = kind_of(type(result))
        if kind == AWAIT:
            self.go_async(as_awaitable(result), self.context.copy(), item, node)
        else:
            self.emit(result, node)
            if self.is_batch:
                self.call_done(item)

    def go_async(self, awaitable: Any, context: contextvars.Context, item: Any, node: Any) -> None:
        """Await a call's result in a real task of its own, counted until it is done."""
        run = self.run
        if run.closed:  # a call made while the run unwinds: start nothing
            discard(awaitable)
            return
        self.running += 1
        if not self.is_batch:  # a batch's items are counted from the moment they arrive
            self.inflight += 1
        self.window.busy += 1
        place = [node, False]  # the item's node, and whether the run lists the task
        task = start_task(self.drive(awaitable, item, place), loop=self.loop, context=context)
        if not task.done():
            # It suspended (or, on 3.11, has not started): nothing was appended behind it
            # yet, so its place in the order is the tail, now. An item whose call never
            # suspends costs no node.
            if node is None and self.list is not None:
                place[0] = self.list.append()
            place[1] = True
            run.tasks[task] = awaitable

    def crashed(self, exc: BaseException, item: Any) -> None:
        """A call raised a BaseException (not KeyboardInterrupt/SystemExit): fail the run
        with it (a CancelledError is reported as a call cancelled from outside)."""
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        self.run.fail(self.policy.annotate(exc, item))

    def failed(self, exc: Exception, item: Any, node: Any, context: contextvars.Context) -> None:
        """The call raised before returning: settle it now, or recover in a task."""
        policy = self.policy
        if not policy.settles_at_once(exc, item):
            self.go_async(_Recovery(exc), context, item, node)
            return
        try:
            result = policy.final(exc, item, 1)
        except BaseException as final:
            self.run.fail(final)
            return
        self.emit(result, node)
        if self.is_batch:
            self.call_done(item)

    async def drive(self, awaitable: Any, item: Any, place: list[Any]) -> None:
        """The coroutine of a call's task: await the call, recover, hand the result on.

        ``place`` is ``[node, listed]``: the item's node when the result is handed on,
        and whether the task is in the run's list (see ``go_async``).
        """
        run = self.run
        try:
            try:
                if type(awaitable) is _Recovery:
                    result = await self.policy.recover(awaitable.error, item)
                else:
                    try:
                        if self.timeout is None:
                            result = await awaitable
                            kind = KINDS_GET(type(result))
                            if kind != VALUE:
                                result, kind = await settle(result, kind)
                        else:
                            async with asyncio.timeout(self.timeout):
                                result, kind = await settle(await awaitable, None)
                    except Exception as exc:
                        result = await self.policy.recover(exc, item)
            except asyncio.CancelledError as exc:
                if not run.closed:  # not the run's own cancellation: the call's
                    run.fail(self.policy.annotate(exc, item))
                raise
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                if getattr(exc, "__notes__", None):  # the policy's own: annotated
                    run.fail(exc)
                else:
                    self.crashed(exc, item)
                return
            # finished(), inlined: this runs once per async call
            self.running -= 1
            if not run.closed:  # else a call that ignored its cancellation: start nothing
                if KINDS_GET(type(result)) == VALUE:
                    self.downstream.push(result, place[0])
                else:
                    self.emit(result, place[0])
            self.call_done(item)
        finally:
            window = self.window
            window.busy -= 1
            if place[1]:
                del run.tasks[asyncio.current_task()]  # type: ignore[arg-type]
            if not window.busy:
                window.check_stall()

    async def attempt(self, item: Any) -> Any:
        """One complete call again, inside the call's task (retries, batch isolation)."""
        result = self.call_fn(item)
        if self.timeout is None:
            return (await settle(result, None))[0]
        async with asyncio.timeout(self.timeout):
            return (await settle(result, None))[0]

    def call_done(self, item: Any) -> None:
        """Bookkeeping once a call's result is out: start queued work, report idleness."""
        self.inflight -= 1
        if self.pending and not self.draining:
            self.start_pending()
        if not self.inflight and self.run.source_done:
            self.run.stage_idle()

    def start_pending(self) -> None:
        self.draining = True
        try:
            while self.pending and self.running < self.limit and not self.run.closed:
                item, node = self.pending.popleft()
                self.start(item, node)
                if not self.is_batch:
                    self.inflight -= 1  # only now: it stays counted during its call
        finally:
            self.draining = False

    # -- results ---------------------------------------------------------------------

    def emit(self, result: Any, node: Any) -> None:
        """Send a call's result downstream; ``node`` carries one window token."""
        kind = KINDS_GET(type(result))
        if kind is None:
            kind = kind_of(type(result))
        if kind and kind != AWAIT:
            self.emit_kind(kind, result, node)
        else:
            self.downstream.push(result, node)

    def emit_kind(self, kind: int, result: Any, node: Any) -> None:
        if kind == NONE:
            self.drop(node)
        elif kind == LIST:
            self.emit_list(result, node)
        elif kind == EXPAND:
            expand(self, result, node)
        else:
            self.downstream.push(result, node)

    def drop(self, node: Any) -> None:
        if node is None:
            self.window.release(1)
        else:
            self.list.resolve(node, EMPTY)  # type: ignore[union-attr]

    def emit_list(self, results: list[Any], node: Any) -> None:
        n = len(results)
        if n == 0:
            self.drop(node)
            return
        self.window.take(n - 1)
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


class SingleStage(Stage):
    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        if type(item) is Failure:
            self.downstream.push(item, node)
            return
        if self.running < self.limit:
            self.start(item, node)
        else:
            self.inflight += 1
            self.pending.append((item, self.place(node)))


class _Recovery:
    """Stands for a call whose first attempt raised synchronously: its task recovers."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error
