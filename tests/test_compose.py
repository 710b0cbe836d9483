"""Composition: ``conveyor.parallel`` (and ``a & b``), ``conveyor.route`` and
``pipeline.with_items()`` (see conveyor/compose.py and conveyor/_engine/_branch.py).

Each test states one promise of the module docstrings: a branch's result for an item
(None / one / list; a Failure first), the policies inside branches, order in both modes,
every executor in a branch, statistics of branch stages, the window's bounds reaching
into branches, every exit leaving nothing running, and the types.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import workers
from conftest import leftover_tasks, settle
from mypy_run import mypy

import conveyor
from conveyor import Failure, batch_task, parallel, route, single_task

MODES = ["ordered", "as_completed"]


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conveyor-")]


@single_task
async def double(x: int) -> int:
    return 2 * x


@single_task
async def plus_one(x: int) -> int:
    return x + 1


@single_task
def neg(x: int) -> int:
    return -x


async def collect(pipeline: Any, items: Any, mode: str = "ordered") -> list[Any]:
    return await pipeline.with_execution_mode(mode)(items).collect()


def check(out: list[Any], expected: list[Any], mode: str) -> None:
    if mode == "ordered":
        assert out == expected
    else:
        assert Counter(map(repr, out)) == Counter(map(repr, expected))


# -- parallel: the branches' results ---------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_parallel_gives_the_tuple_of_the_branches_results(mode: str) -> None:
    out = await collect(parallel(double, plus_one, neg), range(20), mode)
    check(out, [(2 * x, x + 1, -x) for x in range(20)], mode)


@pytest.mark.parametrize("mode", MODES)
async def test_parallel_combine_gets_the_item_and_each_result(mode: str) -> None:
    stage = parallel(double, plus_one, combine=lambda item, a, b: (item, a + b))
    out = await collect(stage, range(20), mode)
    check(out, [(x, 3 * x + 1) for x in range(20)], mode)


@pytest.mark.parametrize("mode", MODES)
async def test_branches_are_tasks_or_pipelines_and_and_is_parallel(mode: str) -> None:
    out = await collect((double | plus_one) & neg, range(10), mode)
    check(out, [(2 * x + 1, -x) for x in range(10)], mode)
    out = await collect(neg & (double | plus_one), range(10), mode)
    check(out, [(-x, 2 * x + 1) for x in range(10)], mode)
    out = await collect(plus_one | (double & neg) | single_task(sum), range(10), mode)
    check(out, [(x + 1) for x in range(10)], mode)


@pytest.mark.parametrize("mode", MODES)
async def test_a_branch_that_drops_expands_or_skips(mode: str) -> None:
    @single_task
    def evens(x: int) -> int | None:
        return x if x % 2 == 0 else None

    @single_task
    def twice(x: int) -> list[int]:
        return [x, x]

    @single_task
    def count_to(x: int) -> Iterator[int]:
        yield from range(x % 3)

    @single_task(on_error="skip_item")
    def odd_fails(x: int) -> int:
        if x % 2:
            raise ValueError(x)
        return x

    out = await collect(parallel(evens, twice, count_to, odd_fails), range(9), mode)
    expected = []
    for x in range(9):
        made = list(range(x % 3))
        expected.append(
            (
                x if x % 2 == 0 else None,
                [x, x],
                None if not made else made[0] if len(made) == 1 else made,
                None if x % 2 else x,
            )
        )
    check(out, expected, mode)


@pytest.mark.parametrize("mode", MODES)
async def test_a_branchs_failure_is_the_items_result(mode: str) -> None:
    @single_task(on_error="emit")
    def fails_on_3(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(f"three {x}")
        return x

    @single_task(on_error="emit")
    def fails_on_2(x: int) -> int:
        if x % 2 == 0:
            raise KeyError(f"two {x}")
        return x

    out = await collect(parallel(double, fails_on_3, fails_on_2), range(12), mode)
    assert len(out) == 12
    for value in out:
        if type(value) is Failure:
            x = value.item
            # the first failing branch's Failure
            if x % 3 == 0:
                assert isinstance(value.exception, ValueError)
            else:
                assert x % 2 == 0 and isinstance(value.exception, KeyError)
        else:
            x = value[0] // 2
            assert value == (2 * x, x, x) and x % 3 and x % 2
    if mode == "ordered":
        keys = [v.item if type(v) is Failure else v[1] for v in out]
        assert keys == list(range(12))


async def test_fail_in_a_branch_fails_the_run_with_its_error() -> None:
    @single_task
    def breaks(x: int) -> int:
        if x == 5:
            raise ZeroDivisionError("five")
        return x

    with pytest.raises(ZeroDivisionError, match="five"):
        await collect(parallel(double, breaks), range(20))
    with pytest.raises(ZeroDivisionError, match="five"):
        await collect(route(lambda x: x % 2, {1: breaks}), range(20))


@pytest.mark.parametrize("mode", MODES)
async def test_a_batch_in_a_branch_gives_each_item_its_own_result(mode: str) -> None:
    @batch_task(max_size=4)
    def squares(batch: list[int]) -> list[int]:
        return [x * x for x in batch]

    out = await collect(parallel(squares, plus_one), range(10), mode)
    check(out, [(x * x, x + 1) for x in range(10)], mode)


async def test_a_batch_in_parallel_that_returns_another_number_names_the_branch() -> None:
    @batch_task(max_size=4)
    def total(batch: list[int]) -> int:
        return sum(batch)

    with pytest.raises(ValueError, match=r"(?s)total.*one result per item"):
        await collect(parallel(total, plus_one, name="fan"), range(10))


# -- route -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_route_sends_each_item_to_its_branch(mode: str) -> None:
    stage = route(lambda x: x % 3, {0: double, 1: plus_one | double, 2: double}, default=neg)
    out = await collect(stage, range(20), mode)
    check(out, [2 * x if x % 3 != 1 else 2 * (x + 1) for x in range(20)], mode)


@pytest.mark.parametrize("mode", MODES)
async def test_route_default_and_pass_through(mode: str) -> None:
    out = await collect(route(lambda x: x % 4, {0: double}, default=neg), range(20), mode)
    check(out, [2 * x if x % 4 == 0 else -x for x in range(20)], mode)
    out = await collect(route(lambda x: x % 4, {0: double}), range(20), mode)
    check(out, [2 * x if x % 4 == 0 else x for x in range(20)], mode)


@pytest.mark.parametrize("mode", MODES)
async def test_route_branch_results_drop_and_expand(mode: str) -> None:
    @single_task
    def spread(x: int) -> list[int]:
        return [x] * (x % 3)

    out = await collect(route(lambda x: x % 2, {0: spread}), range(12), mode)
    expected: list[int] = []
    for x in range(12):
        expected.extend([x] * (x % 3) if x % 2 == 0 else [x])
    check(out, expected, mode)


async def test_a_branch_given_for_several_values_is_one_branch() -> None:
    stream = route(lambda x: x % 3, {0: double, 1: double}, name="r")(range(9))
    out = await stream.collect()
    assert out == [2 * x if x % 3 < 2 else x for x in range(9)]
    names = [s.name for s in stream.stats.stages]
    assert names == ["r", "r/double"]


@pytest.mark.parametrize("policy", ["emit", "skip_item", "fail"])
async def test_routes_key_raising_is_handled_by_the_stages_policy(policy: str) -> None:
    def key(x: int) -> int:
        if x == 4:
            raise LookupError("no key for 4")
        return x % 2

    stage = route(key, {0: double, 1: neg}, on_error=policy)
    if policy == "fail":
        with pytest.raises(LookupError, match="no key for 4"):
            await collect(stage, range(8))
        return
    out = await collect(stage, range(8))
    expected: list[Any] = [2 * x if x % 2 == 0 else -x for x in range(8)]
    if policy == "skip_item":
        del expected[4]
        assert out == expected
    else:
        assert type(out[4]) is Failure and out[4].item == 4
        assert out[:4] + out[5:] == expected[:4] + expected[5:]


# -- with_items ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_with_items_pairs_each_result_with_its_input_item(mode: str) -> None:
    @single_task
    def spread(x: int) -> list[int]:
        return [10 * x + i for i in range(x % 3)]

    @single_task
    def gen(x: int) -> Iterator[int]:
        yield x
        yield -x

    @batch_task(max_size=3)
    def total(batch: list[int]) -> int:
        return sum(batch)

    out = await collect(double.__or__(plus_one).with_items(), range(6), mode)
    check(out, [(x, 2 * x + 1) for x in range(6)], mode)
    out = await collect((double | spread).with_items(), range(6), mode)
    check(out, [(x, 20 * x + i) for x in range(6) for i in range(2 * x % 3)], mode)
    out = await collect((plus_one | gen).with_items(), range(4), mode)
    check(out, [(x, s * (x + 1)) for x in range(4) for s in (1, -1)], mode)
    out = await collect((plus_one | total).with_items(), range(7), mode)
    check(out, [([0, 1, 2], 6), ([3, 4, 5], 15), ([6], 7)], mode)


async def test_with_items_of_a_source_task_pairs_none() -> None:
    @single_task
    def source() -> Iterator[int]:
        yield from range(3)

    out = await (source | double).with_items()().collect()
    assert out == [(None, 0), (None, 2), (None, 4)]


@pytest.mark.parametrize("mode", MODES)
async def test_with_items_pairs_failures_and_keeps_a_checkpoint(mode: str, tmp_path: Any) -> None:
    @single_task(on_error="emit")
    def fails(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(x)
        return x

    out = await collect((plus_one | fails).with_items(), range(9), mode)
    assert len(out) == 9
    for item, value in out:
        if type(value) is Failure:
            assert value.item == item + 1 and (item + 1) % 3 == 0
        else:
            assert value == item + 1
    pipeline = (
        (plus_one | double)
        .with_items()
        .with_checkpoint(conveyor.Checkpoint(str(tmp_path / "run.db")))
    )
    out = await collect(pipeline, range(5), mode)
    check(out, [(x, 2 * (x + 1)) for x in range(5)], mode)


# -- order and executors ---------------------------------------------------------------


async def test_ordered_mode_keeps_input_order_whatever_the_branches_timing() -> None:
    @single_task
    async def slow_on_odd(x: int) -> int:
        await asyncio.sleep(0.002 * (x % 5))
        return x

    stage = parallel(slow_on_odd, double) | route(lambda p: p[0] % 2, {0: single_task(str)})
    out = await collect(stage, range(40))
    assert out == [str((x, 2 * x)) if x % 2 == 0 else (x, 2 * x) for x in range(40)]


EXECUTORS = ["thread", "process", "user_threads"]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("mode", MODES)
async def test_every_executor_runs_in_a_branch(executor: str, mode: str) -> None:
    pool = ThreadPoolExecutor(2) if executor == "user_threads" else None
    try:
        square = single_task(workers.square, executor=pool or executor)
        squares = batch_task(max_size=3, executor=pool or executor)(workers.squares)
        out = await collect(parallel(square, double | squares), range(10), mode)
        check(out, [(x * x, 4 * x * x) for x in range(10)], mode)
        out = await collect(route(lambda x: x % 2, {0: square}), range(10), mode)
        check(out, [x * x if x % 2 == 0 else x for x in range(10)], mode)
    finally:
        if pool is not None:
            pool.shutdown()
    assert pool_threads() == []


# -- statistics --------------------------------------------------------------------


async def test_statistics_list_branch_stages_with_their_counts() -> None:
    @single_task(on_error="skip_item")
    def skips(x: int) -> int:
        if x % 4 == 0:
            raise ValueError(x)
        return x

    @single_task(on_error="emit")
    def emits(x: int) -> int:
        if x % 5 == 0:
            raise ValueError(x)
        return x

    @single_task
    def twice(x: int) -> list[int]:
        return [x, x]

    stream = parallel(skips, emits | twice, name="p")(range(20))
    out = await stream.collect()
    assert len(out) == 20
    rows = {s.name: s for s in stream.stats.stages}
    assert list(rows) == ["p", "p/skips", "p/emits", "p/twice"]
    assert (rows["p"].items_in, rows["p"].items_out) == (20, 20)
    assert (rows["p/skips"].items_in, rows["p/skips"].items_out) == (20, 15)
    assert rows["p/skips"].skipped == 5
    assert (rows["p/emits"].items_in, rows["p/emits"].items_out) == (20, 20)
    assert rows["p/emits"].emitted == 4
    # (a Failure passes through a later stage: counted in and out, as failures_passed)
    assert (rows["p/twice"].items_in, rows["p/twice"].items_out) == (20, 36)
    assert rows["p/twice"].failures_passed == 4


# -- the window reaches into the branches ----------------------------------------------


class Gauge:
    """Counts calls running at once (the most seen: ``peak``)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.parametrize("kind", ["parallel", "route"])
