"""Statistics (``stream.stats``): exact counts, sampled figures, the bottleneck rule.

Timings run on looptime's virtual clock, so sampled shares and latencies are exact
enough to assert on.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import Failure, PipelineContext, batch_task, single_task
from conveyor._engine._histogram import Histogram
from conveyor._engine._stage import SingleStage
from conveyor.stats import RunStats


@single_task
def keep_even(x: int) -> int | None:
    return x if x % 2 == 0 else None


@single_task
def twice(x: int) -> list[int]:
    return [x, x]


@batch_task(max_size=4)
async def total(batch: list[int]) -> list[int]:
    return [sum(batch)]


@single_task(retry_attempts=2, retry_delay=0, on_error="emit")
async def picky(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(x)
    return x


async def test_counts_are_exact_in_every_stage() -> None:
    stream = (keep_even | twice | total | picky)(range(20))
    results = await stream.collect()
    stats = stream.stats
    assert stats.finished and stats.results == len(results) == 5
    rows = {s.name: s for s in stats.stages}
    assert (rows["keep_even"].items_in, rows["keep_even"].items_out) == (20, 10)
    assert (rows["twice"].items_in, rows["twice"].items_out) == (10, 20)
    assert (rows["total"].items_in, rows["total"].items_out) == (20, 5)
    assert rows["total"].batches == 5 and rows["total"].mean_batch_size == 4
    # sums of four: 0+0+2+2=4, 20, 36, 52, 68; 36 fails twice (one retry), then emitted
    assert rows["picky"].retried == 1 and rows["picky"].emitted == 1
    assert rows["picky"].failed == rows["picky"].skipped == 0
    assert all(s.in_flight == 0 and s.waiting_for_slot == 0 for s in stats.stages)
    assert stats.time_to_first_result is not None and stats.items_per_second


async def test_failures_are_counted_under_every_policy() -> None:
    def failing(policy: str) -> object:
        @single_task(on_error=policy)
        def boom(x: int) -> int:
            if x in (2, 5):
                raise KeyError(x)
            return x

        return boom

    for policy, field in (("skip_item", "skipped"), ("emit", "emitted")):
        stream = failing(policy)(range(8))  # type: ignore[operator]
        await stream.collect()
        assert getattr(stream.stats.stages[0], field) == 2, policy
    stream = failing("fail")(range(8))  # type: ignore[operator]
    with pytest.raises(KeyError):
        await stream.collect()
    assert stream.stats.stages[0].failed == 1


async def test_a_snapshot_during_the_run_and_after() -> None:
    @single_task
    async def step(x: int) -> int:
        await asyncio.sleep(0)
        return x

    stream = step(range(100))
    async with stream:
        async for x in stream:
            if x == 9:
                break
        middle = stream.stats
    assert not middle.finished and middle.results >= 10
    assert middle.stages[0].items_in >= 10
    assert isinstance(stream.stats, RunStats)


@pytest.mark.looptime
async def test_latency_percentiles_from_timed_calls() -> None:
    @single_task(concurrency_limit=1)
    async def wait(x: int) -> int:
        await asyncio.sleep(1.0 if x % 10 == 9 else 0.1)
        return x

    stream = wait(range(100))
    await stream.collect()
    latency = stream.stats.stages[0].latency
    assert latency.samples == 100  # one call at a time, a sample every 10 ms: all timed
    assert latency.p50 is not None and abs(latency.p50 - 0.1) <= 0.1 * 0.1
    assert latency.p99 is not None and abs(latency.p99 - 1.0) <= 0.1 * 1.0
    assert latency.max is not None and abs(latency.max - 1.0) < 1e-6


@pytest.mark.looptime
async def test_bottleneck_a_stage_at_its_limit() -> None:
    @single_task(concurrency_limit=2)
    async def slow(x: int) -> int:
        await asyncio.sleep(0.5)
        return x

    @single_task
    async def quick(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    stream = (quick | slow | quick)(range(40))
    await stream.collect()
    neck = stream.stats.bottleneck
    assert neck is not None and neck.where == "slow" and "at its limit (2 at once)" in neck.why


@pytest.mark.looptime
async def test_bottleneck_the_consumer() -> None:
    @single_task
    async def quick(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    stream = quick(range(50))
    async with stream:
        async for _ in stream:
            await asyncio.sleep(0.2)  # the reader is the slow part
    neck = stream.stats.bottleneck
    assert neck is not None and neck.where == "consumer"


@pytest.mark.looptime
async def test_bottleneck_the_input() -> None:
    async def trickle() -> AsyncIterator[int]:
        for i in range(20):
            await asyncio.sleep(0.3)
            yield i

    @single_task
    async def quick(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    stream = quick(trickle())
    await stream.collect()
    neck = stream.stats.bottleneck
    assert neck is not None and neck.where == "input"


@pytest.mark.looptime
async def test_batches_flushed_by_max_wait_are_counted() -> None:
    async def bursts() -> AsyncIterator[int]:
        for i in range(9):
            if i % 3 == 0:
                await asyncio.sleep(1.0)  # a pause: the partial batch waits max_wait
            yield i

    @batch_task(max_size=10, max_wait=0.1)
    def count(batch: list[int]) -> list[int]:
        return [len(batch)]

    stream = count(bursts())
    assert await stream.collect() == [3, 3, 3]
    row = stream.stats.stages[0]
    assert row.batches == 3 and row.max_wait_flushes == 2  # the last: the input's end


async def test_to_dict_is_json_and_str_is_a_table() -> None:
    stream = (keep_even | twice)(range(10))
    await stream.collect()
    data = json.loads(json.dumps(stream.stats.to_dict()))
    assert data["results"] == 10 and [s["name"] for s in data["stages"]] == ["keep_even", "twice"]
    text = str(stream.stats)
    assert text.splitlines()[0].split()[:3] == ["stage", "in", "out"]
    assert "keep_even" in text and "10 results" in text and "bottleneck" in text


async def test_statistics_can_be_turned_off() -> None:
    stream = keep_even.with_context(statistics=False)(range(10))
    async with stream:
        assert [x async for x in stream] == [0, 2, 4, 6, 8]
        assert type(stream._run.stages[0]) is SingleStage  # no observer code in its path
    assert not stream.stats.enabled and stream.stats.stages == ()
    assert "statistics are off" in str(stream.stats)
    with pytest.raises(ValueError, match="statistics must be True or False"):
        PipelineContext(statistics="yes")  # type: ignore[arg-type]


def test_the_latency_histogram_is_bounded_and_close() -> None:
    rng = random.Random(7)
    hist = Histogram()
    values = [10 ** rng.uniform(-6, 2) for _ in range(100_000)]
    for v in values:
        hist.add(v)
    assert len(hist.buckets) <= 200
    values.sort()
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * len(values)) - 1]
        estimate = hist.quantile(q)
        assert estimate is not None and abs(estimate / exact - 1) <= 0.1, q
    assert hist.max == values[-1] and Histogram().quantile(0.5) is None


async def test_statistics_keep_fusion_and_the_pumps_direct_call() -> None:
    stream = (keep_even | twice)(range(10))
    async with stream:
        assert await anext(stream) == 0
        run = stream._run
        assert run is not None and run.direct_entry is not None
        assert run.stages[0].chain is run.stages[1]  # fused, and still counted
    await asyncio.sleep(0)
    rows = stream.stats.stages
    assert rows[0].items_in == 10 and rows[1].items_in == rows[0].items_out == 5


@pytest.mark.parametrize("watched", [False, True])
async def test_items_waiting_for_a_slot_count_once_as_in(watched: bool) -> None:
    from collections import Counter

    class Watcher:  # a user's observer: its runs count items as they arrive
        def __init__(self) -> None:
            self.counts: Counter[str] = Counter()

        def stage(self, index: int, spec: object) -> Watcher:
            return self

        def items_in(self, n: int) -> None:
            self.counts["in"] += n

        def items_out(self, n: int) -> None:
            pass

        def call_started(self) -> None:
            pass

        def call_ended(self, seconds: float, error: BaseException | None) -> None:
            pass

        def retried(self, error: BaseException, attempt: int) -> None:
            pass

        def waited_for_room(self, seconds: float) -> None:
            pass

    @single_task(concurrency_limit=1)
    async def one_at_a_time(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    stream = one_at_a_time(range(30))
    if watched:
        stream.observe(Watcher())  # type: ignore[arg-type]
    async with stream:
        assert await anext(stream) == 0
        row = stream.stats.stages[0]
        assert row.waiting_for_slot > 0  # the rest wait for the one slot
        assert row.items_in == 30  # each admitted item once: waiting or called


async def test_work_sent_to_processes_reports_transfer_against_work() -> None:
    from workers import spin

    cpu = single_task(spin, executor="process:2")
    on_threads = single_task(lambda x: x, executor="thread:2")
    stream = (cpu | on_threads)(range(40))
    assert await stream.collect() == list(range(40))
    stats = stream.stats
    off = stats.stage("spin").offload
    assert off is not None and off.items == 40 and 1 <= off.chunks <= 40
    assert 0.04 * 0.5 < off.work_seconds < 5  # 40 calls of ~1 ms of CPU each
    assert off.transfer_seconds > 0 and off.queued_seconds >= 0
    assert off.transfer_share is not None and 0 < off.transfer_share < 1
    assert stats.stage("<lambda>").offload is None  # threads share memory: no transfer
    assert "spin on 'process:2': 40 items in" in str(stats)
    assert json.loads(json.dumps(stats.to_dict()))["stages"][0]["offload"]["items"] == 40


async def test_the_inputs_own_figures_are_in_the_statistics() -> None:
    class Source:
        """Any input with figures() (the file sources have one)."""

        def __init__(self) -> None:
            self.read = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            for i in range(4):
                self.read += 1_000_000
                yield i

        def figures(self) -> dict[str, object]:
            return {"bytes_read": self.read, "mb_per_second": 2.0, "progress": self.read / 4e6}

    stream = keep_even(Source())
    await stream.collect()
    assert stream.stats.input == {"bytes_read": 4_000_000, "mb_per_second": 2.0, "progress": 1.0}
    assert "input: 4.0 MB read at 2.0 MB/s (100%)" in str(stream.stats)
    assert json.loads(json.dumps(stream.stats.to_dict()))["input"]["bytes_read"] == 4_000_000
    plain = keep_even(range(3))
    await plain.collect()
    assert plain.stats.input is None


async def test_every_item_is_accounted_for_in_the_counts() -> None:
    """Each item that reaches a stage is passed on, dropped by the function (None, [], an
    empty generator), or handled by the policy (skipped, emitted, failed), counted apart."""

    @single_task(on_error="skip_item")
    def keep_even(x: int) -> int | None:
        if x == 7:
            raise ValueError(x)
        return x if x % 2 == 0 else None

    @single_task
    def copies(x: int) -> Any:
        yield from [x] * (x % 3)  # no copies of multiples of 3: an empty generator

    @batch_task(max_size=4, min_size=2, on_error="emit")
    def total(xs: list[int]) -> int:
        if 4 in xs:
            raise ValueError(xs)
        return sum(xs)

    stream = (keep_even | copies | total)(range(10))
    out = await stream.collect()
    first, second, third = stream.stats.stages
    assert (first.items_in, first.items_out, first.dropped, first.skipped) == (10, 5, 4, 1)
    assert (second.items_in, second.items_out, second.dropped) == (5, 5, 2)  # 0 and 6
    # [2, 2, 4, 8] fails: four Failures; [8] is the remainder, below min_size
    assert (third.items_in, third.batches, third.emitted, third.remainder_dropped) == (5, 1, 1, 1)
    assert len(out) == 4 and all(isinstance(f, Failure) for f in out)
