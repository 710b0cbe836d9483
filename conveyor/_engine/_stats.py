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
  (``_loop.TimedCall``) until that one call is made.
* **The event loop, sampled:** each timed call also measures how long the stage's code
  held the loop, step by step, and the timer is the loop's lag probe (``_loop``).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from ._calls import INLINE
from ._histogram import Histogram
from ._loop import LagProbe, LoopTime, TimedCall, culprit
from ._observe import ObservedExecutor
from ._plan import UNLIMITED
from ._registry import offload
from ._threads import RunThreads, ThreadPool

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
        "busy_seconds",
        "cap",
        "capped",
        "failures_in",
        "full",
        "items_in",
        "latency",
        "loop",
        "stage",
        "timed",
        "timer_flushes",
    )

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        # Items counted when their call is made (``Stage.call``), plus the Failures passed
        # through; those waiting for a slot are added at the snapshot. A batch stage
        # counts items as they arrive.
        self.items_in = 0
        self.failures_in = 0  # Failures from earlier stages, passed through untouched
        self.batches = self.batch_items = self.timer_flushes = 0
        self.latency = Histogram()
        self.busy_seconds = self.full = 0.0  # seconds with a call in flight / at the limit
        self.capped = 0.0  # seconds the window (max_in_flight) held its calls back instead
        self.timed: Any = None  # the timing call_fn, while armed
        self.loop = LoopTime(_unobserved(stage.executor) is INLINE)  # (see _loop)
        self.cap = stage.limit  # its calls at once: its limit, or its pool's if smaller

    def passed_through(self) -> None:
        """A Failure from an earlier stage reached this stage: passed on as is."""
        self.items_in += 1
        self.failures_in += 1

    def flushed(self, size: int, expired: bool) -> None:
        """A batch of ``size`` items was sent off (``expired``: by ``max_wait``)."""
        self.batches += 1
        self.batch_items += size
        self.timer_flushes += expired