@pytest.mark.parametrize("mode", MODES)
async def test_the_window_bounds_the_items_in_the_branches(kind: str, mode: str) -> None:
    gauge = Gauge()

    @single_task
    async def slow(x: int) -> int:
        gauge.enter()
        try:
            await asyncio.sleep(0.001 * (x % 3))
            return x
        finally:
            gauge.leave()

    stage = parallel(slow, plus_one) if kind == "parallel" else route(lambda x: 0, {0: slow})
    pipeline = (plus_one | stage).with_context(max_in_flight=8, execution_mode=mode)
    out = await pipeline(range(100)).collect()
    assert len(out) == 100
    assert 1 < gauge.peak <= 8


@pytest.mark.parametrize("mode", MODES)
async def test_the_byte_bound_holds_in_the_branches(mode: str) -> None:
    gauge = Gauge()

    @single_task(executor="thread:16")
    def blocking(x: int) -> int:
        gauge.enter()
        try:
            threading.Event().wait(0.002)
            return x
        finally:
            gauge.leave()

    pipeline = parallel(blocking, double).with_context(
        max_in_flight=1000, max_in_flight_bytes=40, item_weight=lambda _: 10, execution_mode=mode
    )
    out = await pipeline(range(60)).collect()
    check(out, [(x, 2 * x) for x in range(60)], mode)
    assert 1 < gauge.peak <= 4


