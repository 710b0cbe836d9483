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
from typing import Any, Protocol

from .._spec import StageSpec
from ..checkpoint import Resumed
from ..context import PipelineContext, set_current_context
from ..feedback import Feedback
from ._batch import BatchStage
from ._bind import bind_stage, close_resources
from ._branch import BranchStage
from ._calls import discard, run_error
from ._checkpoint import CheckpointInput
from ._delivery import (
    BatchFeeder,
    OrderedOriginsOutput,
    OrderedOutput,
    OriginsOutput,
    Output,
    Paired,
)
from ._fused import tight_loop
from ._input import NO_INPUT, FeedbackPump, close_source, pump, pump_origins
from ._lanes import LanedStage
from ._ledger import Ledger
from ._log import RunLog
from ._observe import Counted, ObservedExecutor, RunObserver, waited_for_room
from ._order import NOTHING, OrderList, Sink
from ._plan import UNLIMITED, Plan, plan
from ._registry import build as executor_for
from ._registry import run_scoped
from ._roles import Outcomes, Statistics
from ._stage import SingleStage, Stage
from ._trace import traced_run
from ._waiting import Completions
from ._weight import WEIGHER, Weigher


class RunStatistics(Statistics, Protocol):
    """A run's statistics as the run sees them (``_stats.Collector`` is one): given to
    the stages as they are built, then told of the run's moments."""

    def attach(self, run: Run) -> None:
        """The run is built: start sampling it."""
        ...

    def bound(self) -> None:
        """The stages are bound to this run's inputs (calls may start)."""
        ...

    def first_taken(self) -> None:
        """The consumer took the run's first result."""
        ...

    def room_waited(self, seconds: float) -> None:
        """The input (or a generator) waited ``seconds`` for room in the window."""
        ...

    def branch(self, stage: Stage, label: str) -> RunStatistics:
        """The statistics of a branch run of ``stage`` (see ``_branch``), listed with
        this run's."""
        ...


__all__ = ["NOTHING", "Run"]  # NOTHING: what ``Run.take`` returns when no result is ready