class Collector:
    """The statistics of one run (see the module's docstring)."""

    def __init__(self) -> None:
        self.run: Run | None = None
        self.records: list[StageRecord] = []
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
        self.lag = LagProbe()
        self._timer: Any = None
        self.branches: list[tuple[Stage, Collector]] = []  # (see ``branch``)

    # -- wiring (the run, as it builds its stages) ------------------------------------

    def record(self, stage: Stage) -> StageRecord:
        record = StageRecord(stage)
        self.records.append(record)
        return record

    def branch(self, stage: Stage, label: str) -> Collector:
        """The statistics of a branch run of ``stage`` (``_branch``), in this run's."""
        child = Collector()
        self.branches.append((stage, child))
        return child

    def attach(self, run: Run) -> None:
        """Start sampling ``run`` (once its stages have their records)."""
        self.run = run
        place = {id(stage): index for index, stage in enumerate(run.stages)}
        self.records.sort(key=lambda record: place[id(record.stage)])  # (built backwards)
        self.started = self.now()
        self.last_tick = run.loop.time()
        self.lag.due = self.last_tick + TICK
        self._timer = run.loop.call_later(TICK, self._tick)
        run.on_over.append(lambda _: self._end())

    def now(self) -> tuple[float, float]:
        assert self.run is not None
        return time.perf_counter(), self.run.loop.time()

    def bound(self) -> None:
        """The stages are bound to this run's inputs (their executors opened): time each
        stage's first call, and read the size of its thread pool."""
        for record in self.records:
            record.loop.opened(_unobserved(record.stage.executor) is INLINE)
            workers = _pool_size(record.stage.executor) or UNLIMITED
            record.cap = min(record.stage.limit, workers)
            self._arm(record)

    def first_taken(self) -> None:
        """(The ledger's.) The consumer took the run's first result."""
        if self.first_result is None:
            self.first_result = self.now()

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
        self.lag.ticked(now, dt, self._culprit)
        ledger = run.ledger
        window_full = ledger.tokens >= ledger.admit
        crowd = max(1, ledger.admit // 2)  # calls that hold half the window
        working = False
        for record in self.records:
            stage = record.stage
            gated = _gated(stage)
            running = stage.running
            if running > gated:
                record.busy_seconds += dt
                working = True
            if running >= min(record.cap, stage.limit) or _waiting(stage):
                record.full += dt
                working = True
            elif window_full and running >= crowd:
                record.capped += dt  # below its own limit: the window holds it back
            if record.timed is None or stage.call_fn is not record.timed:
                self._arm(record)
        if not working:
            self.starved += dt
        if window_full:
            self.window_full += dt
        if ledger.can_drain():
            self.consumer_slow += dt
        order = run.final_order
        if order is not None and not self.ticks & 7:  # (a walk of the list: 1 tick in 8)
            self.peak_reorder = max(self.peak_reorder, order.held())
        interval = min(MAX_TICK, max(TICK, (now - self.started[1]) / SAMPLES_PER_RUN))
        self.lag.due = now + interval
        self._timer = run.loop.call_later(interval, self._tick)

    def _culprit(self, late: float) -> str:
        """Who held the loop ``late`` seconds: the stage that holds it most so far, if
        its timed calls account for half of that, or of the run (see ``_loop``)."""
        elapsed = _span(self.started, self.now())
        held = [(self._on_loop(record), record) for record in self.records]
        seconds, record = max(held, key=lambda pair: pair[0], default=(0.0, None))
        if record is None or (seconds < 0.5 * late and seconds < 0.5 * elapsed):
            return culprit(None, None)
        return culprit(record.stage.name, record.loop.call_seconds, record.loop.inline)

    def _on_loop(self, record: StageRecord) -> float:
        """Seconds the stage's code held the loop, estimated from its calls (a batch
        stage's: its batches)."""
        stage = record.stage
        calls = record.batches if stage.is_batch else record.items_in - record.failures_in
        return record.loop.estimate(calls)

    def _arm(self, record: StageRecord) -> None:
        """Time the stage's next call (see the module's docstring)."""

        def made() -> None:  # (the timed call is being made: the next ones are not)
            record.timed = None
            if record.loop.warm:  # (a stage's first calls are all timed: see _loop)
                record.loop.warm -= 1
                self._arm(record)

        record.timed = TimedCall(record.stage, record.latency.add, record.loop, made)
        record.stage.time_next_call(record.timed)

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
        ins = [r.items_in + (0 if r.stage.is_batch else _waiting(r.stage)) for r in self.records]
        delivered = 0 if run is None else run.ledger.delivered
        for index, record in enumerate(self.records):
            stage = record.stage
            following = ins[index + 1] if index + 1 < len(ins) else None
            latency = record.latency
            stages.append(
                {
                    "name": stage.name,
                    "batch": stage.is_batch,
                    "executor": repr(stage.executor),
                    "limit": None if stage.limit >= UNLIMITED else stage.limit,
                    "concurrency_limit_now": None if stage.adaptive is None else stage.limit,
                    "rate_limit": _rate(stage),
                    "items_in": ins[index],
                    "items_out": delivered if following is None else following,
                    "in_flight": stage.running - _gated(stage),
                    "waiting_for_slot": _waiting(stage),
                    "failures_passed": record.failures_in,
                    "retried": stage.account.retried,
                    "skipped": stage.account.skipped,
                    "emitted": stage.account.emitted,
                    "failed": stage.account.failed,
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
                        (delivered if following is None else following) / elapsed
                        if elapsed > 0
                        else None
                    ),
                    "pool_size": _pool_size(stage.executor),
                    "loop_seconds": self._on_loop(record),
                    "loop_call_seconds": record.loop.call_seconds,
                    "loop_step_seconds": record.loop.step_seconds,
                    "loop_share": min(1.0, self._on_loop(record) / elapsed) if elapsed else None,
                    "window_capped_share": share(record.capped),
                    "busy_seconds": record.busy_seconds,
                    "busy_share": share(record.busy_seconds),
                    "at_limit_share": share(record.full),
                    "batches": record.batches if stage.is_batch else None,
                    "mean_batch_size": (
                        record.batch_items / record.batches if record.batches else None
                    ),
                    "max_wait_flushes": record.timer_flushes if stage.is_batch else None,
                    "open_keys": getattr(stage, "open_keys", None),  # (keyed batch stages)
                    "remainder_dropped": (
                        stage.account.remainder_dropped if stage.is_batch else None
                    ),
                    "dropped": stage.account.dropped_by_function,
                    "cache_hits": None if stage.cache is None else stage.cache.hits,
                    "cache_misses": None if stage.cache is None else stage.cache.misses,
                    "circuit_opened": None if stage.breaker is None else stage.breaker.opened,
                    "circuit_rejected": None if stage.breaker is None else stage.breaker.rejected,
                    "offload": offload(stage.executor),
                    # (its branch runs' stages, each run's list: see ``_branch``)
                    "branches": [c.snapshot()["stages"] for o, c in self.branches if o is stage],
                }
            )
        return {
            "elapsed": elapsed,
            "finished": run is not None and _over(run),
            "results": delivered,
            "done_earlier": 0 if run is None else run.ledger.done_earlier,
            "time_to_first_result": (
                None if self.first_result is None else _span(self.started, self.first_result)
            ),
            "items_per_second": delivered / elapsed if elapsed > 0 else None,
            "peak_reorder_buffer": self.peak_reorder,
            "input_held_back_seconds": self.waited_for_room,
            "input_item_bytes": None if run is None or run.weigher is None else run.weigher.mean,
            "input": _input_figures(run),
            "input_admitted_at_once": None if run is None else run.ledger.admit,
            "max_in_flight": None if run is None else run.ledger.limit,
            "peak_rss_bytes": _peak_rss(),
            "samples": self.ticks,
            "window_full_share": share(self.window_full),
            "consumer_slow_share": share(self.consumer_slow),
            "starved_share": share(self.starved),
            "loop_lag_seconds": self.lag.seconds,
            "loop_lag_share": share(self.lag.seconds),
            "loop_lag_max": self.lag.longest,
            "stages": stages,
        }


