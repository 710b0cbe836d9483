"""Bugs found hunting issue 22's composition features (``parallel``, ``route``, keyed
batches, ``merge``, ``with_items``) as a demanding user would attack them: each test
failed before its fix."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import conveyor
from conveyor import batch_task, parallel, route, single_task


@single_task
def same(x: int) -> int:
    return x


@batch_task(max_size=4)
def batch4(xs: list[int]) -> list[int]:
    return xs


@single_task
def twice(x: int) -> Iterator[int]:
    yield x
    yield x


@pytest.mark.parametrize("window", [1, 2, 4, 5])
@pytest.mark.parametrize(
    "stage",
    [
        route(lambda x: x % 2, {0: batch4, 1: same}),
        parallel(route(lambda x: x % 2, {0: batch4, 1: same}), same),
        twice | route(lambda x: x % 2, {0: batch4, 1: same}),
    ],
    ids=["route", "route-in-parallel", "generator-then-route"],
)
async def test_a_route_with_a_partial_batch_and_a_fast_branch_does_not_deadlock(
    stage: conveyor.SingleTask[int, int] | conveyor.Pipeline[int, int], window: int
) -> None:
    """Ordered, a small window: the even items wait in the batch branch's partial batch,
    the odd ones, done at once by the other branch, wait behind them for the consumer,
    and the window is full. The branches' last look for a stall came before the odd
    items' answers (or the run's own last look, a generator waiting for room,
    counted the calls waiting on the idle branches as work): nothing flushed the
    partial batch, and the run waited forever."""
    pipeline = stage.with_context(max_in_flight=window)
    results = await asyncio.wait_for(pipeline(range(10)).collect(), 10)
    name = stage.spec.name if isinstance(stage, conveyor.SingleTask) else ""
    if name.startswith("parallel"):
        assert results == [(x, x) for x in range(10)]
    elif name.startswith("route"):
        assert results == list(range(10))
    else:
        assert results == [x for x in range(10) for _ in (0, 1)]


def _crc(x: object) -> int:
    return zlib.crc32(repr(x).encode())


def _tagged(tag: int) -> Callable[[object], tuple[int, object]]:
    return lambda x: (tag, x)


def _failing(tag: int) -> Callable[[object], tuple[int, object]]:
    def call(x: object) -> tuple[int, object]:
        if _crc(x) % 4 == 0:
            raise ValueError(x)
        return (tag, x)

    return call


def _on_thread(tag: int) -> Callable[[object], tuple[int, object]]:
    def call(x: object) -> tuple[int, object]:
        time.sleep(_crc(x) % 10 / 10_000)
        return (tag, x)

    return call


def _expand(x: object) -> Iterator[tuple[int, int, object]]:
    for i in range(_crc(x) % 3):
        yield (81, i, x)


def _pair(x: object) -> list[tuple[int, object]]:
    return [(39, x), (40, x)]


def _filter(x: object) -> tuple[int, object] | None:
    return None if _crc(x) % 3 == 0 else (53, x)


def _batch(xs: list[object]) -> list[tuple[int, object]]:
    return [(48, x) for x in xs]


async def test_a_route_nested_in_a_parallel_branch_tells_its_stall_up() -> None:
    """A ``route`` inside a branch of a ``parallel``, one of its branches a partial
    batch: when only the route's calls were left, waiting on idle branches, the branch
    run in between counted them as work, so the outer run's stall check never saw its
    branches idle (and never heard of it: the middle run had nobody waiting for room),
    and the ordered run with a window of one waited forever."""
    inner = route(
        lambda x: _crc(x) % 4,
        {
            0: single_task(_failing(56), on_error="emit", task_name="e56")
            | single_task(_tagged(3), task_name="s3"),
            1: batch_task(max_size=3, task_name="b48")(_batch),
            2: single_task(_on_thread(30), executor="thread", task_name="t30")
            | single_task(_on_thread(41), executor="thread", task_name="t41"),
        },
        default=single_task(_failing(86), on_error="emit", task_name="e86")
        | single_task(_filter, task_name="f53"),
    )
    stage = parallel(
        single_task(_pair, task_name="l39"),
        single_task(_failing(4), on_error="skip_item", task_name="k4"),
        single_task(_expand, task_name="g81") | inner,
    )
    wide = await asyncio.wait_for(stage.with_context(max_in_flight=1000)(range(40)).collect(), 20)
    for _ in range(3):
        narrow = stage.with_context(max_in_flight=1)(range(40))
        results = await asyncio.wait_for(narrow.collect(), 20)
        assert list(map(repr, results)) == list(map(repr, wide))  # (Failures: by repr)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: parallel(same, 3), r"branch 1 of parallel\(\) must be a task .* got int: 3"),
        (
            lambda: parallel(same, lambda x: x),
            r"branch 1 of parallel\(\) must be a task .*decorate the function with @single_task",
        ),
        (lambda: same & 3, r"branch 1 of parallel\(\) must be a task .* got int: 3"),
        (lambda: route(len, {0: 5}), r"a branch of route\(\) must be a task .* got int: 5"),
        (
            lambda: route(len, {0: same}, default="x"),
            r"a branch of route\(\) must be a task .* got str: 'x'",
        ),
        (
            lambda: parallel(same, conveyor.Pipeline([same]).with_items()),
            r"branch 1 of parallel\(\) \(same\) runs as part of the run .* without "
            r"with_checkpoint\(\) or with_items\(\)",
        ),
        (
            lambda: (same | batch4) & (same | same),
            r"pipeline & pipeline is not an operator \(\(same \| batch4.*\) & \(same \| same\)\): "
            r"write conveyor.parallel\(first, second\)",
        ),
    ],
)
def test_a_branch_that_is_not_a_task_is_named_with_the_fix(
    make: Callable[[], object], message: str
) -> None:
    """A branch that is not a task nor a pipeline raised AttributeError ("'int' object
    has no attribute 'spec'"): its label was read before it was checked. ``p & p``
    said only "unsupported operand type(s)"."""
    with pytest.raises(TypeError, match=message):
        make()


def test_pipeline_and_task_still_compose() -> None:
    assert (same | batch4) & same is not None
    assert same & (same | batch4) is not None


# -- random nestings of parallel and route (seeds that deadlocked) -----------------------


def _canon(x: object) -> object:
    """A result with each list's order left out (in a branch, a list is in the order
    its branch made them, which an as-completed run or a thread may change)."""
    if isinstance(x, list):
        return ("list", sorted(repr(_canon(one)) for one in x))
    if isinstance(x, tuple):
        return tuple(_canon(one) for one in x)
    if isinstance(x, conveyor.Failure):
        return ("failure", x.task_name, repr(_canon(x.item)))
    return x


def _h(x: object) -> int:
    return zlib.crc32(repr(_canon(x)).encode())


def _leaf(rng: random.Random) -> Any:
    kind = rng.choice(["same", "async", "thread", "batch", "gen", "filter", "emit", "skip"])
    tag = rng.randrange(100)
    name = f"{kind}{tag}"
    if kind == "batch":
        return batch_task(max_size=rng.choice([2, 3, 5]), task_name=name)(
            lambda xs, t=tag: [(t, x) for x in xs]
        )
    if kind == "async":

        async def call(x: object, t: int = tag) -> object:
            await asyncio.sleep(_h(x) % 3 / 1000)
            return (t, x)

        return single_task(call, task_name=name)
    if kind == "gen":

        def expand(x: object, t: int = tag) -> Iterator[object]:
            for i in range(_h(x) % 3):
                yield (t, i, x)

        return single_task(expand, task_name=name)
    if kind in ("emit", "skip"):
        on_error = "emit" if kind == "emit" else "skip_item"
        return single_task(_failing(tag), on_error=on_error, task_name=name)
    if kind == "filter":
        return single_task(lambda x, t=tag: None if _h(x) % 3 == 0 else (t, x), task_name=name)
    executor = "thread" if kind == "thread" else None
    return single_task(_on_thread(tag), executor=executor, task_name=name)


def _line(rng: random.Random, depth: int) -> Any:
    stages = [_stage(rng, depth) for _ in range(rng.choice([1, 1, 2]))]
    return stages[0] if len(stages) == 1 else conveyor.Pipeline(stages)


def _stage(rng: random.Random, depth: int) -> Any:
    draw = rng.random()
    if depth < 2 and draw < 0.35:
        return parallel(*[_line(rng, depth + 1) for _ in range(rng.choice([2, 3]))])
    if depth < 2 and draw < 0.6:
        k = rng.choice([1, 2, 3])
        branches = {i: _line(rng, depth + 1) for i in range(k)}
        default = _line(rng, depth + 1) if rng.random() < 0.5 else None
        return route(lambda x, k=k: _h(x) % (k + 1), branches, default)
    return _leaf(rng)


@pytest.mark.parametrize("seed", [2, 12, 17, 35, 76])
async def test_random_nested_branches_with_small_windows(seed: int) -> None:
    """Random pipelines of nested ``parallel`` and ``route`` stages (batches, generators,
    filters, policies, threads), with windows of 1 to 3 items: the same results as with
    a wide window (in order; as a multiset as completed), and no deadlock. A branch
    told its stage it was idle while the joins it was through with were still to be
    told (``Branch.settle``, a loop turn later): then nobody looked again."""
    rng = random.Random(seed)
    pipeline = conveyor.Pipeline([_stage(rng, 0) for _ in range(rng.choice([1, 2, 3]))])
    wide = await asyncio.wait_for(
        pipeline.with_context(max_in_flight=1000)(range(30)).collect(), 20
    )
    expected = [repr(_canon(x)) for x in wide]
    for mode in ("ordered", "as_completed"):
        for window in (1, 2, 3):
            narrow = pipeline.with_context(max_in_flight=window, execution_mode=mode)
            got = [repr(_canon(x)) for x in await asyncio.wait_for(narrow(range(30)).collect(), 20)]
            if mode == "ordered":
                assert got == expected, (mode, window)
            else:
                assert sorted(got) == sorted(expected), (mode, window)


async def test_with_items_pairs_a_routed_batch_result_with_all_its_items() -> None:
    @batch_task(max_size=3)
    def count(xs: list[int]) -> int:
        return len(xs)

    """A batch's result that is not one per item went on as its first item's alone:
    with_items() paired it with that item, the batch's other items with nothing."""
    stage = route(lambda x: x % 2, {0: count}, default=same)
    pairs = await conveyor.Pipeline([stage]).with_items()(range(6)).collect()
    # As for a plain batch task: the batch's result with the batch's items.
    assert pairs == [([0, 2, 4], 3), (1, 1), (3, 3), (5, 5)]


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_a_routed_batch_result_holds_all_its_items_on_a_checkpoint(
    mode: str, tmp_path: Any
) -> None:
    """As completed, the batch's other items were recorded done as soon as their calls
    ended with nothing, before the batch's result was delivered: a run stopped in
    between, then resumed, sent the first item alone in a batch (a result of 1, not 3),
    the others' part of the result lost. (Ordered, their places in the order held them
    until the result was delivered; the result was paired with the first item only.)"""

    @batch_task(max_size=3)
    async def count(xs: list[int]) -> int:
        await asyncio.sleep(0.05)
        return -len(xs)

    stage = route(lambda x: x % 2, {0: count}, default=same)
    pipeline = (
        conveyor.Pipeline([stage])
        .with_execution_mode(mode)
        .with_checkpoint(conveyor.Checkpoint(str(tmp_path / "run.db")))
    )
    items = [1, 0, 2, 4, 3]
    stream = pipeline(items)
    async with stream:
        async for first in stream:
            assert first == 1
            await asyncio.sleep(0.3)  # (the batch of 0, 2 and 4 is sent off, answered)
            break
    pairs = await pipeline.with_items()(items).collect()
    assert sorted(pairs, key=repr) == [(3, 3), ([0, 2, 4], -3)]


