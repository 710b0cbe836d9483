"""A run's statistics: ``stream.stats``, a snapshot you can read during or after a run.

Every run collects them unless ``PipelineContext(statistics=False)``. What is exact and
what is sampled:

* **Exact:** items into and out of each stage (out = what the next stage received, or the
  results of the last stage), retries, calls that failed for good (``failed``, ``skipped``,
  ``emitted`` as a Failure), calls whose function passed nothing on (``dropped``: ``None``,
  ``[]``, an empty generator); batches, their mean size, how many ``max_wait`` flushed,
  the items the remainder rule dropped (``remainder_dropped``); result cache hits and
  misses; circuit breaker openings and refused calls (``circuit_opened``, ``_rejected``);
  the run's window (``max_in_flight``, raised to fit batches); results, time to the first,
  items per second, how long the window held the input back, and the input items it
  admits at once (``input_admitted_at_once``: ``max_in_flight``, or fewer when
  ``max_in_flight_bytes`` bounds items of ``input_item_bytes`` each).
* **Now:** calls in flight, items waiting for a slot, an adaptive limit's value.
* **Sampled** every 10 ms at first (the interval grows to 1/256 of the run so far, at most
  1 s; each sample counts for its interval): each stage's busy share (a call in flight) and
  at-limit share (every slot taken, or items waiting for one), the reorder buffer's peak,
  and call latency (p50, p95, p99 within ±9%; max of the calls timed): the next call
  after each sample is timed, so a fast stage has hundreds of calls timed per second,
  a slow one every call.
* ``peak_rss_bytes``: the process's peak resident memory, as the OS reports it.
* ``StageStats.offload`` (calls sent to other processes, in chunks): time in the workers'
  calls against time pickling and unpickling, exact per chunk (:class:`Offload`).
* **The event loop** (sampled): each timed call's time on the loop, step by step (a
  plain call; each resumption of an ``async def``'s coroutine; each value of a
  generator expanded on the loop; the hand-off of a call sent elsewhere): a stage's
  ``loop_share``, estimated from its timed calls' mean times its calls (a stage's first
  8 calls on the loop are all timed). The sampling timer is the loop's lag probe: how
  late its ticks ran (``loop_lag_share``, ``loop_lag_max``). A tick 0.25 s late logs a
  warning once per run, naming the stage that holds the loop most so far.

**The bottleneck** (:attr:`RunStats.bottleneck`), in this order. For a run of 50 ms or
more, the event loop first (a blocked loop runs few ticks: these need no count of
samples):

1. a stage that **blocks the event loop**: its code held it at least half the run, in
   steps of 100 µs or more on average. Run it with ``executor="thread"`` (blocking I/O)
   or ``executor="process"`` (CPU work).
2. **the event loop**, saturated (``where == "event loop"``): its timers ran late at
   least half the time (or a quarter, with the stages' code holding it half the run):
   many short steps. Lower ``max_in_flight``, or do more in each step.

Then, from 5 samples on:

3. a stage **at its limit** (all its concurrency slots taken, its thread pool's size
   reached, items waiting for a slot, or the window full with the stage holding half
   of it, below its own limit) in at least half the samples: the one at a limit most
   often. Raise its ``concurrency_limit`` (its pool's size, or ``max_in_flight``, as
   the verdict says) or make its calls faster.
4. **the consumer**, if results were ready and not taken in at least half the samples:
   the code reading the stream is slower than the pipeline.
5. **the input**, if no stage had anything to do in at least half the samples: the
   pipeline waits for items (a slow source).
6. otherwise the **busiest** stage (a call in flight in the most samples).

A run under ~50 ms names no bottleneck.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ._bottleneck import LONG_LAG, bottleneck_of
from ._mermaid import run_chart

__all__ = ["Bottleneck", "Latency", "Offload", "RunStats", "StageStats"]


@dataclasses.dataclass(frozen=True)
class Latency:
    """Call latency of a stage, in seconds (``None`` until a call was timed)."""

    samples: int = 0
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    buckets: tuple[tuple[float, int], ...] = ()
    """The latency histogram: ``(upper bound in seconds, calls)`` per non-empty log bucket
    (4 to a doubling), not cumulative; a call there took from 0.84 (2**-0.25) to 1 bound."""


@dataclasses.dataclass(frozen=True)
class Offload:
    """Calls sent to other processes (``executor="process"``, a process pool, Dask, or
    ``"auto"`` once it chose processes), in chunks: where their time went.

    ``work_seconds`` is the workers' time in the function; ``transfer_seconds`` pickling
    and unpickling items, results and the function, on both sides; ``queued_seconds``
    the rest of the chunks' round trips: pipes, the pool's queue, a worker still busy
    with the chunk before. All are sums over chunks (with several workers: more than the
    run's elapsed time). ``chunk_size`` is the size chosen last.
    """

    chunks: int
    items: int
    work_seconds: float
    transfer_seconds: float
    queued_seconds: float
    chunk_size: int

    @property
    def transfer_share(self) -> float | None:
        """Transfer as a share of transfer and work (how much the hand-off costs)."""
        spent = self.work_seconds + self.transfer_seconds
        return self.transfer_seconds / spent if spent > 0 else None


@dataclasses.dataclass(frozen=True)
class StageStats:
    """One stage of a run (see the module's docstring for what is exact or sampled)."""

    name: str
    batch: bool
    executor: str
    limit: int | None
    items_in: int
    items_out: int
    in_flight: int
    waiting_for_slot: int
    failures_passed: int
    retried: int
    skipped: int
    emitted: int
    failed: int
    latency: Latency
    busy_seconds: float
    busy_share: float | None
    at_limit_share: float | None
    batches: int | None
    mean_batch_size: float | None
    max_wait_flushes: int | None
    offload: Offload | None = None
    items_per_second: float | None = None  # items out / the run's elapsed time
    rate_limit: str | None = None  # e.g. "10 calls per 1 s"
    dropped: int = 0
    """Calls whose function passed nothing on: it returned ``None`` or an empty list, or its
    generator yielded nothing (items skipped by the error policy are ``skipped``)."""
    remainder_dropped: int | None = None
    """Batch stages: items the remainder rule dropped (fewer than ``min_size`` left over at
    the end of the input); ``None`` for single stages."""
    pool_size: int | None = None  # its thread pool's size ("thread:N"): a limit, as `limit`
    loop_seconds: float = 0.0
    """Seconds its code held the event loop (its timed calls' mean times its calls: see
    the module's docstring); ``loop_share`` of the run's elapsed time."""
    loop_share: float | None = None
    loop_call_seconds: float | None = None  # the mean of its timed calls' time on the loop
    loop_step_seconds: float | None = None  # ... of one step (a resumption, a value)
    window_capped_share: float | None = None  # window full, it half of it, below its limit
    cache_hits: int | None = None  # items its result cache answered; None: no cache=
    cache_misses: int | None = None  # items its result cache did not hold (called)
    concurrency_limit_now: int | None = None  # concurrency_limit="auto": its limit now (= limit)
    circuit_opened: int | None = None  # times its calls opened its breaker; None: none
    circuit_rejected: int | None = None  # its calls the open breaker refused (or held)
    open_keys: int | None = None  # a keyed batch stage's keys with an open batch; else None
    # A stage in a branch of a parallel() or route() stage: that stage's index in
    # ``RunStats.stages``, and the branch's number (None: a stage of the run's own line).
    branch_of: int | None = None
    branch: int | None = None


@dataclasses.dataclass(frozen=True)
class Bottleneck:
    """What limits a run's throughput: a stage, ``"consumer"`` or ``"input"``, and why."""

    where: str
    why: str
    share: float

    def __str__(self) -> str:
        return f"bottleneck: {self.where} — {self.why}"


@dataclasses.dataclass(frozen=True)
class RunStats:
    """A consistent snapshot of one run's statistics (``stream.stats``)."""

    enabled: bool = True
    finished: bool = False
    elapsed: float = 0.0
    results: int = 0
    done_earlier: int = 0  # input items a checkpoint skipped, done by an earlier run
    time_to_first_result: float | None = None
    items_per_second: float | None = None
    peak_reorder_buffer: int = 0  # results done, held back for order (sampled)
    input_held_back_seconds: float = 0.0
    input_item_bytes: float | None = None  # the input items' mean weight, when weighed
    input_admitted_at_once: int | None = None  # the window's bound on the input's items
    input: dict[str, Any] | None = None  # the input's own figures(), e.g. a file source's
    max_in_flight: int | None = None
    """The run's window: ``max_in_flight``, or more when raised to hold a full batch of
    every batch stage at once (the sum of their ``max_size``; the run logs it)."""
    peak_rss_bytes: int | None = None
    samples: int = 0
    window_full_share: float | None = None
    consumer_slow_share: float | None = None
    starved_share: float | None = None
    loop_lag_seconds: float = 0.0
    """Seconds the sampling timer ran late, summed: the event loop was blocked (a call
    holding it) or saturated (more work ready than it gets through) that long."""
    loop_lag_share: float | None = None
    """``loop_lag_seconds`` as a share of the sampled time."""
    loop_lag_max: float = 0.0
    """The longest the timer ran late, in seconds: the longest the loop was blocked."""
    stages: tuple[StageStats, ...] = ()

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any] | None, enabled: bool = True) -> RunStats:
        if snapshot is None:
            return cls(enabled=enabled)
        stages: list[StageStats] = []
        _add_stages(stages, snapshot["stages"], None, None, "")
        return cls(enabled=enabled, **{**snapshot, "stages": tuple(stages)})

    def stage(self, name: str) -> StageStats:
        """The first stage of that task name."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    @property
    def bottleneck(self) -> Bottleneck | None:
        """What limits the run (see the rule in the module's docstring)."""
        verdict = bottleneck_of(self)
        return None if verdict is None else Bottleneck(*verdict)

    def to_dict(self) -> dict[str, Any]:
        """Everything, as JSON-serialisable data (the bottleneck included)."""
        data = dataclasses.asdict(self)
        neck = self.bottleneck
        data["bottleneck"] = None if neck is None else dataclasses.asdict(neck)
        return data

    def to_mermaid(self) -> str:
        """This snapshot as a Mermaid flowchart (``flowchart LR``), as text.

        The chart of ``pipeline.to_mermaid()`` with this run's figures: nodes ``input``
        (with how long the window held the input back, if at all), ``s0``, ``s1``, ...
        per stage (task name; ``single`` or ``batch`` with the number of batches and
        their mean size; the executor if not inline; the concurrency limit and the rate
        limit if any; call latency p50 and p95; busy share; its share of the run on the
        event loop, if 5% or more; counts of failed, skipped, emitted and retried
        calls if any) and ``output`` (results, elapsed seconds, items per second;
        ``running`` if the run is not finished). Each edge is labelled with the exact
        number of items that crossed it. The :attr:`bottleneck` (a stage, the input, or
        ``output`` for the consumer) gets a ``bottleneck`` line and ``class ...
        bottleneck`` (a red border); no bottleneck, no class. With statistics off, a
        one-node chart that says so.
        """
        return run_chart(self)

    def __str__(self) -> str:
        if not self.enabled:
            return "statistics are off for this run (PipelineContext(statistics=False))"
        head = ("stage", "in", "out", "now", "wait", "retry", "fail", "p50", "p95", "max")
        rows = [(*head, "busy", "loop")]
        for s in self.stages:
            lat = s.latency
            failed = s.failed + s.skipped + s.emitted
            auto = "" if s.concurrency_limit_now is None else f" [auto: {s.concurrency_limit_now}]"
            rows.append(
                (
                    s.name + (" [batch]" if s.batch else "") + auto,
                    str(s.items_in),
                    str(s.items_out),
                    str(s.in_flight),
                    str(s.waiting_for_slot),
                    str(s.retried),
                    str(failed),
                    _secs(lat.p50),
                    _secs(lat.p95),
                    _secs(lat.max),
                    "-" if s.busy_share is None else f"{s.busy_share:.0%}",
                    "-" if s.loop_share is None else f"{s.loop_share:.0%}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(_cells(row, widths)) for row in rows]
        for s in self.stages:
            off = s.offload
            if off is not None and off.chunks:
                share = off.transfer_share
                lines.append(
                    f"{s.name} on {s.executor}: {off.items} items in {off.chunks} chunks, "
                    f"work {off.work_seconds:.2f} s, transfer {off.transfer_seconds:.2f} s"
                    f"{'' if share is None else f' ({share:.0%})'}, queued "
                    f"{off.queued_seconds:.2f} s"
                )
        rate = "-" if self.items_per_second is None else f"{self.items_per_second:,.0f}/s"
        first = _secs(self.time_to_first_result)
        state = "finished" if self.finished else "running"
        lines.append(
            f"{self.results} results in {self.elapsed:.2f} s ({rate}, first after {first}; {state})"
        )
        if self.done_earlier:
            lines.append(f"{self.done_earlier:,} done earlier, skipped (the run's checkpoint)")
        read = self.input or {}
        if read.get("bytes_read") is not None:
            speed = read.get("mb_per_second")
            lines.append(
                f"input: {read['bytes_read'] / 1e6:,.1f} MB read"
                + ("" if speed is None else f" at {speed:,.1f} MB/s")
                + ("" if read.get("progress") is None else f" ({read['progress']:.0%})")
            )
        for s in self.stages:
            if s.remainder_dropped:
                lines.append(
                    f"{s.name}: {s.remainder_dropped} dropped as the remainder "
                    f"(fewer than min_size left at the end of the input)"
                )
        if self.loop_lag_max >= LONG_LAG:
            lines.append(
                f"event loop: blocked up to {_secs(self.loop_lag_max)} at a time, late "
                f"{self.loop_lag_share or 0.0:.0%} of the run: the latencies above include "
                f"the waits for it"
            )
        neck = self.bottleneck
        lines.append(str(neck) if neck is not None else "bottleneck: - (run too short to tell)")
        return "\n".join(lines)


def _add_stages(
    into: list[StageStats],
    figures: list[dict[str, Any]],
    branch_of: int | None,
    branch: int | None,
    prefix: str,
) -> None:
    """The stages of a run's snapshot, each followed by its branches' (``parallel``,
    ``route``: named ``"<stage>/<branch stage>"``, with ``branch_of`` and ``branch``)."""
    for one in figures:
        at = len(into)
        into.append(
            StageStats(
                **{
                    **{key: value for key, value in one.items() if key != "branches"},
                    "name": prefix + one["name"],
                    "latency": _latency(one["latency"]),
                    "offload": None if one["offload"] is None else Offload(**one["offload"]),
                    "branch_of": branch_of,
                    "branch": branch,
                }
            )
        )
        for number, stages in enumerate(one.get("branches", ())):
            _add_stages(into, stages, at, number, f"{prefix}{one['name']}/")


def _latency(data: dict[str, Any]) -> Latency:
    """A stage's latency; its buckets as tuples (a snapshot has lists, as JSON would)."""
    buckets = tuple((float(bound), int(count)) for bound, count in data.get("buckets", ()))
    return Latency(**{**data, "buckets": buckets})


def _cells(row: tuple[str, ...], widths: list[int]) -> list[str]:
    """The first column to the left, figures to the right."""
    return [
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
    ]


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"