@pytest.mark.parametrize("n", [10, 50, 200])
@pytest.mark.parametrize("window", [4, 16, 17])
@pytest.mark.parametrize("mode", MODES)
async def test_a_window_smaller_than_a_branchs_batch_neither_deadlocks_nor_loses(
    mode: str, window: int, n: int
) -> None:
    """The window is raised to hold a branch's batch (16), yet in ``route`` the items of
    other branches, and in an ordered run the items done behind an item still in a
    batch, hold some of it: the stall rule then flushes the branch's partial batch (it
    deadlocked: the calls waiting for their branches counted as work, so the run never
    looked stalled)."""
    batches: list[int] = []

    @batch_task(max_size=16)
    def squares(batch: list[int]) -> list[int]:
        batches.append(len(batch))
        return [x * x for x in batch]

    @single_task
    async def uneven(x: int) -> int:
        await asyncio.sleep(0.0005 * (x % 3))  # (items reach the branch stage out of order)
        return x + 1

    stages = [
        (parallel(squares, plus_one), [((x + 1) ** 2, x + 2) for x in range(n)], n),
        (
            route(lambda x: x % 2, {0: squares}),
            [(x + 1) ** 2 if (x + 1) % 2 == 0 else x + 1 for x in range(n)],
            n // 2,
        ),
        (
            route(lambda x: x % 3, {0: squares, 1: double & squares}),
            [
                (x + 1) ** 2
                if (x + 1) % 3 == 0
                else (2 * x + 2, (x + 1) ** 2)
                if (x + 1) % 3 == 1
                else x + 1
                for x in range(n)
            ],
            len([x for x in range(1, n + 1) if x % 3 < 2]),
        ),
    ]
    for stage, expected, fed in stages:
        batches.clear()
        pipeline = (uneven | stage).with_context(max_in_flight=window, execution_mode=mode)
        out = await asyncio.wait_for(pipeline(range(n)).collect(), 30)
        check(out, expected, mode)
        assert sum(batches) == fed and max(batches) <= 16


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["parallel", "route"])
async def test_the_remainder_rule_applies_in_a_branch(mode: str, kind: str) -> None:
    """A batch of no max_wait: the remainder of the input goes as a last, short batch."""
    batches: list[list[int]] = []

    @batch_task(max_size=4)
    def squares(batch: list[int]) -> list[int]:
        batches.append(list(batch))
        return [x * x for x in batch]

    stage = parallel(squares, neg) if kind == "parallel" else route(lambda x: 0, {0: squares})
    out = await (plus_one | stage).with_execution_mode(mode)(range(10)).collect()
    expected: list[Any] = [((x + 1) ** 2, -(x + 1)) for x in range(10)]
    if kind == "route":
        expected = [(x + 1) ** 2 for x in range(10)]
    check(out, expected, mode)
    assert sorted(len(b) for b in batches) == [2, 4, 4]