def _unobserved(executor: Any) -> Any:
    """A stage's own executor, inside the timing one of a user's observer (``_observe``)."""
    return executor.inner if isinstance(executor, ObservedExecutor) else executor


def _pool_size(executor: Any) -> int | None:
    """The size of conveyor's thread pool a stage runs on (``"thread:N"``), or None."""
    executor = _unobserved(executor)
    if isinstance(executor, (ThreadPool, RunThreads)):
        return executor.workers
    return None


def _span(start: tuple[float, float], end: tuple[float, float]) -> float:
    """Seconds from ``start`` to ``end``: by perf_counter (uvloop's loop time is cached per
    loop iteration, in whole milliseconds), unless the loop's time ran clearly ahead (a
    virtual clock, such as looptime's)."""
    real, on_loop = end[0] - start[0], end[1] - start[1]
    return max(0.0, on_loop if on_loop > real + 0.002 else real)


def _over(run: Run) -> bool:
    """Whether the run is over for its consumer: closed, or every result produced and
    taken (until then a slow consumer is part of the run)."""
    return run.closed or (run.finished and not run.ledger.can_drain())


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
    return None if limit is None else limit.describe()


def _gated(stage: Stage) -> int:
    """Items waiting for their turn under a rate limit that hold a slot (see ``_gate``)."""
    return stage.gate.held if stage.gate is not None else 0


def _waiting(stage: Stage) -> int:
    """Items waiting for a concurrency slot, or for their turn (rate, key, priority)."""
    return len(stage.pending) + (stage.gate.waiting if stage.gate is not None else 0)


def _peak_rss() -> int | None:
    """The process's peak resident memory in bytes (the OS's figure: process-wide)."""
    try:
        import resource  # (not on Windows)

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):  # pragma: no cover
        return None
    return peak if sys.platform == "darwin" else peak * 1024  # (Linux reports KiB)
