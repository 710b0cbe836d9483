"""A run's statistics: what the observer seam (``_observe``) counts, and what it samples.

Collected for every run unless ``PipelineContext(statistics=False)``; read as a plain
``dict`` by :meth:`Collector.snapshot` (``conveyor.stats`` turns it into ``RunStats``).

* **Counted exactly:** items into each stage (one increment per item, in the stage's
  observed twin); results handed to the consumer; retries and final outcomes (on the
  failure path only); batches and their sizes, and how many ``max_wait`` flushed.
* **Read when asked:** calls in flight and items waiting for a concurrency slot.
* **Sampled:** a timer reads each stage (busy, at its limit)
  and the run (window full, results waiting for the consumer, the reorder buffer), and
  arms each stage to time its next call. A fast stage has a few hundred calls timed per
  second, a slow one every call. Latencies go into a :class:`Histogram` of bounded size.
  An unsampled call costs nothing: the stage's ``call_fn`` is swapped for a timing one
  until that one call is made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._calls import INLINE, Answer, settle
from ._histogram import Histogram
from ._order import EMPTY, OPEN, PENDING

if TYPE_CHECKING:
    from ._run import Run
    from ._stage import Stage

TICK = 0.01
"""Seconds between two samples of a run's state at first (a sample costs a few µs)."""
SAMPLES_PER_RUN = 256
"""Then the interval grows with the run, to its length / this (so a long run, or one on a
virtual clock, is not sampled a hundred times a second), up to :data:`MAX_TICK`. Each
sample counts for the time since the one before."""
MAX_TICK = 1.0


class StageRecord:
    """One stage's counts (written by the seam) and samples (written by the ticks)."""

    __slots__ = (
        "batch_items",
        "batches",
        "busy",
        "counted_at_call",
        "emitted",
        "failed",
        "failures_in",
        "full",
        "items_in",
        "latency",
        "retried",
        "skipped",
        "stage",
        "timed",
        "timer_flushes",
    )

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.items_in = 0
        # Whether items are counted when their call is made (``_observe._CountedSingle``):
        # then those waiting for a slot are added at the snapshot. (Batch stages, and any
        # stage a user's observer watches, count items as they arrive.)
        self.counted_at_call = False
        self.failures_in = 0  # Failures from earlier stages, passed through untouched
        self.retried = self.skipped = self.emitted = self.failed = 0
        self.batches = self.batch_items = self.timer_flushes = 0
        self.latency = Histogram()
        self.busy = self.full = 0.0  # seconds with a call in flight / at the limit
        self.timed: Any = None  # the timing call_fn, while armed

    def outcome(self, action: str) -> None:
        """A call failed for good: ``"failed"``, ``"skipped"`` or ``"emitted"``."""
        setattr(self, action, getattr(self, action) + 1)

    def retried_once(self, error: BaseException, attempt: int) -> None:
        self.retried += 1


