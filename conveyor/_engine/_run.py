"""One run of a pipeline: wiring, ownership of its tasks, the consumer side, the end.

**Wiring.** ``_build`` walks the stages backwards so each knows where its results go:
the consumer's output, a segment end feeding a batch stage, or the next stage (fused
when both are plain functions on the loop).

**Ownership.** Every task the run starts is in ``tasks``: the supervisor (which binds
the stages, opens resources, pumps the input, and closes resources once every call has
ended), calls' tasks (``_stage``), expansions (``_expand``); every Future a call waits on
without a task is in ``completions`` (``_waiting``). ``abort()`` cancels them all;
``shutdown()`` cancels and awaits them. The consumer calls ``shutdown()`` when the run
ends, fails, or is closed, and ``abort()`` when it is cancelled or dropped. A task that
ends with an error, or cancelled while the run is open, fails the run.

**The consumer side.** Results the consumer can take at once wait in ``ready`` (see
``_delivery``); ``next()`` takes one, or waits, or raises the run's error once, or ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .._spec import StageSpec
from ..context import ExecutionMode, PipelineContext, set_current_context
from ._batch import BatchStage
from ._bind import bind_stage, close_resources
from ._calls import discard, run_error
from ._delivery import BatchFeeder, OrderedOutput, Output
from ._executors import executor_for
from ._fused import tight_loop
from ._gate import gate_rate_limits
from ._input import NO_INPUT, close_source, pump
from ._log import end_of_run_logged, executors_logged, logger
from ._observe import RunObserver, instrument
from ._order import CLOSED, EMPTY, OPEN, PENDING, OrderList, Sink
from ._stage import UNLIMITED, SingleStage, Stage
from ._stats import Collector
from ._waiting import Completions
from ._weight import WEIGHER, Weigher
from ._window import Window, sentinel_at_front, window_size

NOTHING: Any = object()
"""What ``Run.take`` returns when no result is ready."""


class Run:
    """The state of one pipeline run, driven by the consumer through ``next()``."""

    __slots__ = (
        "_ended",
        "_final_list",
        "_source",
        "closed",
        "completions",
        "consumer",
        "context",
        "direct_entry",
        "entry",
        "error",
        "finished",
        "loop",
        "on_consumer_wait",
        "on_over",
        "ordered",
        "ready",
        "source_done",
        "stages",
        "stats",
        "tasks",
        "weigher",
        "window",
    )

    def __init__(
        self,
        specs: Sequence[StageSpec],
        source: Any,
        context: PipelineContext,
        observer: RunObserver | None = None,
        stats: Collector | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.ordered = context.execution_mode is ExecutionMode.ORDERED
        batch_sizes = [spec.options.max_size or 1 for spec in specs if spec.batch]
        self.window = Window(self.loop, window_size(context.max_in_flight, batch_sizes))
        if self.window.limit > context.max_in_flight:
            logger.info(
                "conveyor: the window (max_in_flight=%d) is raised to %d for this run, "
                "to hold a full batch of each batch stage at once (max_size %s)",
                context.max_in_flight,
                self.window.limit,
                " + ".join(map(str, batch_sizes)),
            )
        budget = context.max_in_flight_bytes
        self.weigher = None if budget is None else Weigher(self.window, budget, context.item_weight)
        self.window.can_drain = self._can_drain
        self.window.flush_batch = self._flush_a_batch
        self.consumer: asyncio.Future[None] | None = None
        # Every task of the run, with the awaitable a call's task was given (see abort).
        self.tasks: dict[asyncio.Task[Any], Any] = {}
        self.ready: deque[Any] = deque()  # results the consumer can take, in order
        self.error: BaseException | None = None
        self.closed = False  # (the window's flag, kept here too: read once per call)
        self.source_done = False
        self.finished = False
        self._source = source
        self._ended: asyncio.Future[None] | None = None
        # Called once when the run is over (abort: finished and drained, failed, closed or
        # dropped): the statistics' end, progress bars, the log's summary.
        self.on_over: list[Callable[[Run], None]] = [end_of_run_logged]
        self.on_consumer_wait: Callable[[], None] | None = None  # (a Feedback's pump)

        self.context = contextvars.copy_context()
        self.context.run(set_current_context, context)

        # The Futures that calls on threads, processes or Dask wait on (see _waiting).
        self.completions = Completions(self.loop, self.context)
        self.stages: list[Stage] = []
        self._build(specs, context)
        self.stats = stats
        observed = observer is not None or stats is not None
        if observed:
            instrument(self, observer, stats)
        gate_rate_limits(self)
        entry = self.entry
        # The pump may call an unlimited first single stage directly (unless a user's
        # observer is told of every item: statistics count calls, see _observe).
        self.direct_entry = (
            entry.start
            if isinstance(entry, SingleStage) and entry.limit == UNLIMITED and observer is None
            else None
        )

    # -- wiring ----------------------------------------------------------------------

    def _build(self, specs: Sequence[StageSpec], context: PipelineContext) -> None:
        order = OrderList(self._front_changed) if self.ordered else None
        self._final_list = order
        sink: Sink = OrderedOutput(self, order) if order is not None else Output(self)
        for spec in reversed(specs):
            executor = executor_for(spec)
            if spec.batch:
                stage: Stage = BatchStage(self, spec, spec.options.concurrency_limit or 1, executor)
                stage.list = order
                stage.downstream = sink
                if order is not None:
                    feeder = BatchFeeder(self, stage)  # type: ignore[arg-type]
                    order = feeder.list
                    sink = feeder.sink()
                else:
                    sink = stage
            else:
                limit = spec.options.concurrency_limit or context.max_parallelism or UNLIMITED
                stage = SingleStage(self, spec, limit, executor)
                stage.list = order
                stage.downstream = sink
                # Fused (see _stage), unless the next one has a limit it may have to wait for
                if isinstance(sink, SingleStage) and stage.plain and sink.plain:
                    stage.chain = sink if sink.limit == UNLIMITED else None
                sink = stage
            if spec.options.timeout is None:
                stage.futures = self.completions
            self.stages.append(stage)
        self.stages.reverse()
        self.entry: Sink = sink

    # -- tasks -----------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context) -> None:
        """Start an owned engine task that counts as busy until it ends."""
        task = self.loop.create_task(coro, context=context)
        self.tasks[task] = None
        self.window.busy += 1
        task.add_done_callback(self._task_done)
        if self.closed:  # started while the run was closing
            task.cancel()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(task, None)
        self.window.busy -= 1
        if task.cancelled():
            self.fail(asyncio.CancelledError())
        elif task.exception() is not None:
            self.fail(task.exception())  # type: ignore[arg-type]
        else:
            self.window.idle()

    def start(self) -> None:
        self.spawn(self._supervise(), self.context)

    async def _supervise(self) -> None:
        source = self._source
        stack = contextlib.AsyncExitStack()
        holds_resources = any(
            stage.spec.resources or hasattr(stage.executor, "open") for stage in self.stages
        )
        try:
            try:
                await self._bind(stack)
                executors_logged(self)
                if self.stats is not None:
                    self.stats.bound()
                fused = tight_loop(self)  # (composed from the calls just bound)
                if fused is not None:
                    fused.bind()
                await pump(self, source, fused)
            finally:
                await close_source(source)
            self.source_done = True
            self.stage_idle()
            if holds_resources and not self.finished and not self.closed:
                # Resources stay open until every call has ended.
                self._ended = self.loop.create_future()
                self.window.busy -= 1  # waiting is not working (see _window)
                self.window.idle()  # (it may have been the last to work: a stall?)
                try:
                    await self._ended
                finally:
                    self.window.busy += 1
        finally:
            if holds_resources:
                await close_resources(stack, self.tasks, self.completions.running)

    async def _bind(self, stack: contextlib.AsyncExitStack) -> None:
        # (The weigher, for process stages: their pickled copies count toward the bound.)
        opened: dict[Any, Any] = {WEIGHER: self.weigher}
        invokes = [
            await bind_stage(
                stage.spec, stack, opened, with_item=index > 0 or self._source is not NO_INPUT
            )
            for index, stage in enumerate(self.stages)
        ]
        # Pools after resources: the stack closes them first, so every call on a thread
        # has ended before a resource it uses is closed.
        for stage, invoke in zip(self.stages, invokes, strict=True):
            if hasattr(stage.executor, "open"):  # a pool that conveyor owns, per run
                stage.executor = await stage.executor.open(stack, opened)
            stage.bind(invoke)

    def _flush_a_batch(self) -> bool:
        """Flush a partial batch, if there is one (see ``_window``): the run is stalled
        with the window full. The window has room for every batch, so only the byte bound
        (admitting fewer large items than a batch holds) leads here."""
        for stage in self.stages:
            if isinstance(stage, BatchStage) and stage.acc:
                stage.flush()
                return True
        return False

    @property
    def source(self) -> Any:
        """The run's input, as given (for its reading figures, in the statistics)."""
        return self._source

    @property
    def final_order(self) -> OrderList | None:
        """The reorder list in front of the consumer (ordered runs; for statistics)."""
        return self._final_list

    def _front_changed(self) -> None:
        """The final list's front was settled: what holds nothing for the consumer leaves
        at once (see ``OrderList.drop_settled_front``); the consumer is woken."""
        order = self._final_list
        if order is not None:
            front = order.drop_settled_front(self.window.release)
            if front is not None and front.value is OPEN:
                sentinel_at_front(front)
        self.wake_consumer()

    def _can_drain(self) -> bool:
        """Whether the consumer has a result to take (and so will make room)."""
        order = self._final_list
        return bool(self.ready) or (order is not None and order.makes_room())

    # -- progress and the end --------------------------------------------------------

    def stage_idle(self) -> None:
        """A stage ran out of work: if the input is done, close what can be closed."""
        if not self.source_done or self.closed or self.finished:
            return
        if not self.input_ended():
            return
        self.finished = True
        self.wake_consumer()
        self._end()

    def input_ended(self) -> bool:
        """No more items will come: the remainder rule, stage by stage (each batch stage's
        remainder is flushed, or dropped below ``min_size``, once every stage before it is
        empty). True when no stage holds anything. The one rule for every input: a
        ``Feedback`` calls it when its feed is empty and nothing else is left."""
        for stage in self.stages:
            if isinstance(stage, BatchStage) and stage.acc:
                if stage.inflight > len(stage.acc):
                    return False  # batches still running: the remainder waits for them
                stage.close_input()
            if stage.inflight:
                return False
        return True

    def _end(self) -> None:
        ended = self._ended
        if ended is not None and not ended.done():
            ended.set_result(None)

    def wake_consumer(self) -> None:
        waiter = self.consumer
        if waiter is not None:
            self.consumer = None
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self.error is None and not self.closed:
            self.error = run_error(exc)
            self.abort()
            self.wake_consumer()

    def abort(self) -> None:
        """Cancel everything, synchronously (the tasks finish unwinding on their own)."""
        if self.closed:
            return
        self.closed = True
        self.window.close()
        for stage in self.stages:
            if isinstance(stage, BatchStage):
                stage.cancel_timer()
        for task, awaitable in list(self.tasks.items()):
            task.cancel()
            # A call's task cancelled before its first step (3.11 starts tasks lazily)
            # never awaits its coroutine or Future: let go of it cleanly.
            discard(awaitable)
        self.completions.cancel()
        self._end()
        over, self.on_over = self.on_over, []
        for callback in over:
            try:
                callback(self)
            except Exception:  # (a progress bar's closed file must not stop the abort)
                logger.exception("conveyor: a callback at the end of a run failed")
        if self.error is None:
            # Closed by the consumer (or for it): results not taken yet are dropped, and a
            # consumer waiting in another task ends its iteration.
            self._discard_results()
            self.wake_consumer()

    def _discard_results(self) -> None:
        self.ready.clear()
        self._final_list = None

    async def shutdown(self) -> None:
        """Cancel everything and wait until every task of the run has ended."""
        self.abort()
        # (A call's task cancelled before its first step ends without running its own
        # clean-up, so it may still be listed: wait for the tasks that are not done.)
        while pending := [task for task in self.tasks if not task.done()]:
            await asyncio.wait(pending)
        self.tasks.clear()

    # -- the consumer side -----------------------------------------------------------

    def deliver(self, item: Any) -> None:
        """A result is next in order (or, as-completed, just completed): hand it over."""
        self.ready.append(item)
        if self.consumer is not None:
            self.wake_consumer()

    def take(self) -> Any:
        """The next result if one is ready, else :data:`NOTHING`."""
        ready = self.ready
        if ready:
            item = ready.popleft()  # (before the release: a stall check may look at ready)
            self.window.release(1)
            return item
        order = self._final_list
        if order is None:
            return NOTHING
        # Results that reached the end of an ordered run behind others: read the list.
        head = order.head
        while (node := head.next) is not None:
            value = node.value
            if value is PENDING:
                return NOTHING
            if value is OPEN:
                sentinel_at_front(node)
                return NOTHING
            order.unlink_front()
            if value is CLOSED:
                continue
            self.window.release(1)
            if value is not EMPTY:
                return value
        return NOTHING

    async def next(self) -> Any:
        """The next result, ``StopAsyncIteration`` at the end, or the run's error."""
        while (value := self.take()) is NOTHING:
            await self._wait()
        return value

    async def _wait(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None  # raised once; then the stream is over
            await self.shutdown()
            self._discard_results()
            raise error
        if self.finished or self.closed:
            await self.shutdown()
            raise StopAsyncIteration
        waiter = self.consumer
        if waiter is None:
            waiter = self.consumer = self.loop.create_future()
            if self.on_consumer_wait is not None:
                self.on_consumer_wait()  # (may deliver a result at once: waiter is done)
        await waiter