async def test_a_routed_batch_result_for_several_items_inside_parallel_is_refused() -> None:
    """parallel() gives each item its branches' results: a result that stands for
    several items cannot be any one's, and fails the run as a batch task's does in a
    parallel branch. (It went to the batch's first item, ``None`` to the others.)"""

    @batch_task(max_size=3)
    def count(xs: list[int]) -> int:
        return -len(xs)

    stage = parallel(route(lambda x: x % 2, {0: count}, default=same), same)
    with pytest.raises(ValueError, match=r"gave -3 for the items \[0, 2, 4\] at once"):
        await stage(range(6)).collect()
    # Element-wise, each item has its own.
    each_one = batch_task(max_size=3)(lambda xs: [-x for x in xs])
    stage = parallel(route(lambda x: x % 2, {0: each_one}, default=same), same)
    assert await stage(range(4)).collect() == [(0, 0), (1, 1), (-2, 2), (3, 3)]


async def test_an_unhashable_route_key_is_named() -> None:
    """It said only "unhashable type: 'list'"."""
    stage = route(lambda x: [x], {0: same})
    with pytest.raises(TypeError, match=r"route's key function returned \[1\] for the item 1"):
        await stage([1]).collect()
    emitted = await route(lambda x: [x], {0: same}, on_error="emit")([1]).collect()
    assert isinstance(emitted[0], conveyor.Failure) and emitted[0].item == 1


