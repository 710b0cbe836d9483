"""conveyor.contrib.prometheus: runs' statistics as Prometheus metrics, scraped over HTTP.

Each test starts the exporter on 127.0.0.1 (a free port, a fresh registry), runs
pipelines, scrapes ``/metrics`` from a thread (the run's loop stays free meanwhile) and
checks every figure against the run's own ``stream.stats``. Nothing waits on a duration:
a run in progress is held by an ``asyncio.Event``.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import subprocess
import sys
import urllib.request
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from conveyor import CircuitBreaker, batch_task, single_task
from conveyor._engine._histogram import Histogram
from conveyor.contrib import prometheus
from conveyor.contrib.prometheus import LATENCY_BUCKETS, PipelineMetrics, track
from conveyor.stats import RunStats

ROOT = Path(__file__).resolve().parent.parent
Key = tuple[str, frozenset[tuple[str, str]]]


class Exporter:
    def __init__(self, metrics: PipelineMetrics, url: str) -> None:
        self.metrics = metrics
        self.url = url

    async def scrape(self) -> Scrape:
        return Scrape(await asyncio.to_thread(self._get))

    def _get(self) -> str:
        with urllib.request.urlopen(self.url, timeout=30) as response:
            text: str = response.read().decode()
            return text


class Scrape:
    """The samples of one scrape, by sample name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[Key, float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.samples, f"duplicate series {key}"
                self.samples[key] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[name, frozenset(labels.items())]

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield Exporter(metrics, f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@single_task(retry_attempts=2, retry_delay=0, on_error="skip_item")
async def parse(x: int) -> int:
    if x == 7:
        raise ValueError("always bad: retried once, then skipped")
    return x


@batch_task(max_size=4)
async def pack(batch: list[int]) -> list[int]:
    return [sum(batch)]


@single_task
def label(n: int) -> str:
    return f"sum {n}"


PIPELINE = parse | pack | label


def check_against(scrape: Scrape, pipeline: str, runs: list[RunStats]) -> None:
    """Every metric of ``pipeline`` equals the sum over its ended ``runs``' stats."""
    assert scrape("conveyor_runs_total", pipeline=pipeline) == len(runs)
    assert scrape("conveyor_runs_active", pipeline=pipeline) == 0
    assert scrape("conveyor_results_total", pipeline=pipeline) == sum(r.results for r in runs)
    for stage in runs[-1].stages:
        at = {"pipeline": pipeline, "stage": stage.name}
        rows = [run.stage(stage.name) for run in runs]

        def total(field: str, rows: list[Any] = rows) -> float:
            return float(sum(getattr(row, field) for row in rows))

        assert scrape("conveyor_stage_items_in_total", **at) == total("items_in")
        assert scrape("conveyor_stage_items_out_total", **at) == total("items_out")
        assert scrape("conveyor_stage_retries_total", **at) == total("retried")
        for outcome in ("failed", "skipped", "emitted"):
            got = scrape("conveyor_stage_failures_total", **at, outcome=outcome)
            assert got == total(outcome)
        if stage.batch:
            assert scrape("conveyor_stage_batches_total", **at) == total("batches")
        else:
            assert not scrape.has("conveyor_stage_batches_total", **at)
        if stage.circuit_opened is None:
            assert not scrape.has("conveyor_stage_circuit_opened_total", **at)
            assert not scrape.has("conveyor_stage_circuit_rejected_total", **at)
        else:
            opened = scrape("conveyor_stage_circuit_opened_total", **at)
            assert opened == total("circuit_opened")
            rejected = scrape("conveyor_stage_circuit_rejected_total", **at)
            assert rejected == total("circuit_rejected")
        assert scrape("conveyor_stage_busy_seconds_total", **at) == pytest.approx(
            total("busy_seconds")
        )
        assert scrape("conveyor_stage_in_flight", **at) == 0
        assert scrape("conveyor_stage_waiting_for_slot", **at) == 0
        if stage.busy_share is None:
            assert not scrape.has("conveyor_stage_busy_ratio", **at)
        else:  # the latest run's
            assert scrape("conveyor_stage_busy_ratio", **at) == stage.busy_share
        check_latency(scrape, at, [row.latency for row in rows])


def check_latency(scrape: Scrape, at: dict[str, str], latencies: list[Any]) -> None:
    name = "conveyor_stage_call_latency_seconds"
    samples = sum(lat.samples for lat in latencies)
    assert samples > 0  # every stage's first call is timed
    assert scrape(f"{name}_count", **at) == samples
    assert scrape(f"{name}_sum", **at) == pytest.approx(
        sum(lat.mean * lat.samples for lat in latencies)
    )
    # Cumulative: each log bucket under the first bound at or above its top.
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    for lat in latencies:
        assert sum(count for _, count in lat.buckets) == lat.samples
        for top, count in lat.buckets:
            expected[bisect.bisect_left(LATENCY_BUCKETS, top)] += count
    cumulative = 0
    previous = 0.0
    for bound, count in zip([*LATENCY_BUCKETS, None], expected, strict=True):
        cumulative += count
        le = "+Inf" if bound is None else repr(bound)
        got = scrape(f"{name}_bucket", **at, le=le)
        assert got == cumulative and got >= previous
        previous = got
    assert previous == samples


async def test_every_value_matches_the_runs_stats(exporter: Exporter) -> None:
    stream = exporter.metrics.track(PIPELINE(range(18)), "crawl")
    results = await stream.collect()
    assert results == ["sum 6", "sum 23", "sum 42", "sum 58", "sum 17"]  # 7 skipped
    scrape = await exporter.scrape()
    stats = stream.stats
    assert stats.stage("parse").retried == 1 and stats.stage("parse").skipped == 1
    assert stats.stage("pack").batches == 5
    check_against(scrape, "crawl", [stats])
    assert scrape.types["conveyor_stage_items_in"] == "counter"
    assert scrape.types["conveyor_stage_in_flight"] == "gauge"
    assert scrape.types["conveyor_stage_call_latency_seconds"] == "histogram"


async def test_circuit_breaker_counts(exporter: Exporter) -> None:
    """A stage with a circuit breaker has its openings and refused calls counted."""
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=60)

    @single_task(circuit_breaker=breaker, on_error="skip_item", concurrency_limit=1)
    async def down(x: int) -> int:
        if x:
            raise ConnectionError("service unavailable")
        return x

    stream = exporter.metrics.track((down | label)(range(10)), "outage")
    assert await stream.collect() == ["sum 0"]
    stats = stream.stats.stage("down")
    assert (stats.circuit_opened, stats.circuit_rejected) == (1, 7)
    scrape = await exporter.scrape()
    check_against(scrape, "outage", [stream.stats])
    assert scrape("conveyor_stage_circuit_rejected_total", pipeline="outage", stage="down") == 7
    assert not scrape.has("conveyor_stage_circuit_opened_total", pipeline="outage", stage="label")


async def test_a_second_run_adds_to_the_counters(exporter: Exporter) -> None:
    first = exporter.metrics.track(PIPELINE(range(18)), "crawl")
    await first.collect()
    before = await exporter.scrape()
    check_against(before, "crawl", [first.stats])
    second = exporter.metrics.track(PIPELINE(range(30)), "crawl")
    other = exporter.metrics.track(PIPELINE(range(3)), "other")  # its own label
    await second.collect()
    await other.collect()
    after = await exporter.scrape()
    check_against(after, "crawl", [first.stats, second.stats])
    check_against(after, "other", [other.stats])
    for key, value in before.samples.items():  # every counter only went up
        if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
            assert after.samples[key] >= value, key


async def test_a_run_in_progress_shows_in_the_gauges(exporter: Exporter) -> None:
    go = asyncio.Event()

    @single_task(concurrency_limit=2)
    async def hold(x: int) -> int:
        await go.wait()
        return x

    stream = exporter.metrics.track((parse | hold)(range(5)), "held")
    first = asyncio.ensure_future(anext(stream))
    try:
        for _ in range(10_000):  # until every item is in (or waiting for) a call of hold
            await asyncio.sleep(0.001)
            rows = {row.name: row for row in stream.stats.stages}
            if "hold" in rows and (rows["hold"].in_flight, rows["hold"].waiting_for_slot) == (2, 3):
                break
        scrape = await exporter.scrape()
        stats = stream.stats  # (nothing moves while hold's calls wait)
        at = {"pipeline": "held", "stage": "hold"}
        assert scrape("conveyor_runs_active", pipeline="held") == 1
        assert scrape("conveyor_runs_total", pipeline="held") == 0
        assert scrape("conveyor_stage_in_flight", **at) == stats.stage("hold").in_flight == 2
        assert scrape("conveyor_stage_waiting_for_slot", **at) == 3
        assert scrape("conveyor_stage_items_in_total", **at) == stats.stage("hold").items_in == 5
        assert scrape("conveyor_stage_items_out_total", pipeline="held", stage="parse") == 5
        assert scrape("conveyor_results_total", pipeline="held") == 0
        go.set()
        assert await first == 0
        assert [x async for x in stream] == [1, 2, 3, 4]
    finally:
        go.set()
        first.cancel()
        await stream.aclose()
    check_against(await exporter.scrape(), "held", [stream.stats])


async def test_a_dropped_stream_is_not_kept_alive_and_its_counts_remain(
    exporter: Exporter,
) -> None:
    stream = exporter.metrics.track(PIPELINE(range(18)), "dropped")
    await stream.collect()
    final = stream.stats
    gone = weakref.ref(stream)
    del stream
    gc.collect()
    assert gone() is None  # tracking held it weakly
    check_against(await exporter.scrape(), "dropped", [final])

    # dropped before its end: the figures it had then are counted, as one run
    stream = exporter.metrics.track(PIPELINE(range(1000)), "cut")
    assert await anext(stream) == "sum 6"
    before = stream.stats
    gone = weakref.ref(stream)
    del stream
    gc.collect()
    assert gone() is None
    for _ in range(10):  # (the cancelled run unwinds)
        await asyncio.sleep(0)
    scrape = await exporter.scrape()
    assert scrape("conveyor_runs_total", pipeline="cut") == 1
    assert scrape("conveyor_runs_active", pipeline="cut") == 0
    at = {"pipeline": "cut", "stage": "parse"}
    assert scrape("conveyor_stage_items_in_total", **at) >= before.stage("parse").items_in > 0

    # never started: no run to count
    unstarted = exporter.metrics.track(PIPELINE(range(3)), "never")
    await unstarted.aclose()
    del unstarted
    gc.collect()
    assert not (await exporter.scrape()).has("conveyor_runs_total", pipeline="never")


async def test_repeated_stage_names_get_their_own_series(exporter: Exporter) -> None:
    stream = exporter.metrics.track((label | label)(range(3)), "twice")
    assert await stream.collect() == ["sum sum 0", "sum sum 1", "sum sum 2"]
    scrape = await exporter.scrape()
    assert scrape("conveyor_stage_items_in_total", pipeline="twice", stage="label") == 3
    assert scrape("conveyor_stage_items_in_total", pipeline="twice", stage="label#2") == 3


async def test_track_checks_its_stream(exporter: Exporter) -> None:
    metrics = exporter.metrics
    stream = PIPELINE(range(3))
    assert metrics.track(stream, "p") is stream
    with pytest.raises(ValueError, match="already tracked"):
        metrics.track(stream, "p")
    await stream.aclose()
    with pytest.raises(ValueError, match="statistics are off"):
        metrics.track(PIPELINE.with_context(statistics=False)(range(3)), "p")
    with pytest.raises(TypeError, match="stream"):
        metrics.track([1, 2], "p")  # type: ignore[type-var]


async def test_the_module_level_track_and_a_namespace() -> None:
    registry = CollectorRegistry()
    for n in (3, 5):  # one PipelineMetrics per registry: no duplicate registration
        await track(PIPELINE(range(n)), "mod", registry=registry).collect()
    named = CollectorRegistry()
    await PipelineMetrics(named, namespace="app").track(PIPELINE(range(2)), "n").collect()
    assert registry.get_sample_value("conveyor_runs_total", {"pipeline": "mod"}) == 2
    assert named.get_sample_value("app_runs_total", {"pipeline": "n"}) == 1
    with pytest.raises(ValueError, match="Duplicated"):
        PipelineMetrics(named, namespace="app")  # the registry refuses a second


def test_counters_never_go_down() -> None:
    metrics = PipelineMetrics(registry=None)
    # (a figure read while the run's thread changes it may dip for a moment)
    assert metrics._rising("stage_items_in", ("p", "s"), 5) == 5
    assert metrics._rising("stage_items_in", ("p", "s"), 4) == 5
    assert metrics._rising("stage_items_in", ("p", "s"), 7) == 7


def test_histogram_bucket_counts_bound_their_calls() -> None:
    histogram = Histogram()
    values = [0.0, 1e-9, 3e-6, 3e-6, 0.0011, 0.5, 2.0, 90.0]
    for value in values:
        histogram.add(value)
    counts = histogram.bucket_counts()
    assert [bound for bound, _ in counts] == sorted(bound for bound, _ in counts)
    assert sum(n for _, n in counts) == len(values)
    for value in values:  # each in the bucket whose top is the first above it
        top = next(bound for bound, _ in counts if value < bound)
        assert value >= top * 2**-0.25 or top == counts[0][0]
    assert (2**6.5, 1) in counts  # 90 s: log2 is 6.49, in [2**6.25, 2**6.5)


async def test_latency_buckets_are_plain_data() -> None:
    stream = PIPELINE(range(5))
    await stream.collect()
    stats = stream.stats
    buckets = stats.stage("pack").latency.buckets
    assert isinstance(buckets, tuple) and all(isinstance(b, tuple) for b in buckets)
    data = stats.to_dict()
    snapshot = {k: v for k, v in data.items() if k not in ("bottleneck", "enabled")}
    for stage in snapshot["stages"]:  # as JSON would give them back: lists
        stage["latency"]["buckets"] = [list(b) for b in stage["latency"]["buckets"]]
    assert RunStats.from_snapshot(snapshot) == stats


def test_without_prometheus_client_the_import_error_names_the_fix() -> None:
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None\n"
        "import conveyor\n"
        "assert 'conveyor.contrib' not in sys.modules  # optional: never imported\n"
        "try:\n"
        "    import conveyor.contrib.prometheus\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'conveyor[prometheus]'" in done.stdout
    assert prometheus.__all__  # (and here, with it installed, the module imports)
