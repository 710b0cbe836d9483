"""The runtime of one task within one run (batch tasks add to it: see ``_batch``).

A stage receives items through ``push(item, node, origin)`` (see ``_order.Sink``) and
sends results on with ``downstream.push(result, node, origin)``. An item gets a node
(``place``) only when it has to wait: a call that suspends, a queue, a generator. Its
``origin`` (a checkpoint's, see ``_origin``; else None) goes to its results, and into its
call's context (:meth:`Stage.call_context`).

**Calls.** :meth:`Stage.call` is the one place a stage's call is made: ``self.call_fn``,
the executor's per-item callable (see ``_calls``), runs in a fresh copy of the run's
context. A plain result is handed on at once. An awaitable waits (``_waiting``): the
coroutine of an ``async def`` in a real asyncio task of its own, a Future from a thread,
process or cluster by a callback; either way the timeout and the error policy apply and
the result is handed on when it is done.
Adjacent plain-function single stages on the inline executor are *fused* (unless the
later one has a concurrency limit): a result goes straight into the next function, in the
same context copy, as if the functions were composed by hand.

**Results.** ``None`` drops the item, a ``list`` becomes several items, a generator or
async generator becomes several items lazily (``_expand``), anything else is one item. A
:class:`~conveyor.errors.Failure` passes through later stages untouched.

**Counting.** ``running`` counts calls that wait (the concurrency limit) and
``inflight`` the items a stage holds across an ``await`` (queued, in such calls,
expanding, accumulated in a batch); ``account`` where its items went. The ledger
(``_ledger``) writes them all, through its named transitions.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from ..errors import Failure
from ._adaptive import Adaptive
from ._breaker import StageBreaker
from ._cache import StageCache
from ._calls import (
    AWAIT,
    EXPAND,
    KINDS_GET,
    LIST,
    NONE,
    Executor,
    as_awaitable,
    kind_of,
    settle,
)
from ._expand import expand
from ._gate import Gate
from ._ledger import Account
from ._order import EMPTY, Node, OrderList, Sink
from ._origin import ORIGIN
from ._plan import StagePlan
from ._policy import Policy
from ._roles import Statistics, Tracing
from ._waiting import Completions, Recovery, await_future, go_async

if TYPE_CHECKING:
    import contextvars

    from ._observe import StageObserver
    from ._roles import RunRole, Turns


class Stage(Sink):
    """What single and batch stages share: calling, results, errors, bookkeeping."""

    __slots__ = (
        "account",
        "adaptive",
        "breaker",
        "cache",
        "call_fn",
        "chain",
        "context",
        "downstream",
        "draining",
        "executor",
        "executor_call",
        "futures",
        "gate",
        "inflight",
        "invoke",
        "is_batch",
        "ledger",
        "limit",
        "list",
        "loop",
        "name",
        "observer",
        "pending",
        "policy",
        "record",
        "run",
        "running",
        "spec",
        "start",
        "tally",
        "timeout",
        "traced",
    )

    def __init__(
        self,
        run: RunRole,
        plan: StagePlan,
        executor: Executor,
        stats: Statistics | None = None,
        observer: StageObserver | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        spec = plan.spec
        self.run = run
        self.ledger = run.ledger
        self.spec = spec
        self.loop = run.loop
        self.context = run.context
        self.name = spec.name
        self.timeout = spec.options.timeout
        self.limit = plan.limit  # (an adaptive limit's start: its ``Adaptive`` writes it)
        self.adaptive = None if plan.adaptive is None else Adaptive(self, plan.adaptive)
        self.executor = executor
        self.invoke: Callable[[Any], Any] = spec.func  # bound to side inputs per run
        self.executor_call: Callable[[Any], Any] = spec.func  # the executor's call of invoke
        self.call_fn = self.executor_call  # (or, for one sampled call, a timed one)
        self.cache = None if spec.options.cache is None else StageCache(spec.options.cache, self)
        breaker = spec.options.circuit_breaker
        self.breaker = None if breaker is None else StageBreaker(breaker, run, spec)
        self.account = Account()  # where its items went (the ledger writes it)
        self.record = None if stats is None else stats.record(self)  # (see ``_observe``)
        self.tally = None if spec.batch else self.record  # (a batch stage's count as they come)
        self.observer = observer
        retried, outcomes = None if observer is None else observer.retried, run.outcomes
        log = run.log.stage(spec)  # (per_item: a branch's run splits batches per item)
        self.policy = Policy(spec, self.attempt, self.account, log, retried, per_item=run.branch)
        self.policy.on_gave_up = None if outcomes is None else outcomes.on_gave_up(spec.batch)
        self.traced = None if tracing is None else tracing.stage(self)  # (a span per call)
        # How an item's call starts (see ``_plan``): an async def on the loop skips the
        # generic result handling (its call always returns a coroutine); under a rate
        # limit, the gate starts it when its turn comes (keys, priority: ``_lanes``).
        call: Callable[[Any, Any, Any], None] = (
            self.call_coroutine if plan.starts == "coroutine" else self.call
        )
        rate = spec.options.rate_limit
        self.gate: Turns | None = None
        if rate is not None and plan.starts == "turn":
            self.gate = Gate(self, rate.window(run.loop), call)
        self.start = call if self.gate is None else self.gate.start
        self.chain: Stage | None = None  # the next stage, if fused with it (``_plan``)
        self.downstream: Sink = Sink()
        self.list: OrderList | None = None  # the reorder list this stage emits into
        self.running = self.inflight = 0
        self.pending: deque[tuple[Any, Any, Any]] = deque()
        self.draining = False
        self.is_batch = spec.batch
        # Where a call's Future waits without a task (``_futures``; set by the run),
        # unless the task has a timeout: ``asyncio.timeout`` needs a task.
        self.futures: Completions | None = None

    def bind(self, invoke: Callable[[Any], Any]) -> None:
        """Use ``invoke`` (the function with this run's side inputs) from now on."""
        self.invoke = invoke
        call = self.executor.bind(invoke)
        if self.adaptive is not None:  # (each attempt timed: inside the span and cache)
            call = self.adaptive.wrap(call)
        if self.traced is not None:
            call = self.traced(call)
        if self.breaker is not None:  # (outside the span, inside the cache: see _breaker)
            call = self.breaker.wrap(call)
        if self.cache is not None:  # (outside the span: a hit makes no call)
            call = self.cache.wrap(call, self.is_batch)
        self.call_fn = self.executor_call = call

    def time_next_call(self, timed: Callable[[Any], Any]) -> None:
        """Make the next call through ``timed`` (the statistics' sample: ``_stats``),
        which calls :meth:`call_untimed` when it is made."""
        self.call_fn = timed

    def call_untimed(self, timed: Callable[[Any], Any]) -> None:
        """The sampled call is made: the calls after it are made directly again."""
        if self.call_fn is timed:
            self.call_fn = self.executor_call

    def place(self, node: Node | None) -> Node | None:
        """The item's node, created at the list's tail if it has none yet (see above)."""
        if node is None and self.list is not None:
            return self.list.append()
        return node

    # -- calling ---------------------------------------------------------------------

    def call_context(self, origin: Any) -> contextvars.Context:
        """A call's own copy of the run's context (with its item's ``origin``, if any)."""
        context = self.context.copy()
        if origin is not None:
            context.run(ORIGIN.set, origin)
        return context

    def call(self, item: Any, node: Any, origin: Any) -> None:
        """Make this stage's call on ``item`` (and the fused plain calls after it)."""
        # Every call runs in its own copy of the run's context, as a task would: what a
        # call sets in a ContextVar stays with that call (and the calls fused after it).
        context = self.context.copy()
        if origin is not None:  # (a checkpoint's: see ``_origin``)
            context.run(ORIGIN.set, origin)
        stage = self
        while True:
            tally = stage.tally
            if tally is not None:  # (statistics: the one check where they count)
                tally.items_in += 1
            try:
                result = context.run(stage.call_fn, item)
            except Exception as exc:
                stage.failed(exc, item, node, context, origin)
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
            stage.settle_call(kind, result, context, item, node, origin)
            return
        if kind:  # (settle_call's other kinds, in place: a filter's None costs one call)
            stage.emit_kind(kind, result, node, origin)
        else:
            stage.downstream.push(result, node, origin)
        if stage.is_batch:
            stage.call_done(item)

    def settle_call(
        self,
        kind: int,
        result: Any,
        context: contextvars.Context,
        item: Any,
        node: Any,
        origin: Any,
    ) -> None:
        """Hand on what the call on ``item`` (in ``context``) returned, of ``kind``: not
        a plain value (see ``_calls``): awaited, dropped, or several items."""
        if kind == AWAIT:
            if type(result) is not CoroutineType:
                if self.futures is not None:
                    await_future(self, result, context, item, node, origin)
                    return
                result = as_awaitable(result)
            go_async(self, result, context, item, node, origin)
            return
        self.emit_kind(kind, result, node, origin)
        if self.is_batch:
            self.call_done(item)

    def call_coroutine(self, item: Any, node: Any, origin: Any) -> None:
        """:meth:`call` for an ``async def`` on the loop (its call returns a coroutine)."""
        tally = self.tally
        if tally is not None:
            tally.items_in += 1
        try:
            coro = self.call_fn(item)  # (creating a coroutine runs none of its code)
        except Exception as exc:
            self.failed(exc, item, node, self.call_context(origin), origin)
            return
        except BaseException as exc:
            self.crashed(exc, item)
            return
        if type(coro) is CoroutineType:
            context = self.context.copy()
            if origin is not None:
                context.run(ORIGIN.set, origin)
            go_async(self, coro, context, item, node, origin)
        else:  # not what it looked like: the generic rules
            self.emit_result(coro, item, node, origin)

    def emit_result(self, result: Any, item: Any, node: Any, origin: Any) -> None:
        kind = kind_of(type(result))
        if kind == AWAIT:
            go_async(self, as_awaitable(result), self.call_context(origin), item, node, origin)
        else:
            self.emit(result, node, origin)
            if self.is_batch:
                self.call_done(item)

    def crashed(self, exc: BaseException, item: Any) -> None:
        """A call raised a BaseException (not KeyboardInterrupt/SystemExit): fail the run
        with it (a CancelledError is reported as a call cancelled from outside)."""
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        self.run.fail(self.policy.annotate(exc, item))

    def failed(
        self, exc: Exception, item: Any, node: Any, context: contextvars.Context, origin: Any
    ) -> None:
        """The call raised before returning: settle it now, or recover in a task (the
        policy decides in the call's context: a checkpoint reads its origins there)."""
        policy = self.policy
        if not policy.settles_at_once(exc, item):
            go_async(self, Recovery(exc), context, item, node, origin)
            return
        try:
            result = context.run(policy.final, exc, item, 1)
        except BaseException as final:
            self.run.fail(final)
            return
        self.emit(result, node, origin)
        if self.is_batch:
            self.call_done(item)

    async def attempt(self, item: Any) -> Any:
        """One complete call again, inside the call's task (retries, batch isolation)."""
        if self.gate is not None:
            await self.gate.acquire(item)  # (before the timeout: the wait is no call)
        result = self.call_fn(item)
        if self.timeout is None:
            return (await settle(result, None))[0]
        async with asyncio.timeout(self.timeout):
            return (await settle(result, None))[0]

    def call_done(self, item: Any) -> None:
        """A call made at once has its result out: the ledger's ``settled`` (queued work
        starts, is the run over?)."""
        self.ledger.settled(self, item)

    def accumulated(self) -> int:
        """Items waiting in this stage for a batch to fill (none: a single stage)."""
        return 0

    def close_input(self) -> None:
        """No more items will come (a batch stage applies the remainder rule)."""

    def start_pending(self) -> None:
        self.draining = True
        try:
            while self.pending and self.running < self.limit and not self.run.closed:
                item, node, origin = self.pending.popleft()
                self.start(item, node, origin)
                if not self.is_batch:
                    self.ledger.dequeued(self)  # only now: counted during its call
        finally:
            self.draining = False

    # -- results ---------------------------------------------------------------------

    def emit(self, result: Any, node: Any, origin: Any) -> None:
        """Send a call's result downstream; ``node`` carries one window token."""
        kind = KINDS_GET(type(result))
        if kind is None:
            kind = kind_of(type(result))
        if kind and kind != AWAIT:
            self.emit_kind(kind, result, node, origin)
        else:
            self.downstream.push(result, node, origin)

    def emit_kind(self, kind: int, result: Any, node: Any, origin: Any) -> None:
        if kind == NONE:
            self.drop(node, origin)
        elif kind == LIST:
            self.emit_list(result, node, origin)
        elif kind == EXPAND:
            expand(self, result, node, origin)
        else:
            self.downstream.push(result, node, origin)

    def drop(self, node: Any, origin: Any) -> None:
        self.ledger.dropped(self, node is not None, origin)
        if node is not None:  # (its reader gives the token back, and the origin's count)
            node.origin = origin
            self.list.resolve(node, EMPTY)  # type: ignore[union-attr]

    def emit_list(self, results: list[Any], node: Any, origin: Any) -> None:
        n = len(results)
        if n == 0:
            self.drop(node, origin)
            return
        self.ledger.produced(n - 1, origin)
        push = self.downstream.push
        if node is None:
            run = self.run
            for value in results:
                # Once one of them fails the run, the rest must not reach the consumer:
                # with no node, nothing else would hold them back.
                if run.closed:
                    return
                push(value, None, origin)
            return
        order = self.list
        assert order is not None
        nodes = [node]
        for _ in range(n - 1):
            node = order.insert_after(node)
            nodes.append(node)
        for value, node in zip(results, nodes, strict=True):
            push(value, node, origin)


class SingleStage(Stage):
    __slots__ = ()

    def push(self, item: Any, node: Any, origin: Any) -> None:
        if self.observer is not None:
            self.observer.items_in(1)
        if type(item) is Failure:
            if self.record is not None:
                self.record.passed_through()
            self.downstream.push(item, node, origin)
            return
        if self.running < self.limit:
            self.start(item, node, origin)
        else:
            self.ledger.queued(self)
            self.pending.append((item, self.place(node), origin))