@pytest.mark.parametrize("mode", MODES)
async def test_nested_composition(mode: str) -> None:
    inner = route(lambda x: x % 2, {0: double & neg})
    outer = parallel(inner, route(lambda x: x % 3, {0: plus_one & double}, default=neg))
    out = await collect(plus_one | outer, range(12), mode)
    expected = []
    for x in range(1, 13):
        a: Any = (2 * x, -x) if x % 2 == 0 else x
        b: Any = (x + 1, 2 * x) if x % 3 == 0 else -x
        expected.append((a, b))
    check(out, expected, mode)


# -- every exit leaves nothing running ---------------------------------------------------


class Source:
    """A generator input that records whether it was closed."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n = n
        self.fail_at = fail_at
        self.closed = False

    def __iter__(self) -> Iterator[int]:
        try:
            for i in range(self.n):
                if i == self.fail_at:
                    raise OSError(f"source broke at {i}")
                yield i
        finally:
            self.closed = True

    async def aiter(self) -> AsyncIterator[int]:
        try:
            for i in range(self.n):
                await asyncio.sleep(0)
                if i == self.fail_at:
                    raise OSError(f"source broke at {i}")
                yield i
        finally:
            self.closed = True


def branch_of(kind: str, task: Any) -> Any:
    if kind == "parallel":
        return parallel(task, double)
    return route(lambda x: x % 2, {0: task, 1: plus_one | task})


async def nothing_left() -> None:
    """No task and no thread of conveyor's pools left. A run that was not closed
    explicitly (``break``) closes its pools in the background: threads take real time
    to end (their calls return), so this waits for them, up to 5 s."""
    await settle()
    for _ in range(500):
        if not leftover_tasks() and not pool_threads():
            break
        await asyncio.sleep(0.01)
    assert not leftover_tasks()
    assert pool_threads() == []


def blocking_branch(release: threading.Event, started: threading.Event) -> Any:
    @single_task(executor="thread:4")
    def blocking(x: int) -> int:
        started.set()
        release.wait(0.05)
        return x

    return blocking


@pytest.mark.parametrize("how", ["break", "aclose", "cancel", "error"])
@pytest.mark.parametrize("kind", ["parallel", "route"])
@pytest.mark.parametrize("source", ["sync", "async"])
async def test_early_exit_leaves_nothing_running(how: str, kind: str, source: str) -> None:
    release, started = threading.Event(), threading.Event()
    entered = asyncio.Event()

    @single_task
    async def slow(x: int) -> int:
        entered.set()
        await asyncio.sleep(0.01 * (x % 4))
        return x

    stage = branch_of(kind, slow | blocking_branch(release, started))
    feed = Source(10_000)
    items = iter(feed) if source == "sync" else feed.aiter()
    stream = (plus_one | stage).with_context(max_in_flight=16)(items)
    if how in ("break", "aclose"):
        got = 0
        async for _ in stream:
            got += 1
            if got == 5:
                break
        if how == "aclose":
            await stream.aclose()
        del stream
    elif how == "cancel":

        async def consume() -> None:
            async for _ in stream:
                pass

        consumer = asyncio.create_task(consume())
        await entered.wait()
        await asyncio.sleep(0.01)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    else:

        class Stop(Exception):
            pass

        with pytest.raises(Stop):
            async with stream:
                async for _ in stream:
                    raise Stop
    release.set()
    await nothing_left()
    assert feed.closed


@pytest.mark.parametrize("kind", ["parallel", "route"])
@pytest.mark.parametrize("mode", MODES)
async def test_an_error_in_a_branch_leaves_nothing_running(kind: str, mode: str) -> None:
    release, started = threading.Event(), threading.Event()

    @single_task(executor="thread:4")
    def breaks(x: int) -> int:
        if x == 30:
            raise ArithmeticError("thirty")
        threading.Event().wait(0.002)
        return x

    feed = Source(1000)
    stage = branch_of(kind, breaks | blocking_branch(release, started))
    with pytest.raises(ArithmeticError, match="thirty"):
        await (plus_one | stage).with_execution_mode(mode)(iter(feed)).collect()
    release.set()
    await nothing_left()
    assert feed.closed


@pytest.mark.parametrize("kind", ["parallel", "route"])
@pytest.mark.parametrize("source", ["sync", "async"])
async def test_a_failing_source_while_branch_calls_run_on_threads(kind: str, source: str) -> None:
    release, started = threading.Event(), threading.Event()
    feed = Source(1000, fail_at=40)
    items = iter(feed) if source == "sync" else feed.aiter()
    stage = branch_of(kind, blocking_branch(release, started))
    with pytest.raises(OSError, match="source broke at 40"):
        await (plus_one | stage).with_context(max_in_flight=16)(items).collect()
    assert started.is_set()
    release.set()
    await nothing_left()
    assert feed.closed


# -- types ---------------------------------------------------------------------------------

TYPES_SAMPLE = Path(__file__).parent / "typing" / "compose_types.py"


def test_mypy_infers_the_types_of_composed_stages() -> None:
    """``parallel(a, b)`` of ``Task[T, A]`` and ``Task[T, B]`` is
    ``SingleTask[T, tuple[A, B]]`` (``a & b`` too), ``combine``'s return type is the
    stage's, ``with_items()`` pairs."""
    report, status = mypy(str(TYPES_SAMPLE))
    assert status == 0, report
    # (the check can fail: a wrong expectation is reported)
    wrong = TYPES_SAMPLE.read_text().replace(
        "SingleTask[str, tuple[int, str]])", "SingleTask[str, tuple[str, int]])", 1
    )
    report, status = mypy("-c", wrong)
    assert status == 1 and "[assert-type]" in report