async def test_a_parallel_batch_of_the_wrong_length_names_its_items() -> None:
    """It said "a result that belongs to several items (3) ... got 0": not which items,
    nor that 0 was one element of a list too short."""

    @batch_task(max_size=3)
    def short(xs: list[int]) -> list[int]:
        return xs[:-1]

    with pytest.raises(
        ValueError,
        match=r"branch 'short' gave 0 for the items \[0, 1, 2\] at once: a batch task inside "
        r"parallel\(\) must return a list of one result per item",
    ):
        await parallel(same, short)(range(3)).collect()


@pytest.mark.parametrize("how", ["break", "aclose", "cancel"])
async def test_leaving_a_run_with_nested_branches_closes_every_merged_input(how: str) -> None:
    """(Held: a regression test.) Nested branches with calls on threads and a batch
    with max_wait, over merged async inputs: whichever way the consumer leaves, every
    input is closed and no task of the run is left (the autouse fixture checks it)."""
    closed: list[str] = []

    async def numbers(tag: str) -> AsyncIterator[int]:
        try:
            for i in range(1000):
                await asyncio.sleep(0.001)
                yield i
        finally:
            closed.append(tag)

    @batch_task(max_size=3, max_wait=0.01)
    def batch(xs: list[int]) -> list[int]:
        return xs

    slow = single_task(_on_thread(1), executor="thread")
    stage = route(lambda x: x % 2, {0: parallel(slow, batch)}, default=route(len_of, {1: slow}))
    stream = stage(conveyor.merge(numbers("a"), numbers("b")))
    if how == "cancel":
        task = asyncio.ensure_future(stream.collect())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.aclose()
    else:
        async with stream:
            async for _ in stream:
                if how == "break":
                    break
                await stream.aclose()
    assert sorted(closed) == ["a", "b"]


def len_of(x: int) -> int:
    return 1


@pytest.mark.parametrize("kind", ["parallel", "route"])
def test_a_branch_stage_called_with_no_input_is_refused(kind: str) -> None:
    """``parallel(a, b)()`` gave each branch the run's placeholder for "no item" as if it
    were an item: ``[(no item (...), no item (...))]``."""
    stage = parallel(same, same) if kind == "parallel" else route(len_of, {1: same})
    with pytest.raises(TypeError, match=rf"'{kind}\(same.*cannot be called with no input"):
        stage()
    with pytest.raises(TypeError, match="cannot be called with no input"):
        (stage | same)()