class Run:
    """The state of one pipeline run, driven by the consumer through ``next()``."""

    __slots__ = (
        "_ended",
        "_final_list",
        "_source",
        "branch",
        "checkpoint",
        "closed",
        "completions",
        "consumer",
        "context",
        "direct_entry",
        "entry",
        "error",
        "feedback",
        "ledger",
        "log",
        "loop",
        "on_consumer_wait",
        "on_over",
        "on_taken",
        "ordered",
        "origins",
        "outcomes",
        "plan",
        "ready",
        "ready_origins",
        "settings",
        "stages",
        "stats",
        "tasks",
        "tracing",
        "weigher",
    )

    def __init__(
        self,
        specs: Sequence[StageSpec],
        source: Any,
        context: PipelineContext,
        observer: RunObserver | None = None,
        stats: RunStatistics | None = None,
        *,
        paired: Callable[[Any], Any] | None = None,
        branch: bool = False,
        outcomes: Outcomes | None = None,
    ) -> None:
        """``paired``: each result is handed over as ``(paired(origins), result)``
        (``with_items()``, a branch's run); ``branch``: a branch's run (see ``_branch``):
        the input gives ``(item, join)`` pairs, each item's origin standing for its join,
        and a batch's result of one element per item goes on as each item's own;
        ``outcomes``: who its stages' policies tell (a branch run's, see ``_branch``).
        """
        self.loop = asyncio.get_running_loop()
        # (Before anything logs: the fields of every record of this run.)
        self.log = RunLog(context.pipeline_id, [spec.name for spec in specs], context.retry_log)
        # Traces (see ``_trace``): the run's span is a child of the caller's current one.
        self.tracing = traced_run(context, specs)
        self.plan = run_plan = plan(specs, context, observed=observer is not None)
        self.ordered = run_plan.ordered
        self.ledger = ledger = Ledger(
            self.loop,
            run_plan.window,
            can_drain=self._can_drain,
            flush_batch=self.flush_a_batch,
            elsewhere=self.branches_work,
            on_wait=waited_for_room(observer, None if stats is None else stats.room_waited),
            on_first=None if stats is None else stats.first_taken,
        )
        if run_plan.window > run_plan.max_in_flight:
            self.log.info(
                "window",
                "conveyor: the window (max_in_flight=%d) is raised to %d for this run, "
                "to hold a full batch of each batch stage at once (max_size %s)",
                run_plan.max_in_flight,
                run_plan.window,
                " + ".join(map(str, run_plan.batch_sizes)),
            )
        for stage_plan in run_plan.stages:
            if run_plan.window < stage_plan.limit < UNLIMITED:
                # (the window bounds every call at once: the limit is silently capped)
                self.log.warning(
                    "limit_capped",
                    "conveyor: stage %r can never reach its concurrency limit of %d: the "
                    "window (max_in_flight=%d) holds at most that many items in flight; "
                    "raise PipelineContext(max_in_flight=...) or lower the limit",
                    stage_plan.spec.name,
                    stage_plan.limit,
                    run_plan.window,
                    conveyor_task=stage_plan.spec.name,
                )
        budget = context.max_in_flight_bytes
        self.weigher = None if budget is None else Weigher(ledger, budget, context.item_weight)
        self.consumer: asyncio.Future[None] | None = None
        # Every task of the run, with the awaitable a call's task was given (see abort).
        self.tasks: dict[asyncio.Task[Any], Any] = {}
        self.ready: deque[Any] = deque()  # results the consumer can take, in order
        self.ready_origins: deque[Any] = deque()  # their origins (on a checkpoint only)
        self.error: BaseException | None = None
        self.closed = False  # (the window's flag, kept here too: read once per call)
        self._source = source
        # The input read through a checkpoint (``with_checkpoint``, see ``_checkpoint``):
        # its items carry origins (``_origin``), its stages' policies tell it their
        # outcomes; it takes the checkpoint's lock last, once the run is built.
        self.checkpoint = CheckpointInput(self, source) if isinstance(source, Resumed) else None
        # Whether items carry origins (see ``_origin``): on a checkpoint, or for results
        # paired with what they descend from.
        self.origins = self.checkpoint is not None or paired is not None
        self.outcomes: Outcomes | None = self.checkpoint if outcomes is None else outcomes
        self.branch = branch
        self.settings = context
        # What the consumer's taking a result is: the ledger's ``taken`` (with the
        # result's origins, when items carry them).
        self.on_taken = self._taken_from if self.origins else ledger.taken
        self._ended: asyncio.Future[None] | None = None
        # Called once when the run is over (abort: finished and drained, failed, closed or
        # dropped): the statistics' end, progress bars, the log's summary.
        self.on_over: list[Callable[[Run], None]] = [self.log.ended]
        # A Feedback input's pump: told when the consumer waits, and when nothing works.
        self.feedback = FeedbackPump(self, source) if isinstance(source, Feedback) else None
        self.on_consumer_wait = None if self.feedback is None else self.feedback.idle
        if self.checkpoint is not None:  # (the pump at its crash bound: is the run stalled?)
            self.on_consumer_wait = self.checkpoint.idle

        self.context = contextvars.copy_context()
        self.context.run(set_current_context, context)
        self.log.install(self.context)
        if self.tracing is not None:
            self.context.run(self.tracing.enter)
            self.on_over.append(self.tracing.over)

        # The Futures that calls on threads, processes or Dask wait on (see _waiting).
        self.completions = Completions(self.loop, self.context)
        self.stages: list[Stage] = []
        self.stats = stats
        self._build(run_plan, observer, paired)
        ledger.watch(
            self.stages,
            self._finished,
            self.on_consumer_wait,
        )
        if stats is not None:
            stats.attach(self)
        # The pump may call an unlimited first single stage directly (see ``_plan``).
        self.direct_entry = self.stages[0].start if run_plan.direct_entry else None
        if self.checkpoint is not None:
            ledger.on_done = self.checkpoint.done
            self.checkpoint.open()
            self._source = source.source
            self.on_over.append(self.checkpoint.over)

    # -- wiring ----------------------------------------------------------------------

    def _build(
        self, run_plan: Plan, observer: RunObserver | None, paired: Callable[[Any], Any] | None
    ) -> None:
        """Build the stages of ``run_plan``, each composed once: its executor, what
        observes it (the statistics, a user's observer: see ``_observe``), its rate gate,
        where its results go, and the next stage if it is fused with it."""
        ledger = self.ledger
        checkpoint = self.origins  # (items carry origins: see ``_origin``)
        order = (
            OrderList(
                self._front_changed,
                ledger.released,
                taken=ledger.taken,
                left=ledger.left if checkpoint else None,
            )
            if self.ordered
            else None
        )
        self._final_list = order
        sink: Sink
        if order is not None:
            sink = OrderedOriginsOutput(self, order) if checkpoint else OrderedOutput(self, order)
        else:
            sink = OriginsOutput(self) if checkpoint else Output(self)
        if paired is not None:  # (each result with what its origins stand for)
            sink = Paired(sink, paired)
        stats = self.stats
        plans = run_plan.stages
        probes = [None if observer is None else observer.stage(p.index, p.spec) for p in plans]
        for stage_plan, probe in zip(reversed(plans), reversed(probes), strict=True):
            spec = stage_plan.spec
            executor = executor_for(spec)
            if probe is not None:  # told of every call
                executor = ObservedExecutor(executor, probe)
                sink = Counted(sink, probe.items_out)
            if spec.batch:
                stage: Stage = BatchStage(self, stage_plan, executor, stats, probe, self.tracing)
                stage.list = order
                stage.downstream = sink
                if order is not None:
                    feeder = BatchFeeder(self, stage, checkpoint)
                    order = feeder.list
                    sink = feeder.sink()
                else:
                    sink = stage
            else:
                if spec.branches is not None:  # (parallel, route: see ``_branch``)
                    stage = BranchStage(
                        self, stage_plan, executor, stats, probe, self.tracing, new_run=Run
                    )
                else:  # (keyed limits, priority: the lanes start its calls, see ``_lanes``)
                    kind = LanedStage if stage_plan.starts == "lanes" else SingleStage
                    stage = kind(self, stage_plan, executor, stats, probe, self.tracing)
                stage.list = order
                stage.downstream = sink
                if stage_plan.fused:  # (the next stage is the sink: see _plan)
                    assert isinstance(sink, SingleStage)
                    stage.chain = sink
                sink = stage
            if spec.options.timeout is None:
                stage.futures = self.completions
            if stage.gate is not None:
                self.on_over.append(stage.gate.over)
            if stage.cache is not None:  # (a hit takes no turn of the rate limit either)
                self.on_over.append(stage.cache.over)
                if stage.gate is not None and not spec.batch:
                    stage.start = stage.cache.before(stage, stage.start)
            self.stages.append(stage)
        self.stages.reverse()
        self.entry: Sink = sink

    # -- tasks -----------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context) -> None:
        """Start an owned engine task that counts as busy until it ends."""
        task = self.loop.create_task(coro, context=context)
        self.tasks[task] = None
        self.ledger.work_started()
        task.add_done_callback(self._task_done)
        if self.closed:  # started while the run was closing
            task.cancel()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(task, None)
        self.ledger.work_ended_quietly()
        if task.cancelled():
            self.fail(asyncio.CancelledError())
        elif task.exception() is not None:
            self.fail(task.exception())  # type: ignore[arg-type]
        else:
            self.ledger.idle()

    def start(self) -> None:
        self.spawn(self._supervise(), self.context)

    async def _supervise(self) -> None:
        source = self._source
        stack = contextlib.AsyncExitStack()
        holds_resources = any(
            stage.spec.resources or run_scoped(stage.executor) for stage in self.stages
        )
        try:
            try:
                await self._bind(stack)
                self.log.executors(self)
                if self.stats is not None:
                    self.stats.bound()
                # (Composed from the calls just bound; not on a checkpoint: the tight
                # loop carries no origins.)
                fused = None if self.origins else tight_loop(self)
                if fused is not None:
                    fused.bind()
                if self.checkpoint is not None:
                    await self.checkpoint.pump(source)
                elif self.origins:
                    await pump_origins(self, source, self.branch)
                else:
                    await pump(self, source, fused)
            finally:
                await close_source(source)
            ledger = self.ledger
            ledger.input_read()
            if holds_resources and not ledger.finished and not self.closed:
                # Resources stay open until every call has ended.
                self._ended = self.loop.create_future()
                ledger.work_stopped()  # waiting is not working (the last to work: a stall?)
                try:
                    await self._ended
                finally:
                    ledger.work_started()
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
            if run_scoped(stage.executor):  # a pool that conveyor owns, per run
                stage.executor = await stage.executor.open(stack, opened)
            stage.bind(invoke)

    def flush_a_batch(self) -> bool:
        """Flush a partial batch, if there is one (see ``_ledger``): the run is stalled
        with the window full. The window has room for one whole batch of every stage, so
        only the byte bound (admitting fewer large items than a batch holds), a keyed
        stage's many partial batches (its least recently fed goes) or a batch in a branch
        (see ``_branch``) lead here."""
        # A branch's batch first: which items share one is not fixed anyway (they come
        # as the branch stage's calls start), where this run's own batches are composed
        # exactly as by a plain loop whenever the window has room for them.
        return any(
            stage.flush_one() for stage in self.stages if isinstance(stage, BranchStage)
        ) or any(stage.flush_one() for stage in self.stages if isinstance(stage, BatchStage))

    def working(self) -> bool:
        """Whether this run works (a branch stage's run: see ``_branch``): a task of
        it, a run of its branch stages, or a result ready for its consumer."""
        return self.ledger.working() or self._can_drain() or self.branches_work()

    def branches_work(self) -> bool:
        """Whether a run of one of this run's branch stages works (see ``_branch``): this
        run is not stalled then, whatever its own ledger counts."""
        return any(isinstance(stage, BranchStage) and stage.working() for stage in self.stages)

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
        at once (see ``OrderList.settle``); the consumer is woken."""
        order = self._final_list
        if order is not None:
            order.settle()
        self.wake_consumer()

    def _can_drain(self) -> bool:
        """Whether the consumer has a result to take (and so will make room)."""
        order = self._final_list
        return bool(self.ready) or (order is not None and order.makes_room())

    # -- progress and the end --------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Whether every item of the input is accounted for (see ``_ledger``)."""
        return self.ledger.finished

    def _finished(self) -> None:
        """(The ledger's ``on_finished``.) The input is done and nothing is left."""
        self.wake_consumer()
        self._end()

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
        self.ledger.close()
        for stage in self.stages:
            if isinstance(stage, BatchStage):
                stage.cancel_timer()
            elif isinstance(stage, BranchStage):
                stage.abort()
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
                self.log.exception(
                    "callback_failed", "conveyor: a callback at the end of a run failed"
                )
        if self.error is None:
            # Closed by the consumer (or for it): results not taken yet are dropped, and a
            # consumer waiting in another task ends its iteration.
            self._discard_results()
            self.wake_consumer()
        elif self.checkpoint is not None:
            # Failed, on a checkpoint: results not taken yet are dropped too (their items
            # run again next time), for the checkpoint records nothing from now on: one
            # taken after the error would be delivered and not recorded done.
            self._discard_results()

    def _discard_results(self) -> None:
        self.ready.clear()
        self.ready_origins.clear()
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

    def deliver(self, item: Any, origin: Any) -> None:
        """A result of ``origin`` is next in order: hand it over (a checkpointed run's
        ordered end: see ``_delivery.OrderedOriginsOutput``)."""
        self.ready_origins.append(origin)
        self.ready.append(item)
        if self.consumer is not None:
            self.wake_consumer()

    def _taken_from(self) -> None:
        """(``on_taken`` when items carry origins.) The consumer took the first result of
        ``ready``: the ledger's ``taken``, with its origins."""
        ledger = self.ledger
        ledger.taken()
        ledger.left(self.ready_origins.popleft())

    def take(self) -> Any:
        """The next result if one is ready, else :data:`NOTHING`."""
        ready = self.ready
        if ready:
            item = ready.popleft()  # (before the release: a stall check may look at ready)
            self.on_taken()
            return item
        order = self._final_list  # (results that reached the end behind others)
        return NOTHING if order is None else order.take()

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