# -- more of the stage's rules -------------------------------------------------------------


@pytest.mark.parametrize("policy", ["emit", "skip_item", "fail"])
async def test_combine_raising_is_handled_by_the_stages_policy(policy: str) -> None:
    def combine(item: int, a: int, b: int) -> int:
        if item == 3:
            raise KeyError("no combination for 3")
        return a + b

    stage = parallel(double, neg, combine=combine, on_error=policy)
    if policy == "fail":
        with pytest.raises(KeyError, match="no combination for 3"):
            await collect(stage, range(6))
        return
    out = await collect(stage, range(6))
    if policy == "skip_item":
        assert out == [x for x in range(6) if x != 3]
    else:
        assert out[:3] + out[4:] == [0, 1, 2, 4, 5]
        assert type(out[3]) is Failure and out[3].item == 3


@pytest.mark.parametrize("mode", MODES)
async def test_upstream_failures_pass_a_branch_stage_untouched(mode: str) -> None:
    calls: list[int] = []

    @single_task(on_error="emit")
    def fails_on_even(x: int) -> int:
        if x % 2 == 0:
            raise ValueError(x)
        return x

    @single_task
    def seen(x: int) -> int:
        calls.append(x)
        return x

    for stage in (parallel(seen, neg), route(lambda x: 0, {0: seen})):
        calls.clear()
        out = await collect(fails_on_even | stage, range(10), mode)
        assert sorted(calls) == [1, 3, 5, 7, 9]
        failures = [v.item for v in out if type(v) is Failure]
        assert sorted(failures) == [0, 2, 4, 6, 8]
        if mode == "ordered":
            assert [v.item if type(v) is Failure else v for v in out] == [
                x if x % 2 == 0 else (x, -x) if stage.spec.branches.kind == "parallel" else x
                for x in range(10)
            ]


