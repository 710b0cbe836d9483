"""One run of a pipeline: the window, the input pump, delivery, and clean-up.

**The window.** Every live item holds one token: admitted from the input, produced by an
expansion, waiting in a batch accumulator, or waiting to be delivered. The input pump and
generator expansions wait while ``tokens >= limit`` (``max_in_flight``), so memory is
bounded whatever the input's length. Two rules keep the bound deadlock-free:

* In an ordered run, a generator whose children have all been passed on by the reader of
  its segment may always produce one more (otherwise items queued *behind* it could hold
  the whole window while it waits for room).
* When nothing is working (no call, no expansion, no pump progress) and someone waits for
  room, the run is *stalled*: a partial batch is flushed (the window is smaller than the
  batch) or the waiters are woken.

**Delivery.** Results the consumer can take at once wait in ``ready``, in the order it
gets them. In an ordered run, a result that completes behind a straggler waits in the
last segment's reorder list instead, until the straggler is through.

**Ownership.** Every task the run starts is kept in ``tasks`` and is cancelled by
``abort()``; ``shutdown()`` cancels and awaits them. A call's task reports its own end
(``driver_ended``); the others have a done callback (``_task_done``). The consumer calls
``shutdown()`` when the run ends, fails, or is closed, and ``abort()`` when it is
cancelled or dropped. A task that ends cancelled while the run is open fails the run.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections import deque
from collections.abc import AsyncIterable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..context import ExecutionMode, PipelineContext, set_current_context
from ..errors import Failure
from ._batch import BatchStage
from ._eager import Call, Driver, Handoff, current_tasks
from ._order import CLOSED, EMPTY, OPEN, PENDING, OrderList, Sentinel
from ._stages import UNLIMITED, SegmentEnd, SingleStage, Sink, Stage

if TYPE_CHECKING:
    from ..tasks import BaseTask

NO_INPUT: Any = object()
"""Input of a run that calls its first task once, with no item (a source task)."""

NOTHING: Any = object()
"""What ``Run.take`` returns when no result is ready."""

# Yield to the event loop at least this often (seconds) while pumping input that never
# suspends, so the consumer sees early results.
_PUMP_SLICE = 0.005


class _Output(Sink):
    """Results of an as-completed run, in completion order."""

    __slots__ = ("ready", "run")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.ready = run.ready

    def push(self, item: Any, node: Any) -> None:
        self.ready.append(item)  # Run.deliver, inlined: this runs once per result
        if self.run._consumer is not None:
            self.run.wake_consumer()


class _OrderedOutput(SegmentEnd):
    """The end of an ordered run: results in input order (see ``SegmentEnd``)."""

    __slots__ = ("run",)

    def __init__(self, run: Run, order: OrderList) -> None:
        super().__init__(order, run.deliver)
        self.run = run

    def push(self, item: Any, node: Any) -> None:
        if node is not None:
            self.list.resolve(node, item)
        elif self.list.head.next is None:
            self.run.ready.append(item)  # Run.deliver, inlined
            if self.run._consumer is not None:
                self.run.wake_consumer()
        else:
            self.list.append().value = item


class _BatchFeeder:
    """Reads a segment's reorder list in order and feeds the batch stage that ends it."""

    __slots__ = ("batch", "list", "run", "walking")

    def __init__(self, run: Run, batch: BatchStage) -> None:
        self.run = run
        self.batch = batch
        self.list = OrderList(self.walk)
        self.walking = False

    def ready(self, item: Any) -> None:
        """An item that is next in order, with no node (see ``SegmentEnd``)."""
        self.batch.push(item, None)

    def walk(self) -> None:
        if self.walking:  # re-entered from inside the batch: the outer loop goes on
            return
        self.walking = True
        try:
            order = self.list
            head = order.head
            run = self.run
            while (node := head.next) is not None and not run.closed:
                value = node.value
                if value is PENDING:
                    break
                if value is OPEN:
                    run.sentinel_at_front(node)  # type: ignore[arg-type]
                    break
                order.unlink_front()
                if value is EMPTY:
                    run.release(1)
                elif value is not CLOSED:
                    self.batch.push(value, None)  # its token stays until the batch is done
        finally:
            self.walking = False


