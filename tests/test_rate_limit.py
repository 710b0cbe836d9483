"""``rate_limit=``: at most ``calls`` call starts in any window of ``per_seconds``, the
wait outside the call's ``timeout``; on looptime's virtual clock, so windows are exact."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import run_on_virtual_clock
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor import RateLimit, batch_task, single_task

EPS = 1e-9


def assert_within(starts: list[float], calls: int, per: float) -> None:
    """No window of ``per`` seconds holds more than ``calls`` starts."""
    starts = sorted(starts)
    for i in range(len(starts) - calls):
        assert starts[i + calls] - starts[i] >= per - EPS, (i, starts)


@pytest.mark.looptime
async def test_waiting_for_a_turn_is_not_part_of_the_timeout() -> None:
    """The issue's case: a limiter inside the task made 15 of 20 calls time out."""
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    @single_task(rate_limit=(10, 1.0), timeout=0.5)
    async def call(i: int) -> int:
        starts.append(loop.time())
        await asyncio.sleep(0.05)
        return i

    begin = loop.time()
    assert await call(range(20)).collect() == list(range(20))
    assert_within(starts, 10, 1.0)
    assert starts[9] - begin < 0.01 and 1.0 - EPS <= starts[10] - begin < 1.01  # a burst
    assert loop.time() - begin == pytest.approx(1.05)


@pytest.mark.looptime
async def test_concurrency_and_order_hold_under_a_rate_limit() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    running = peak = 0

    @single_task(rate_limit=(5, 0.5), concurrency_limit=3)
    async def slow(i: int) -> int:
        nonlocal running, peak
        starts.append(loop.time())
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.3 if i % 2 else 0.05)
        running -= 1
        return i

    assert await slow(range(30)).collect() == list(range(30))
    assert peak == 3
    assert_within(starts, 5, 0.5)


@pytest.mark.looptime
async def test_one_rate_limit_shared_by_two_tasks() -> None:
    loop = asyncio.get_running_loop()
    quota = RateLimit(4, per_seconds=1.0)
    starts: list[float] = []

    @single_task(rate_limit=quota)
    async def first(i: int) -> int:
        starts.append(loop.time())
        return i

    @single_task(rate_limit=quota)
    def second(i: int) -> int:  # a plain function: its calls end at once
        starts.append(loop.time())
        return i

    assert await (first | second)(range(10)).collect() == list(range(10))
    assert len(starts) == 20
    assert_within(starts, 4, 1.0)
    assert loop.time() == pytest.approx(4.0)  # 20 starts, 4 a second: the last at 4 s


@pytest.mark.looptime
async def test_retries_take_their_turn() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    failed: set[int] = set()

    @single_task(rate_limit=(2, 1.0), retry_attempts=2, retry_delay=0)
    async def flaky(i: int) -> int:
        starts.append(loop.time())
        if i not in failed:
            failed.add(i)
            raise ConnectionError(i)
        return i

    assert await flaky(range(4)).collect() == [0, 1, 2, 3]
    assert len(starts) == 8
    assert_within(starts, 2, 1.0)


@pytest.mark.looptime
async def test_a_rate_limited_batch_task() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    @batch_task(max_size=3, rate_limit=(1, 0.5), concurrency_limit=4)
    def store(rows: list[int]) -> list[int]:
        starts.append(loop.time())
        return rows

    assert await store(range(10)).collect() == list(range(10))
    assert starts == pytest.approx([0.0, 0.5, 1.0, 1.5])


@pytest.mark.looptime
async def test_early_exit_drops_the_queued_calls() -> None:
    calls: list[int] = []

    @single_task(rate_limit=(2, 1.0))
    def tag(i: int) -> int:
        calls.append(i)
        return i

    async with tag(range(100)) as stream:
        async for result in stream:
            if result == 2:
                break
    assert calls == [0, 1, 2, 3]  # (2 and 3 had their turn at 1 s)
    await asyncio.sleep(5)  # the gate's timer went with the run: no call starts later
    assert calls == [0, 1, 2, 3]


@pytest.mark.looptime
async def test_statistics_show_the_items_waiting_for_a_turn() -> None:
    @single_task(rate_limit=(2, 1.0))
    async def call(i: int) -> int:
        return i

    stream = call(range(6))
    first = await anext(stream)
    stats = stream.stats.stage("call")
    assert first == 0 and stats.waiting_for_slot == 4 and stats.in_flight == 0
    assert stats.rate_limit == "2 calls per 1 s"
    assert await stream.collect() == [1, 2, 3, 4, 5]
    assert "waiting for its rate limit (2 calls per 1 s)" in str(stream.stats.bottleneck)


def test_bad_limits_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"rate_limit: calls must be an int >= 1, got 0"):
        single_task(rate_limit=(0, 1.0))(lambda x: x)
    with pytest.raises(ValueError, match="per_seconds must be a number of seconds > 0"):
        single_task(rate_limit=(5, 0))(lambda x: x)
    with pytest.raises(TypeError, match=r"rate_limit must be \(calls, per_seconds\)"):
        single_task(rate_limit=5)(lambda x: x)
    assert repr(RateLimit(3, 0.5)) == "RateLimit(3, per_seconds=0.5)"


@settings(max_examples=40, deadline=None)
@given(
    calls=st.integers(1, 5),
    per=st.sampled_from([0.1, 0.5, 1.0, 2.5]),
    durations=st.lists(st.sampled_from([0.0, 0.01, 0.3, 1.5]), min_size=1, max_size=25),
    limit=st.one_of(st.none(), st.integers(1, 4)),
    plain=st.booleans(),
)
def test_no_window_ever_holds_more_than_the_limit(
    calls: int, per: float, durations: list[float], limit: int | None, plain: bool
) -> None:
    starts: list[float] = []
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if plain:

            def work(i: int) -> int:
                starts.append(loop.time())
                return i

        else:

            async def work(i: int) -> int:  # type: ignore[misc]
                starts.append(loop.time())
                await asyncio.sleep(durations[i])
                return i

        task = single_task(work, rate_limit=(calls, per), concurrency_limit=limit)
        assert await (task | single_task(lambda x: x))(range(len(durations))).collect() == (
            list(range(len(durations)))
        )

    run_on_virtual_clock(main(), errors)
    assert not errors
    assert len(starts) == len(durations)
    assert_within(starts, calls, per)


# -- bounded executors: the limit is on the function's starts (issue 17, item 6.8) -------

MARGIN = 0.2  # a start comes a little after its turn (before the fix: starts 0.01 s apart)


@pytest.mark.parametrize("executor", ["thread:1", "user-pool:1", "process:1", "thread:2"])
async def test_a_bounded_pool_starts_calls_within_the_limit(executor: str) -> None:
    """``rate_limit=(2, 0.5)`` on one worker whose first call takes 0.6 s: calls handed
    to the busy pool used to start together when it freed (0.0, 0.6, 0.61, 0.62, ...).
    A call now takes its turn only when a worker can start it at once."""
    import concurrent.futures

    import rate_workers

    calls, per, n = 2, 0.5, 8
    kind, _, size = executor.partition(":")
    pool = concurrent.futures.ThreadPoolExecutor(int(size)) if kind == "user-pool" else None
    try:
        task = single_task(
            rate_workers.start_then_sleep,
            rate_limit=(calls, per),
            executor=pool if pool is not None else executor,
        )
        starts = await task(range(n)).collect()
    finally:
        if pool is not None:
            pool.shutdown()
    assert len(starts) == n
    starts = sorted(starts)
    for i in range(n - calls):
        assert starts[i + calls] - starts[i] >= per - MARGIN, (i, starts)