async def test_an_empty_input_and_a_source_task_before_a_branch_stage() -> None:
    assert await collect(parallel(double, neg), []) == []
    assert await collect(route(lambda x: x, {0: double}), []) == []

    @single_task
    async def numbers() -> AsyncIterator[int]:
        for i in range(5):
            yield i

    out = await (numbers | parallel(double, neg)).with_items()().collect()
    assert out == [(None, (2 * x, -x)) for x in range(5)]


async def test_retries_in_a_branch() -> None:
    attempts: Counter[int] = Counter()

    @single_task(retry_attempts=3, retry_delay=0)
    def flaky(x: int) -> int:
        attempts[x] += 1
        if attempts[x] < 3:
            raise ConnectionError(x)
        return x

    out = await collect(parallel(flaky, neg), range(5))
    assert out == [(x, -x) for x in range(5)]
    assert all(n == 3 for n in attempts.values())


async def test_a_batch_in_route_of_one_result_per_batch_goes_with_its_first_item() -> None:
    @batch_task(max_size=3)
    def total(batch: list[int]) -> int:
        return sum(batch)

    out = await collect(route(lambda x: 0, {0: total}), range(7))
    assert out == [0 + 1 + 2, 3 + 4 + 5, 6]


@pytest.mark.parametrize("mode", MODES)
async def test_with_items_through_branch_stages(mode: str) -> None:
    stage = plus_one | parallel(double, neg) | route(lambda p: p[0] % 4, {0: single_task(sum)})
    out = await collect(stage.with_items(), range(8), mode)
    expected = [
        (x, 2 * (x + 1) - (x + 1) if (2 * (x + 1)) % 4 == 0 else (2 * (x + 1), -(x + 1)))
        for x in range(8)
    ]
    check(out, expected, mode)