class Collector:
    """The statistics of one run (see the module's docstring)."""

    def __init__(self) -> None:
        self.run: Run | None = None
        self.records: list[StageRecord] = []
        self.delivered = 0
        # Moments as (perf_counter, loop time): see _span.
        self.started = (0.0, 0.0)
        self.first_result: tuple[float, float] | None = None
        self.ended: tuple[float, float] | None = None
        self.ticks = 0
        self.sampled = 0.0  # seconds the samples stand for
        self.last_tick = 0.0
        self.window_full = 0.0  # seconds with the window full
        self.consumer_slow = 0.0  # results ready, not taken
        self.starved = 0.0  # no stage had anything to do
        self.waited_for_room = 0.0
        self.peak_reorder = 0
        self._timer: Any = None

    # -- wiring (``_observe.instrument``) ----------------------------------------------

    def record(self, stage: Stage) -> StageRecord:
        record = StageRecord(stage)
        self.records.append(record)
        return record

    def attach(self, run: Run) -> None:
        """Start sampling ``run`` (once its stages have their records)."""
        self.run = run
        self.started = self.now()
        self.last_tick = run.loop.time()
        self._timer = run.loop.call_later(TICK, self._tick)
        run.on_over.append(lambda _: self._end())

    def now(self) -> tuple[float, float]:
        assert self.run is not None
        return time.perf_counter(), self.run.loop.time()

    def bound(self) -> None:
        """The stages are bound to this run's inputs: time each stage's first call."""
        for record in self.records:
            self._arm(record)

    def room_waited(self, seconds: float) -> None:
        self.waited_for_room += seconds

    # -- sampling ------------------------------------------------------------------------

    def _tick(self) -> None:
        run = self.run
        assert run is not None
        self._timer = None
        if _over(run):
            self._end()
            return
        self.ticks += 1
        now = run.loop.time()
        dt, self.last_tick = now - self.last_tick, now
        self.sampled += dt
        working = False
        for record in self.records:
            stage = record.stage
            if stage.running > _gated(stage):
                record.busy += dt
                working = True
            if stage.pending or stage.running >= stage.limit or _gated(stage):
                record.full += dt
                working = True
            if record.timed is None or stage.call_fn is not record.timed:
                self._arm(record)
        if not working:
            self.starved += dt
        window = run.window
        if window.tokens >= window.admit:
            self.window_full += dt
        if run.window.can_drain():
            self.consumer_slow += dt
        if not self.ticks & 7:  # (a walk of the reorder list: every 8th tick)
            self.peak_reorder = max(self.peak_reorder, _held_for_order(run))
        interval = min(MAX_TICK, max(TICK, (now - self.started[1]) / SAMPLES_PER_RUN))
        self._timer = run.loop.call_later(interval, self._tick)

    def _arm(self, record: StageRecord) -> None:
        """Time the stage's next call (see the module's docstring)."""
        stage = record.stage
        plain = stage.call_fn
        clock = time.perf_counter
        loop = stage.loop
        add = record.latency.add

        async def timed_coroutine(item: Any) -> Any:
            # The call is made inside this coroutine, so a coroutine closed before it
            # starts (the run ended) leaves no call behind, awaited or not.
            started, loop_started = clock(), loop.time()
            try:
                return (await settle(plain(item), None))[0]
            finally:
                seconds = clock() - started
                on_loop = loop.time() - loop_started
                # A virtual clock (looptime) moves the loop's time, not perf_counter's:
                # then the loop's is the call's time. (uvloop's loop time is in whole
                # milliseconds, so it is read only when it is clearly ahead.)
                add(on_loop if on_loop > seconds + 0.002 else seconds)

        def timed(item: Any) -> Any:
            if stage.call_fn is timed:
                stage.call_fn = plain
            record.timed = None
            if coroutines:
                return timed_coroutine(item)
            started = clock()
            try:
                result = plain(item)
            except BaseException:
                add(clock() - started)
                raise
            if isinstance(result, (asyncio.Future, Answer)):  # (settled on the loop)
                result.add_done_callback(lambda _: add(clock() - started))
            elif isinstance(result, concurrent.futures.Future):  # (on the pool's thread)
                result.add_done_callback(
                    lambda _: _on_loop(loop, functools.partial(add, clock() - started))
                )
            else:
                add(clock() - started)
            return result

        # An async def on the loop returns a coroutine; other calls are made now (work
        # sent off the loop is timed until its Future is done), so their order holds.
        coroutines = stage.spec.is_async and stage.executor is INLINE
        record.timed = stage.call_fn = timed

    def _end(self) -> None:
        run = self.run
        if self.ended is None and run is not None:
            self.ended = self.now()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- reading -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything collected so far, as plain data (a consistent copy)."""
        run = self.run
        if run is None:
            elapsed = 0.0
        else:
            elapsed = _span(self.started, self.ended if self.ended is not None else self.now())
        sampled = self.sampled

        def share(seconds: float) -> float | None:
            return min(1.0, seconds / sampled) if sampled > 0 else None

        stages = []
        # (items counted when their call is made: add those still waiting for a slot)
        ins = [r.items_in + (_waiting(r.stage) if r.counted_at_call else 0) for r in self.records]
        for index, record in enumerate(self.records):
            stage = record.stage
            following = ins[index + 1] if index + 1 < len(ins) else None
            latency = record.latency
            stages.append(
                {
                    "name": stage.name,
                    "batch": stage.is_batch,
                    "executor": repr(stage.executor),
                    "limit": None if stage.limit >= 1 << 62 else stage.limit,
                    "rate_limit": _rate(stage),
                    "items_in": ins[index],
                    "items_out": self.delivered if following is None else following,
                    "in_flight": stage.running - _gated(stage),
                    "waiting_for_slot": _waiting(stage),
                    "failures_passed": record.failures_in,
                    "retried": record.retried,
                    "skipped": record.skipped,
                    "emitted": record.emitted,
                    "failed": record.failed,
                    "latency": {
                        "samples": latency.count,
                        "mean": latency.total / latency.count if latency.count else None,
                        "p50": latency.quantile(0.50),
                        "p95": latency.quantile(0.95),
                        "p99": latency.quantile(0.99),
                        "max": latency.max if latency.count else None,
                        "buckets": latency.bucket_counts(),
                    },
                    "items_per_second": (
                        (self.delivered if following is None else following) / elapsed
                        if elapsed > 0
                        else None
                    ),
                    "busy_seconds": record.busy,
                    "busy_share": share(record.busy),
                    "at_limit_share": share(record.full),
                    "batches": record.batches if stage.is_batch else None,
                    "mean_batch_size": (
                        record.batch_items / record.batches if record.batches else None
                    ),
                    "max_wait_flushes": record.timer_flushes if stage.is_batch else None,
                    "remainder_dropped": getattr(stage, "remainder_dropped", None),
                    "dropped": stage.dropped - stage.policy.passed_nothing,
                    "offload": _offload(stage),
                }
            )
        return {
            "elapsed": elapsed,
            "finished": run is not None and _over(run),
            "results": self.delivered,
            "time_to_first_result": (
                None if self.first_result is None else _span(self.started, self.first_result)
            ),
            "items_per_second": self.delivered / elapsed if elapsed > 0 else None,
            "peak_reorder_buffer": self.peak_reorder,
            "input_held_back_seconds": self.waited_for_room,
            "input_item_bytes": None if run is None or run.weigher is None else run.weigher.mean,
            "input": _input_figures(run),
            "input_admitted_at_once": None if run is None else run.window.admit,
            "max_in_flight": None if run is None else run.window.limit,
            "peak_rss_bytes": _peak_rss(),
            "samples": self.ticks,
            "window_full_share": share(self.window_full),
            "consumer_slow_share": share(self.consumer_slow),
            "starved_share": share(self.starved),
            "stages": stages,
        }


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the run is long over
        loop.call_soon_threadsafe(callback)


def _span(start: tuple[float, float], end: tuple[float, float]) -> float:
    """Seconds from ``start`` to ``end``: by perf_counter (uvloop's loop time is cached per
    loop iteration, in whole milliseconds), unless the loop's time ran clearly ahead (a
    virtual clock, such as looptime's)."""
    real, on_loop = end[0] - start[0], end[1] - start[1]
    return max(0.0, on_loop if on_loop > real + 0.002 else real)


