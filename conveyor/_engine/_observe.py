"""The observer seam: statistics and observers, inserted only into an observed run.

A run is observed by its statistics (``_stats.Collector``, unless the context says
``statistics=False``) and by a :class:`RunObserver` the user attaches, if any.
:func:`instrument` puts probes around each stage, by composition, so the engine's own
paths carry no observer code at all:

* items in: the stage's class is swapped for an observed twin whose ``push`` counts;
* results: the last stage's downstream is wrapped in a counting sink (and every stage's,
  for a user's observer, which is told of each result);
* calls: the statistics time a sample of calls (see ``_stats``); a user's observer is
  told of every call, through a timing executor around the stage's own;
* retries and final failures: the stage's error policy reports them;
* batches: the observed batch twin reports each flush, its size, and why;
* backpressure: the window reports how long the input (or a generator) waited for room.

Under statistics alone, plain stages stay fused (see ``_stage``) and the pump may call
the first stage directly: items are counted where calls are made (``_CountedSingle``).
A user's observer is told of every item and call, so in a run it observes nothing is
fused and the pump never bypasses a stage's ``push``. Progress bars and exporters read
the statistics.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from ..abc import RunObserver as RunObserver  # (public: users implement them)
from ..abc import StageObserver as StageObserver
from ..errors import Failure
from ._batch import BatchStage
from ._calls import AWAIT, KINDS_GET, Executor, as_awaitable, kind_of
from ._delivery import OrderedOutput, Output
from ._order import Sink
from ._registry import figures, run_scoped
from ._stage import SingleStage, Stage
from ._stats import Collector, StageRecord
from ._waiting import await_future, go_async

if TYPE_CHECKING:
    from ._run import Run


def instrument(run: Run, observer: RunObserver | None, stats: Collector | None) -> None:
    """Observe ``run`` (see the module's docstring); ``stats`` starts sampling now."""
    last = len(run.stages) - 1
    for index, stage in enumerate(run.stages):
        record = stats.record(stage) if stats is not None else None
        probe = observer.stage(index, stage.spec) if observer is not None else None
        # (statistics alone: the record itself, one attribute read fewer per count)
        stage.probe = _Probe(record, probe) if probe is not None else record
        # Same slots: only push and flush differ. Statistics alone count inline (a
        # method call per item would cost ~5% of the fastest pipeline's throughput).
        calls_coroutines = getattr(stage.start, "__func__", None) is Stage.call_coroutine
        stage.__class__ = (_OBSERVED if probe is not None else _COUNTED)[type(stage)]
        if record is not None:
            record.counted_at_call = type(stage) is _CountedSingle
        stage.start = stage.call_coroutine if calls_coroutines else stage.call
        if probe is not None:  # told of every item and call: nothing is fused
            stage.chain = None
            stage.plain = False
            stage.downstream = _Counted(stage.downstream, probe.items_out)
            stage.executor = ObservedExecutor(stage.executor, probe)
        if index == last and stats is not None:
            stage.downstream = _count_results(stage.downstream, stats)
        stage.policy.on_retry = _both(
            record.retried_once if record else None, probe.retried if probe else None
        )
        if record is not None:
            stage.policy.on_final = record.outcome
    run.window.on_wait = _both(
        stats.room_waited if stats else None, observer.waited_for_room if observer else None
    )
    if stats is not None:
        stats.attach(run)


def _both(first: Callable[..., None] | None, second: Callable[..., None] | None) -> Any:
    if first is None or second is None:
        return first or second

    def both(*args: Any) -> None:
        first(*args)
        second(*args)

    return both


class _Probe:
    """What an observed stage reports to: its statistics, a user's observer, or both."""

    __slots__ = ("observer", "record")

    def __init__(self, record: StageRecord | None, observer: StageObserver | None) -> None:
        self.record = record
        self.observer = observer

    def arrived(self, item: Any) -> None:
        if self.record is not None:
            self.record.items_in += 1
            if type(item) is Failure:
                self.record.failures_in += 1
        if self.observer is not None:
            self.observer.items_in(1)


class _ObservedSingle(SingleStage):
    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        self.probe.arrived(item)
        SingleStage.push(self, item, node)


class _ObservedBatch(BatchStage):
    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        self.probe.arrived(item)
        BatchStage.push(self, item, node)

    def flush(self) -> None:
        _count_batch(self.probe.record, self)
        BatchStage.flush(self)


_OBSERVED: dict[type, type] = {SingleStage: _ObservedSingle, BatchStage: _ObservedBatch}


class _CountedSingle(SingleStage):
    """Statistics only: items counted where calls are made, inline.

    Counting in ``push`` would miss plain stages fused behind this one and the pump's
    direct call of the first stage, and a method call per item costs ~5% of the fastest
    pipeline's throughput; so :meth:`call` and :meth:`call_coroutine` are
    ``Stage.call`` and ``Stage.call_coroutine`` with a count added (keep them in step:
    the model properties run with statistics on and off). Items waiting for a slot are
    added when the snapshot is taken; ``push`` counts the Failures passing through."""

    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        if type(item) is Failure:
            record = self.probe
            record.items_in += 1
            record.failures_in += 1
            self.downstream.push(item, node)
        elif self.running < self.limit:
            self.start(item, node)
        else:
            self.inflight += 1
            self.pending.append((item, self.place(node)))

    def call(self, item: Any, node: Any) -> None:
        context = self.context.copy()
        stage: Stage = self
        stage.probe.items_in += 1
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
            stage.probe.items_in += 1
        if kind == AWAIT:
            if type(result) is not CoroutineType:
                if stage.futures is not None:
                    await_future(stage, result, context, item, node)
                    return
                result = as_awaitable(result)
            go_async(stage, result, context, item, node)
            return
        if kind:
            stage.emit_kind(kind, result, node)
        else:
            stage.downstream.push(result, node)
        if stage.is_batch:
            stage.call_done(item)

    def call_coroutine(self, item: Any, node: Any) -> None:
        self.probe.items_in += 1
        try:
            coro = self.call_fn(item)
        except Exception as exc:
            self.failed(exc, item, node, self.context.copy())
            return
        except BaseException as exc:
            self.crashed(exc, item)
            return
        if type(coro) is CoroutineType:
            go_async(self, coro, self.context.copy(), item, node)
        else:
            self.emit_result(coro, item, node)


class _CountedBatch(BatchStage):
    """Statistics only: items counted as they arrive, batches as they are flushed."""

    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        record = self.probe
        record.items_in += 1
        if type(item) is Failure:
            record.failures_in += 1
        BatchStage.push(self, item, node)

    def flush(self) -> None:
        _count_batch(self.probe, self)
        BatchStage.flush(self)


def _count_batch(record: StageRecord | None, stage: BatchStage) -> None:
    if record is not None and stage.acc:
        record.batches += 1
        record.batch_items += len(stage.acc)
        record.timer_flushes += stage._expired


_COUNTED: dict[type, type] = {SingleStage: _CountedSingle, BatchStage: _CountedBatch}


class _DeliveredAsCompleted(Output):
    """Statistics: the run's results counted as they reach the consumer, inline (the
    sink's class is swapped: a wrapper's extra call per result cost fused plain stages
    ~5% of their throughput). Keep ``push`` in step with ``Output.push``."""

    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        run = self.run
        stats: Any = run.stats  # (set: this sink is swapped in by statistics)
        stats.delivered += 1
        if stats.first_result is None:
            stats.first_result = stats.now()
        self.ready.append(item)
        if run.consumer is not None:
            run.wake_consumer()


class _DeliveredInOrder(OrderedOutput):
    """Statistics: as :class:`_DeliveredAsCompleted`, for ``OrderedOutput.push``."""

    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        run = self.run
        stats: Any = run.stats  # (set: this sink is swapped in by statistics)
        stats.delivered += 1
        if stats.first_result is None:
            stats.first_result = stats.now()
        if node is not None:
            self.list.resolve(node, item)
        elif self.list.head.next is None:
            run.ready.append(item)
            if run.consumer is not None:
                run.wake_consumer()
        else:
            self.list.append().value = item


_DELIVERED: dict[type, type] = {Output: _DeliveredAsCompleted, OrderedOutput: _DeliveredInOrder}


def _count_results(sink: Sink, stats: Collector) -> Sink:
    """The last stage's sink, counting the run's results (statistics)."""
    if type(sink) in _DELIVERED:
        sink.__class__ = _DELIVERED[type(sink)]
        return sink
    return _Delivered(sink, stats)  # (a user's observer wrapped it: count around that)


class _Delivered(Sink):
    """Counts the run's results on their way to the consumer (statistics)."""

    __slots__ = ("inner", "stats")

    def __init__(self, inner: Sink, stats: Collector) -> None:
        self.inner = inner
        self.stats = stats

    def push(self, item: Any, node: Any) -> None:
        stats = self.stats
        stats.delivered += 1
        if stats.first_result is None:
            stats.first_result = stats.now()
        self.inner.push(item, node)


class _Counted(Sink):
    __slots__ = ("count", "inner")

    def __init__(self, inner: Sink, count: Callable[[int], None]) -> None:
        self.inner = inner
        self.count = count

    def push(self, item: Any, node: Any) -> None:
        self.count(1)
        self.inner.push(item, node)


class ObservedExecutor:
    """Times every call another executor makes, and reports how it ended."""

    def __init__(self, inner: Executor, probe: StageObserver) -> None:
        self.inner = inner
        self.probe = probe

    async def open(self, stack: Any, shared: dict[Any, Any]) -> Executor:
        """Open a run-scoped inner executor (see ``_threads.RunThreads``), observed."""
        inner = self.inner
        if run_scoped(inner):
            inner = await inner.open(stack, shared)
        return ObservedExecutor(inner, self.probe)

    @property
    def chunker(self) -> Any:
        """The inner executor's chunks (see ``_stats``), if it sends work away."""
        return figures(self.inner)

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        call = self.inner.bind(invoke)
        probe = self.probe
        clock = time.perf_counter

        async def finish(awaitable: Any, started: float) -> Any:
            try:
                result = await as_awaitable(awaitable)
            except BaseException as exc:
                probe.call_ended(clock() - started, exc)
                raise
            probe.call_ended(clock() - started, None)
            return result

        def observed(item: Any) -> Any:
            probe.call_started()
            started = clock()
            try:
                result = call(item)
            except BaseException as exc:
                probe.call_ended(clock() - started, exc)
                raise
            if kind_of(type(result)) == AWAIT:
                wrapper = finish(result, started)
                if type(result) is CoroutineType:
                    # A wrapper closed before it starts (the run ended) never awaits the
                    # call's coroutine: close that too, or it warns "never awaited".
                    weakref.finalize(wrapper, result.close)
                return wrapper
            probe.call_ended(clock() - started, None)
            return result

        return observed

    def __repr__(self) -> str:
        return f"observed {self.inner!r}"