@pytest.mark.parametrize("executor", ["inline", "thread"])
@pytest.mark.parametrize("mode", MODES)
async def test_skip_item_in_a_branchs_batch_leaves_out_only_the_failing_item(
    mode: str, executor: str
) -> None:
    """A batch under ``skip_item`` in a branch is split until only the failing item is
    left out: the other items of the batch each get their own result (the run failed
    with "a batch task inside parallel() must return one result per item": the split
    batch's results were one list for the whole batch)."""
    seen: list[list[int]] = []

    @batch_task(max_size=4, on_error="skip_item", executor=executor)
    def squares(batch: list[int]) -> list[int]:
        seen.append(list(batch))
        if any(x % 5 == 0 for x in batch):
            raise ValueError(batch)
        return [x * x for x in batch]

    out = await collect(parallel(squares, neg), range(1, 23), mode)
    check(out, [(None if x % 5 == 0 else x * x, -x) for x in range(1, 23)], mode)
    assert any(len(b) == 1 for b in seen)  # (a split took place)
    out = await collect(route(lambda x: x % 2, {0: squares}), range(1, 23), mode)
    check(out, [x * x if x % 2 == 0 else x for x in range(1, 23) if x % 2 or x % 5], mode)
    stream = parallel(squares, neg, name="p")(range(1, 23))
    await stream.collect()
    rows = {s.name: s for s in stream.stats.stages}
    assert rows["p/squares"].skipped == 4 and rows["p/squares"].items_out == 22 - 4