def _over(run: Run) -> bool:
    """Whether the run is over for its consumer: closed, or every result produced and
    taken (until then a slow consumer is part of the run)."""
    return run.closed or (run.finished and not run.window.can_drain())


def _held_for_order(run: Run) -> int:
    """Results done but held back for order in the run's final reorder list."""
    order = run.final_order
    held = 0
    node = None if order is None else order.head.next
    while node is not None:
        value = node.value
        if value is not PENDING and value is not OPEN and value is not EMPTY:
            held += 1
        node = node.next
    return held


def _input_figures(run: Run | None) -> dict[str, Any] | None:
    """What the input says of its reading (a source's ``figures()``: bytes read, MB/s,
    progress; see ``conveyor.sources``), or ``None``."""
    figures = getattr(run.source, "figures", None) if run is not None else None
    if not callable(figures):
        return None
    try:
        return dict(figures())
    except Exception:  # (an object's own figures() that fails: no figures, no crash)
        return None


def _rate(stage: Stage) -> str | None:
    limit = stage.spec.options.rate_limit
    return None if limit is None else f"{limit.calls} calls per {limit.per_seconds:g} s"


def _gated(stage: Stage) -> int:
    """Items waiting for their turn under a rate limit (each holds a slot)."""
    return len(stage.gate.queue) if stage.gate is not None else 0


def _waiting(stage: Stage) -> int:
    """Items waiting for a concurrency slot, or for their turn under a rate limit."""
    return len(stage.pending) + _gated(stage)


def _offload(stage: Stage) -> dict[str, Any] | None:
    """Work sent to other processes in chunks (``_chunks``): where its time went."""
    chunker = getattr(stage.executor, "chunker", None)
    if chunker is None:
        return None
    return {
        "chunks": chunker.chunks,
        "items": chunker.items,
        "work_seconds": chunker.work_total,
        "transfer_seconds": chunker.transfer_total,
        "queued_seconds": max(
            0.0, chunker.round_trip_total - chunker.work_total - chunker.transfer_total
        ),
        "chunk_size": chunker.size,
    }


def _peak_rss() -> int | None:
    """The process's peak resident memory in bytes (the OS's figure: process-wide)."""
    try:
        import resource  # (not on Windows)

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):  # pragma: no cover
        return None
    return peak if sys.platform == "darwin" else peak * 1024  # (Linux reports KiB)