class Run:
    """The state of one pipeline run, driven by the consumer through ``next()``."""

    __slots__ = (
        "_consumer",
        "_entry",
        "_final_list",
        "_source",
        "closed",
        "context",
        "error",
        "expanding",
        "finished",
        "handoff",
        "limit",
        "loop",
        "low_water",
        "ordered",
        "ready",
        "source_done",
        "stages",
        "tasks",
        "tokens",
        "waiting",
        "working",
    )

    def __init__(
        self,
        tasks: Sequence[BaseTask[Any, Any]],
        source: Any,
        context: PipelineContext,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.ordered = context.execution_mode is ExecutionMode.ORDERED
        self.limit = context.max_in_flight
        self.low_water = self.limit - max(1, self.limit // 8)
        self.tokens = 0
        self.working = 0  # tasks doing work: calls that suspended, expansions, the pump
        self.expanding = 0  # generators under way
        self.waiting: list[tuple[asyncio.Future[None], Sentinel | None, bool]] = []
        self._consumer: asyncio.Future[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.handoff = Handoff()
        self.ready: deque[Any] = deque()  # results the consumer can take, in order
        self.error: BaseException | None = None
        self.closed = False
        self.source_done = False
        self.finished = False
        self._source = source

        self.context = contextvars.copy_context()
        self.context.run(set_current_context, context)

        self.stages: list[Stage] = []
        self._build(tasks, context)

    # -- wiring ----------------------------------------------------------------------

    def _build(self, tasks: Sequence[BaseTask[Any, Any]], context: PipelineContext) -> None:
        ordered = self.ordered
        order = OrderList(self.wake_consumer) if ordered else None
        self._final_list = order
        # Walk backwards so each stage knows where its results go.
        sink: Sink = _OrderedOutput(self, order) if order is not None else _Output(self)
        for task in reversed(tasks):
            if task._is_batch:
                stage: Stage = BatchStage(self, task, task.concurrency_limit or 1)
                stage.list = order
                stage.downstream = sink
                if ordered:
                    feeder = _BatchFeeder(self, stage)  # type: ignore[arg-type]
                    order = feeder.list
                    sink = SegmentEnd(order, feeder.ready)
                else:
                    sink = stage
            else:
                limit = task.concurrency_limit or context.max_parallelism or UNLIMITED
                stage = SingleStage(self, task, limit)
                stage.list = order
                stage.downstream = sink
                # Fused (see _stages), unless the next one has a limit it may have to wait for
                if isinstance(sink, SingleStage) and stage.plain and sink.plain:
                    stage.chain = sink if sink.limit == UNLIMITED else None
                sink = stage
            self.stages.append(stage)
        self.stages.reverse()
        self._entry = sink

    # -- tasks -----------------------------------------------------------------------

    def spawn(
        self, coro: Coroutine[Any, Any, Any], context: contextvars.Context
    ) -> asyncio.Task[Any]:
        """Start an owned task that counts as working until it ends."""
        task = self.loop.create_task(coro, context=context)
        self.tasks.add(task)
        self.working += 1
        task.add_done_callback(self._task_done)
        if self.closed:  # started by a call that finished while the run was closing
            task.cancel()
        return task

    def spawn_driver(self, call: Call) -> asyncio.Task[Any]:
        """Start a task for a call; its driver reports the end itself (``driver_ended``).

        (A done callback would cost a loop iteration per task: one per item under I/O.)
        """
        task = self.loop.create_task(Driver(call, self), context=call[3])
        self.tasks.add(task)
        self.working += 1
        if self.closed:
            task.cancel()
        return task

    def driver_ended(self, error: BaseException | None) -> None:
        self.tasks.discard(current_tasks.get(self.loop))
        self.working -= 1
        if isinstance(error, (Exception, asyncio.CancelledError)):
            self.fail(error)  # (a cancellation only counts while the run is open)
        elif self.working == 0:
            self.check_stall()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self.working -= 1
        if task.cancelled():
            self.fail(asyncio.CancelledError())
        elif task.exception() is not None:
            self.fail(task.exception())  # type: ignore[arg-type]
        elif self.working == 0:
            self.check_stall()

    def start(self) -> None:
        self.spawn(self._pump(), self.context)

    # -- the window ------------------------------------------------------------------

    def release(self, n: int) -> None:
        self.tokens -= n
        if self.waiting:
            self.room_made()

    def room_made(self) -> None:
        """Tokens came back: wake who waits for room, once there is enough of it."""
        # The pump waits until an eighth of the window is free (a cheap hand-over per
        # batch of items, not per item), unless nothing else is left working.
        if self.tokens <= self.low_water or not self.working:
            self.wake_waiters()

    def _may_proceed(self, sentinel: Sentinel | None, expansion: bool) -> bool:
        if not expansion:
            return self.tokens < self.limit
        # A generator's own item keeps a token while it runs; its children are bounded
        # by the window without counting those, so expansions cannot starve each other.
        if self.tokens - self.expanding < self.limit:
            return True
        # In an ordered run, a generator whose children have all been passed on may
        # always go on: items behind it could otherwise hold the window forever.
        prev = None if sentinel is None else sentinel.prev
        return prev is not None and prev.prev is None  # prev is the list's dummy head

    def wake_waiters(self) -> None:
        """Wake every waiter whose condition now holds (and only those)."""
        still = []
        for waiter in self.waiting:
            future, sentinel, expansion = waiter
            if future.done():
                continue
            if self._may_proceed(sentinel, expansion):
                future.set_result(None)
            else:
                still.append(waiter)
        self.waiting = still  # the woken are off the list: no more scans for them

    async def wait_for_room(
        self, sentinel: Sentinel | None = None, expansion: bool = False
    ) -> None:
        """Wait until the window lets the pump (or a generator) add an item."""
        while not self._may_proceed(sentinel, expansion):
            if self.closed:
                raise asyncio.CancelledError
            waiter = (self.loop.create_future(), sentinel, expansion)
            self.waiting.append(waiter)
            if sentinel is not None:
                sentinel.on_front = self.wake_waiters
            self.working -= 1
            try:
                self.check_stall()
                await waiter[0]
            finally:
                if waiter in self.waiting:
                    self.waiting.remove(waiter)
                self.working += 1
                if sentinel is not None:
                    sentinel.on_front = None

    def sentinel_at_front(self, sentinel: Sentinel) -> None:
        if sentinel.on_front is not None:
            sentinel.on_front()

    def check_stall(self) -> None:
        """If nothing is working and someone waits for room, make progress."""
        # A flush may complete synchronously and only fill the next batch stage's
        # accumulator, so keep going until something works or a waiter can go on.
        while not self.working and self.waiting and not self.closed:
            if any(self._may_proceed(s, e) for _, s, e in self.waiting):
                self.wake_waiters()
                return
            stage = next((s for s in self.stages if isinstance(s, BatchStage) and s.acc), None)
            if stage is None:
                # The window is full of results waiting for the consumer: it will make
                # room (generators whose sentinel reaches the front are woken by it).
                return
            stage.flush()  # the window is smaller than the batch: flush what it has

    # -- input -----------------------------------------------------------------------

    async def _pump(self) -> None:
        source = self._source
        try:
            await self._resolve_side_inputs()
            if source is NO_INPUT:
                self._admit(None)
            elif isinstance(source, AsyncIterable):
                await self._pump_async(source)
            else:
                await self._pump_sync(source)
        finally:
            await close_source(source)
        self.source_done = True
        self.stage_idle()

    def _admit(self, item: Any) -> None:
        self.tokens += 1
        self._entry.push(item, None)  # no node yet: it belongs at the tail (see _stages)

    async def _pump_sync(self, source: Iterable[Any]) -> None:
        entry = self._entry
        push = entry.push
        # SingleStage.push, minus its limit check, for a stage without a limit: one call
        # fewer per item. (Its ``call`` is looked up each time: it changes, see LAZY_AFTER.)
        direct = isinstance(entry, SingleStage) and entry.limit == UNLIMITED
        limit = self.limit
        loop_time = self.loop.time
        deadline = loop_time() + _PUMP_SLICE
        count = 0
        try:
            # Admitting an item cannot raise (stages catch what tasks raise), so what is
            # caught here came from the input.
            for item in source:
                self.tokens += 1
                if direct and type(item) is not Failure:
                    entry.call(item, None)  # type: ignore[attr-defined]
                else:
                    push(item, None)
                if self.closed:  # a task failed the run while the item went through
                    return
                # Wait before reading on: the input is not read ahead of the window.
                if self.tokens >= limit:
                    await self.wait_for_room()
                    deadline = loop_time() + _PUMP_SLICE
                count += 1
                if not count & 63 and loop_time() >= deadline:
                    await asyncio.sleep(0)
                    deadline = loop_time() + _PUMP_SLICE
        except Exception as exc:
            exc.add_note("conveyor: raised while reading the pipeline's input")
            raise

    async def _pump_async(self, source: AsyncIterable[Any]) -> None:
        iterator = aiter(source)
        admit = self._admit
        loop_time = self.loop.time
        deadline = loop_time() + _PUMP_SLICE
        count = 0
        while not self.closed:
            if self.tokens >= self.limit:
                await self.wait_for_room()
                deadline = loop_time() + _PUMP_SLICE
                continue
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            except Exception as exc:
                exc.add_note("conveyor: raised while reading the pipeline's input")
                raise
            admit(item)
            count += 1
            if not count & 63 and loop_time() >= deadline:
                await asyncio.sleep(0)
                deadline = loop_time() + _PUMP_SLICE

    async def _resolve_side_inputs(self) -> None:
        for stage in self.stages:
            stage.invoke = await stage.task._invoker_for_run()
        first = self.stages[0] if self.stages else None
        if self._source is NO_INPUT and first is not None:
            first.invoke = await first.task._invoker_for_run(with_item=False)

    # -- progress and the end --------------------------------------------------------

    def stage_idle(self) -> None:
        """A stage ran out of work: if the input is done, close what can be closed."""
        if not self.source_done or self.closed or self.finished:
            return
        for stage in self.stages:
            if isinstance(stage, BatchStage) and stage.acc:
                if stage.inflight > len(stage.acc):
                    return  # batches still running: the remainder waits for them
                stage.close_input()
            if stage.inflight:
                return
        self.finished = True
        self.wake_consumer()

    def wake_consumer(self) -> None:
        waiter = self._consumer
        if waiter is not None:
            self._consumer = None
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self.error is None and not self.closed:
            if isinstance(exc, asyncio.CancelledError):
                # Not the run's own cancellation (that closes it first): raised as is, it
                # would read as the consumer being cancelled.
                wrapped = RuntimeError(
                    "a call was cancelled from outside the pipeline (a task cancelled "
                    "itself, or CancelledError was raised in it)"
                )
            elif isinstance(exc, (StopIteration, StopAsyncIteration)):
                # Raised from __anext__ these would read as a normal end of the stream.
                wrapped = RuntimeError(f"{type(exc).__name__} escaped from a task: {exc!r}")
            else:
                wrapped = None
            if wrapped is not None:
                wrapped.__cause__ = exc
                for note in getattr(exc, "__notes__", ()):
                    wrapped.add_note(note)
                exc = wrapped
            self.error = exc
            self.abort()
            self.wake_consumer()

    def abort(self) -> None:
        """Cancel everything, synchronously (the tasks finish unwinding on their own)."""
        if self.closed:
            return
        self.closed = True
        for stage in self.stages:
            if isinstance(stage, BatchStage) and stage._timer is not None:
                stage._timer.cancel()
        for task in list(self.tasks):
            task.cancel()
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
        while self.tasks:
            await asyncio.wait(list(self.tasks))

    # -- the consumer side -----------------------------------------------------------

    def deliver(self, item: Any) -> None:
        """A result is next in order (or, as-completed, just completed): hand it over."""
        self.ready.append(item)
        if self._consumer is not None:
            self.wake_consumer()

    def take(self) -> Any:
        """The next result if one is ready, else :data:`NOTHING`."""
        ready = self.ready
        if ready:
            self.tokens -= 1  # release(1), inlined (as in AsyncStream.__anext__)
            if self.waiting:
                self.room_made()
            return ready.popleft()
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
                self.sentinel_at_front(node)  # type: ignore[arg-type]
                return NOTHING
            order.unlink_front()
            if value is CLOSED:
                continue
            self.release(1)
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
        if self._consumer is None:
            self._consumer = self.loop.create_future()
        await self._consumer


async def close_source(source: Any) -> None:
    """Close an input the run was given: async generators/streams and generators."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None and (inspect.isasyncgen(source) or hasattr(source, "__anext__")):
        await aclose()
    else:
        _close_sync_source(source)


def _close_sync_source(source: Any) -> None:
    if inspect.isgenerator(source):
        source.close()
