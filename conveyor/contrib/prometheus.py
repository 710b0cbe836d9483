"""Prometheus metrics from runs' statistics (``pip install 'conveyor[prometheus]'``).

:class:`PipelineMetrics` is a prometheus_client collector. The runs it tracks are read at
scrape time, from the statistics every run collects anyway (``stream.stats``), so a
tracked run costs nothing more while it runs. Metrics are labelled by ``pipeline`` (the
name given to :meth:`~PipelineMetrics.track`) and, per stage, ``stage``: the task's name,
with ``#2``, ``#3`` after a name that repeats in one pipeline.

* **Counters** add up every run tracked under a label: the runs that ended (finished,
  closed, or their stream garbage-collected), by their final figures, plus the runs in
  progress, by their figures at the scrape. Each series only goes up: a figure read
  while the run's thread is changing it is never reported below one reported before.
* **Gauges** are the runs in progress at the scrape (0 when none is), except
  ``stage_busy_ratio``: the share of the latest run (the one tracked last), in progress
  or ended.
* **The latency histogram** holds the *sampled* calls (see :mod:`conveyor.stats`), put
  in :data:`LATENCY_BUCKETS`: a call is counted under the first bound at or above the
  top of its log bucket, so never under a bound it exceeds, and under every bound at
  least 2**0.25 (1.19) times its latency. The sum is mean x calls timed.

Tracking never holds a stream, only its attributes while it lives (a weakref finalizer
lets them go when it is collected; an input that itself refers to the stream would
keep it alive). When a tracked stream is garbage-collected, its run's figures at that
moment are kept.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

try:
    from prometheus_client import REGISTRY, start_http_server
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import CollectorRegistry
except ImportError as exc:  # an optional dependency: say how to get it
    raise ImportError(
        "conveyor.contrib.prometheus needs prometheus-client: pip install 'conveyor[prometheus]'"
    ) from exc

from ..stats import RunStats, StageStats
from ..stream import AsyncStream

__all__ = ["LATENCY_BUCKETS", "PipelineMetrics", "start_http_server", "track"]

S = TypeVar("S", bound=AsyncStream[Any])
Labels = tuple[str, ...]
Series = tuple[str, Labels]  # (metric, label values)

LATENCY_BUCKETS: tuple[float, ...] = (
    *(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4),
    *(1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 25.0, 60.0),
)
"""The default ``le`` bounds of the latency histogram, in seconds (and ``+Inf``)."""

STAGE = ("pipeline", "stage")
OUTCOMES = ("failed", "skipped", "emitted")
COUNTERS: dict[str, tuple[str, Labels]] = {
    "runs": ("Tracked runs that ended (finished, closed, or garbage-collected).", ("pipeline",)),
    "results": ("Results handed to the code reading the stream.", ("pipeline",)),
    "stage_items_in": ("Items into the stage.", STAGE),
    "stage_items_out": (
        "Items out of the stage: what the next stage received, or the results.",
        STAGE,
    ),
    "stage_retries": ("Calls retried.", STAGE),
    "stage_failures": (
        "Calls that failed for good, by outcome: failed (the run failed), skipped, or "
        "emitted (as a Failure).",
        (*STAGE, "outcome"),
    ),
    "stage_batches": ("Batches the stage was called with (batch stages only).", STAGE),
    "stage_circuit_opened": (
        "Times the stage's calls opened its circuit breaker (stages with one only).",
        STAGE,
    ),
    "stage_circuit_rejected": (
        "Calls of the stage its open circuit breaker refused or held (stages with one only).",
        STAGE,
    ),
    "stage_busy_seconds": ("Seconds with a call of the stage in flight (sampled).", STAGE),
}

GAUGES: dict[str, tuple[str, Labels]] = {
    "runs_active": ("Tracked runs started and not ended.", ("pipeline",)),
    "stage_in_flight": ("Calls in flight now.", STAGE),
    "stage_waiting_for_slot": ("Items waiting for a concurrency slot now.", STAGE),
    "stage_busy_ratio": (
        "Share of the latest run's time with a call of the stage in flight (sampled).",
        STAGE,
    ),
    "stage_concurrency_limit": (
        'An adaptive concurrency limit (concurrency_limit="auto") now, summed over the '
        "runs in progress (stages with a fixed limit have no sample).",
        STAGE,
    ),
}


class PipelineMetrics:
    """A prometheus_client collector of the runs :meth:`track` is given (see the module's
    docstring for what each metric means).

    ``registry`` is where it registers itself (``None``: nowhere, register it yourself);
    ``namespace`` prefixes the metrics' names; ``buckets`` are the latency histogram's
    ``le`` bounds in seconds (ascending; ``+Inf`` is added). Thread-safe: runs are
    tracked on their event loops and scraped from the exporter's thread.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        namespace: str = "conveyor",
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets must ascend, each bound once: {buckets!r}")
        self._prefix = f"{namespace}_" if namespace else ""
        self._bounds = tuple(float(b) for b in buckets)
        self._lock = threading.Lock()
        self._runs: list[_Tracked] = []
        self._ended = _Figures(self._bounds)  # the runs that ended, summed
        self._high: dict[Series, float] = {}  # each series' value at the last scrape
        self._busy: dict[Labels, tuple[int, float]] = {}  # (run's number, share)
        self._tracked = 0
        if registry is not None:
            registry.register(self)

    def track(self, stream: S, pipeline: str) -> S:
        """Count ``stream``'s run under the label ``pipeline=pipeline``; return the
        stream, so ``track(pipeline(items), "crawl")`` can stand where the stream does.

        Raises ``ValueError`` for a stream already tracked here, or one whose statistics
        are off (``PipelineContext(statistics=False)``): it would report nothing.
        """
        if not isinstance(stream, AsyncStream):
            raise TypeError(f"track() takes a pipeline's stream, got {type(stream).__name__}")
        if not stream.stats.enabled:
            raise ValueError("this run's statistics are off; its metrics would all be empty")
        with self._lock:
            if any(run.state is vars(stream) for run in self._runs):
                raise ValueError("this stream is already tracked")
            self._tracked += 1
            self._runs.append(_Tracked(stream, pipeline, self._tracked))
        return stream

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (for the registry's name checks)."""
        return iter(self._families(_View(_Figures(self._bounds))))

    def collect(self) -> Iterator[Metric]:
        """Every metric, read now from the tracked runs (called at each scrape)."""
        with self._lock:
            return iter(self._families(self._read()))

    # -- reading -------------------------------------------------------------------------

    def _read(self) -> _View:
        """Fold the runs that ended into the totals, and add up the rest."""
        live: list[tuple[_Tracked, RunStats]] = []
        for run in list(self._runs):
            stats, ended = run.read()
            if stats.stages:  # (a run that never started has none)
                self._note_busy(run, stats)
            if ended:
                self._runs.remove(run)
                run.release()
                if stats.stages:
                    self._ended.add(run.pipeline, stats, ended=True)
            elif stats.stages:
                live.append((run, stats))
        view = _View(self._ended.copy())
        for run, stats in live:
            view.figures.add(run.pipeline, stats, ended=False)
        # (0 for every label known, rather than no sample, while nothing runs)
        gauges = view.gauges
        active, in_flight = gauges["runs_active"], gauges["stage_in_flight"]
        waiting, busy = gauges["stage_waiting_for_slot"], gauges["stage_busy_ratio"]
        for key in view.figures.latency:
            in_flight[key] = waiting[key] = active[key[:1]] = 0
        for run, stats in live:
            active[run.pipeline,] += 1
            for stage, s in _stages(stats):
                in_flight[run.pipeline, stage] += s.in_flight
                waiting[run.pipeline, stage] += s.waiting_for_slot
                if s.concurrency_limit_now is not None:
                    limits = gauges["stage_concurrency_limit"]
                    limits[run.pipeline, stage] = (
                        limits.get((run.pipeline, stage), 0) + s.concurrency_limit_now
                    )
        busy.update((key, share) for key, (_, share) in self._busy.items())
        return view

    def _note_busy(self, run: _Tracked, stats: RunStats) -> None:
        for stage, s in _stages(stats):
            key = (run.pipeline, stage)
            if s.busy_share is not None and run.number >= self._busy.get(key, (0, 0.0))[0]:
                self._busy[key] = (run.number, s.busy_share)

    def _rising(self, metric: str, labels: Labels, value: float) -> float:
        """``value``, or the series' last one if that was higher (see the docstring)."""
        series = (metric, labels)
        value = max(value, self._high.get(series, value))
        self._high[series] = value
        return value

    def _families(self, view: _View) -> list[Metric]:
        def name(metric: str) -> str:
            return self._prefix + metric

        figures = view.figures
        families: list[Metric] = []
        for metric, (doc, labels) in COUNTERS.items():
            counter = CounterMetricFamily(name(metric), doc, labels=labels)
            for (which, values), value in sorted(figures.counters.items()):
                if which == metric:
                    counter.add_metric(values, self._rising(metric, values, value))
            families.append(counter)
        for metric, (doc, labels) in GAUGES.items():
            gauge = GaugeMetricFamily(name(metric), doc, labels=labels)
            for key, value in sorted(view.gauges[metric].items()):
                gauge.add_metric(key, value)
            families.append(gauge)
        histogram = HistogramMetricFamily(
            name("stage_call_latency_seconds"),
            "Latency of the stage's calls, sampled: a share of the calls is timed.",
            labels=STAGE,
        )
        metric = "stage_call_latency_seconds"
        for key, (*counts, seconds) in sorted(figures.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                buckets.append((le, self._rising(metric, (*key, le), cumulative)))
            histogram.add_metric(key, buckets, self._rising(metric, (*key, "sum"), seconds))
        families.append(histogram)
        return families


class _Figures:
    """Counters and latency histograms, added up over runs."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counters: dict[Series, float] = {}
        # (pipeline, stage): calls per bucket (not cumulative; the last is +Inf), then the
        # seconds they took
        self.latency: dict[Labels, list[float]] = {}

    def copy(self) -> _Figures:
        figures = _Figures(self.bounds)
        figures.counters = dict(self.counters)
        figures.latency = {key: list(values) for key, values in self.latency.items()}
        return figures

    def count(self, metric: str, labels: Labels, value: float) -> None:
        self.counters[metric, labels] = self.counters.get((metric, labels), 0.0) + value

    def add(self, pipeline: str, stats: RunStats, ended: bool) -> None:
        """Add one run's figures (and count it as a run if it ``ended``)."""
        count = self.count
        count("runs", (pipeline,), 1 if ended else 0)
        count("results", (pipeline,), stats.results)
        for stage, s in _stages(stats):
            key = (pipeline, stage)
            count("stage_items_in", key, s.items_in)
            count("stage_items_out", key, s.items_out)
            count("stage_retries", key, s.retried)
            for outcome in OUTCOMES:
                count("stage_failures", (*key, outcome), getattr(s, outcome))
            if s.batches is not None:
                count("stage_batches", key, s.batches)
            if s.circuit_opened is not None:
                count("stage_circuit_opened", key, s.circuit_opened)
                count("stage_circuit_rejected", key, s.circuit_rejected or 0)
            count("stage_busy_seconds", key, s.busy_seconds)
            histogram = self.latency.setdefault(key, [0.0] * (len(self.bounds) + 2))
            for top, calls in s.latency.buckets:
                # the first bound at or above the log bucket's top (+Inf past the last)
                histogram[bisect.bisect_left(self.bounds, top)] += calls
            histogram[-1] += (s.latency.mean or 0.0) * s.latency.samples


class _View:
    """What one scrape reports: the counters, and the gauges (by metric, then labels)."""

    def __init__(self, figures: _Figures) -> None:
        self.figures = figures
        self.gauges: dict[str, dict[Labels, float]] = {metric: {} for metric in GAUGES}


class _Tracked:
    """One tracked run: its stream's attributes (not the stream), until it is counted.

    The figures are read from the stream's attributes as ``stream.stats`` reads them,
    never through the stream: a scrape's thread that held the stream, even for a moment,
    could be the one to drop it last, and a stream dropped mid-run cancels its run from
    the thread that drops it. When the stream is collected (a weakref's callback cannot
    reach it, but its attributes remain), its run's figures are read once more and the
    attributes let go, so tracking never keeps a run alive.
    """

    def __init__(self, stream: AsyncStream[Any], pipeline: str, number: int) -> None:
        self.pipeline = pipeline
        self.number = number  # the order of tracking: the latest run has the highest
        self.state: dict[str, Any] | None = vars(stream)
        self.final: RunStats | None = None  # the figures when the stream was collected
        self._finalizer = weakref.finalize(stream, self._gone)
        self._finalizer.atexit = False  # (nothing to keep at exit)

    def _gone(self) -> None:
        # (In whichever thread drops the stream, so no lock: ``final`` is set before the
        # attributes are let go, and ``read`` looks in that order.)
        state = self.state
        if state is not None:
            self.final = _stats_of(state)
            self.state = None

    def read(self) -> tuple[RunStats, bool]:
        """The run's figures now, and whether it has ended."""
        state = self.state
        if self.final is not None:
            return self.final, True
        assert state is not None  # (let go only once counted, or after ``final``)
        stats = _stats_of(state)
        return stats, stats.finished

    def release(self) -> None:
        """Stop watching the stream (its run has been counted)."""
        self._finalizer.detach()
        self.state = None


def _stats_of(state: dict[str, Any]) -> RunStats:
    """A stream's ``stats``, from its attributes (``AsyncStream.stats``: the collector is
    made when the run starts)."""
    collector = state.get("_stats")
    return RunStats.from_snapshot(None if collector is None else collector.snapshot())


def _stages(stats: RunStats) -> Iterator[tuple[str, StageStats]]:
    """Each stage with its label: its name, then ``name#2``... if the name repeats."""
    seen: dict[str, int] = {}
    for stage in stats.stages:
        n = seen[stage.name] = seen.get(stage.name, 0) + 1
        yield (stage.name if n == 1 else f"{stage.name}#{n}"), stage


_DEFAULTS: weakref.WeakKeyDictionary[CollectorRegistry, PipelineMetrics] = (
    weakref.WeakKeyDictionary()
)
_DEFAULTS_LOCK = threading.Lock()


def track(stream: S, pipeline: str, registry: CollectorRegistry = REGISTRY) -> S:
    """``PipelineMetrics(registry).track(stream, pipeline)``, with one
    :class:`PipelineMetrics` per registry (namespace ``conveyor``), made at first use.
    Returns the stream."""
    with _DEFAULTS_LOCK:
        metrics = _DEFAULTS.get(registry)
        if metrics is None:
            metrics = _DEFAULTS[registry] = PipelineMetrics(registry)
    return metrics.track(stream, pipeline)