@pytest.mark.parametrize("window", [1, 2, 3])
async def test_a_batch_after_a_branch_stage_is_not_cut_short(window: int) -> None:
    """In an ordered run, a batch after a branch stage gets its whole batches (the window
    is raised to hold one). A branch run that went idle once told the run at once, in
    the middle of its reader taking a result: the run looked stalled a moment before
    that item's result reached the batch, and flushed it short (batches of 1)."""
    sizes: list[int] = []

    @single_task
    async def later(x: int) -> int:
        await asyncio.sleep(0)
        return x

    @batch_task(max_size=2)
    async def pairs(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        return list(batch)

    stage = parallel(plus_one, later, combine=lambda x, *_: x) | pairs
    out = await stage.with_context(max_in_flight=window)(range(7)).collect()
    assert out == list(range(7))
    assert sizes == [2, 2, 2, 1]


@pytest.mark.parametrize("mode", MODES)
async def test_a_feedback_input_through_branches_with_batches(mode: str) -> None:
    """A ``Feedback`` input whose feed is empty, with nothing working, applies the
    remainder rule to the batches in branches too, and keeps the branches open for the
    items its results put back (it hung: the branches' partial batches waited for items
    only their own results would bring)."""

    @batch_task(max_size=3)
    def squares(batch: list[int]) -> list[int]:
        return [x * x for x in batch]

    async def crawl(stage: Any, first: list[int]) -> list[Any]:
        feed = conveyor.Feedback(first)
        got = []
        async for result in stage.with_execution_mode(mode)(feed):
            got.append(result)
            value = result[0] if isinstance(result, tuple) else result
            if 1 < value < 40:
                feed.put(value + 1)
        return got

    out = await asyncio.wait_for(crawl(parallel(double, squares), [1]), 10)
    assert out == [(2 * x, x * x) for x in (1, 3, 7, 15, 31)]
    out = await asyncio.wait_for(crawl(route(lambda x: x % 2, {0: squares}), [2, 3]), 10)
    assert sorted(out) == [3, 4, 5, 16, 17, 36, 37, 324, 1444]


@pytest.mark.parametrize("window", [1, 4, 7])
async def test_a_stall_flushes_a_branchs_batch_before_the_runs_own(window: int) -> None:
    """When items held behind a branch's partial batch fill the window, the run's last
    resort flushes that batch, not one of the run's own: its batches stay whole (they
    were cut short, [3, 3, 1, 3], and the short one's items pushed the input's end below
    min_size: items 10 and 11 went to the remainder rule; found by the model)."""
    sizes: list[int] = []

    @batch_task(max_size=3, min_size=3)
    def triples(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        return list(batch)

    @batch_task(max_size=4)
    def quads(batch: list[int]) -> list[int]:
        return [10 * x for x in batch]

    pipeline = triples | route(lambda x: x % 2, {0: quads})
    out = await pipeline.with_context(max_in_flight=window)(range(12)).collect()
    assert out == [10 * x if x % 2 == 0 else x for x in range(12)]
    assert sizes == [3, 3, 3, 3]


async def test_branch_stages_on_a_checkpointed_run_resume_with_their_items(tmp_path: Path) -> None:
    """A run with a checkpoint (and its results paired) through parallel and route: a
    second run over a longer input does only the new items."""

    @batch_task(max_size=3)
    def squares(batch: list[int]) -> list[int]:
        return [x * x for x in batch]

    stage = double | parallel(squares, neg) | route(lambda p: p[1] % 3, {0: single_task(sum)})
    pipeline = stage.with_checkpoint(conveyor.Checkpoint(str(tmp_path / "run.db")))

    def expected(x: int) -> Any:
        pair = ((2 * x) ** 2, -2 * x)
        return sum(pair) if pair[1] % 3 == 0 else pair

    assert await pipeline(range(10)).collect() == [expected(x) for x in range(10)]
    out = await pipeline.with_items()(range(13)).collect()
    assert out == [(x, expected(x)) for x in (10, 11, 12)]
