"""``Feedback``: an input the run's results extend; the run ends when no work is left."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import run_on_virtual_clock
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor import Feedback, batch_task, single_task


def children(n: int, below: int) -> list[int]:
    return [c for c in (2 * n + 1, 2 * n + 2) if c < below]


@single_task
async def visit(n: int) -> int:
    await asyncio.sleep(0)
    return n


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_the_consumer_feeds_the_run_until_no_work_is_left(mode: str) -> None:
    feed = Feedback([0])
    stream = visit(feed) if mode == "ordered" else visit.as_completed(feed)
    seen = []
    async for n in stream:
        seen.append(n)
        feed.extend(children(n, 300))
    assert sorted(seen) == list(range(300))
    assert feed.ended and not feed.queue and feed.accepted == 300


async def test_unique_drops_what_was_seen_and_max_items_caps() -> None:
    graph = {0: [1, 2], 1: [0, 2, 3], 2: [3, 0], 3: [3, 1]}  # cycles everywhere
    feed = Feedback([0], unique=True)
    seen = [n async for n in _walk(feed, graph)]
    assert sorted(seen) == [0, 1, 2, 3] and feed.dropped > 0

    capped = Feedback([0], max_items=50)
    assert (
        len([n async for n in _walk(capped, {n: children(n, 10**6) for n in range(10**4)})]) == 50
    )
    assert capped.dropped > 0


async def _walk(feed: Feedback[int], graph: dict[int, list[int]]) -> Any:
    async for n in visit(feed):
        feed.extend(graph[n])
        yield n


async def test_tasks_can_feed_the_run_on_the_loop_and_from_threads() -> None:
    feed: Feedback[int] = Feedback([0])

    @single_task
    async def on_loop(n: int) -> int:
        feed.extend(children(n, 100) if n % 2 == 0 else [])
        return n

    @single_task(executor="thread:4")
    def on_thread(n: int) -> int:
        feed.extend(children(n, 100) if n % 2 else [])  # (handed to the loop, in order)
        return n

    results = await (on_loop | on_thread)(feed).collect()
    assert sorted(results) == list(range(100))


async def test_partial_batches_are_flushed_when_only_they_are_left() -> None:
    @batch_task(max_size=8)
    def group(ns: list[int]) -> list[tuple[int, ...]]:
        return [tuple(ns)]

    feed = Feedback([0])
    out: list[int] = []
    async for batch in (visit | group)(feed):
        out.extend(batch)
        for n in batch:
            feed.extend(children(n, 50))
    assert sorted(out) == list(range(50))


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_the_remainder_rule_is_the_same_as_for_a_list(mode: str) -> None:
    """One rule: a Feedback's last partial batch below min_size is dropped and counted,
    as a list's is (it used to be sent off: [(1, 2, 3), (4,)])."""

    @batch_task(min_size=3)
    def group(ns: list[int]) -> tuple[int, ...]:
        return tuple(ns)

    for source in ([1, 2, 3, 4], Feedback([1, 2, 3, 4])):
        stream = group.with_execution_mode(mode)(source)
        assert await stream.collect() == [(1, 2, 3)]
        assert stream.stats.stages[0].remainder_dropped == 1


async def test_a_remainder_of_min_size_goes_and_its_results_feed_on() -> None:
    """At the feed's end a remainder of at least min_size is sent off; what its results
    put keeps the run going."""

    @batch_task(min_size=2, max_size=4)
    def group(ns: list[int]) -> tuple[int, ...]:
        return tuple(ns)

    feed = Feedback([1, 2, 3, 4, 5, 6])
    out = []
    async for batch in group(feed):
        out.append(batch)
        if batch == (5, 6):
            feed.extend([7, 8, 9])
    assert out == [(1, 2, 3, 4), (5, 6), (7, 8, 9)]


async def test_a_feedback_input_is_weighed() -> None:
    """40 items of 1 MiB under a 4 MiB byte bound: a few at a time, as a generator of the
    same items is (a Feedback's items used to be all admitted at once)."""
    most = 0
    now = 0

    @single_task
    async def hold(block: bytes) -> int:
        nonlocal most, now
        now += 1
        most = max(most, now)
        await asyncio.sleep(0.001)
        now -= 1
        return len(block)

    blocks = [bytes(1 << 20) for _ in range(40)]
    stream = hold.with_context(max_in_flight_bytes=4 << 20)(Feedback(blocks))
    assert await stream.collect() == [1 << 20] * 40
    assert most <= 4
    assert stream.stats.input_admitted_at_once == 4


async def test_a_consumer_busy_elsewhere_is_waited_for() -> None:
    feed = Feedback([0])
    seen = []
    async for n in visit(feed):
        seen.append(n)
        await asyncio.sleep(0.005)  # e.g. writing the page: the run must not end meanwhile
        feed.extend(children(n, 20))
    assert sorted(seen) == list(range(20))


async def test_empty_and_filtered_feeds_end() -> None:
    assert await visit(Feedback([])).collect() == []

    @single_task
    def nothing(n: int) -> None:
        return None

    feed = Feedback(range(10))
    assert await nothing(feed).collect() == []


async def test_a_feed_serves_one_run() -> None:
    feed = Feedback([0, 1, 2])
    async with visit(feed) as stream:
        async for _ in stream:
            break
    with pytest.raises(RuntimeError, match="this Feedback's run has ended"):
        feed.put(3)
    with pytest.raises(RuntimeError, match="a Feedback serves one run"):
        await visit(feed).collect()
    with pytest.raises(ValueError, match="max_items must be an int >= 0"):
        Feedback(max_items=-1)


@settings(max_examples=60, deadline=None)
@given(
    edges=st.dictionaries(
        st.integers(0, 30), st.lists(st.integers(0, 30), max_size=4), max_size=31
    ),
    delays=st.lists(st.sampled_from([0.0, 0.001, 0.01, 0.1]), min_size=1, max_size=8),
    batch=st.one_of(st.none(), st.integers(1, 5)),
    ordered=st.booleans(),
    plain=st.booleans(),
    window=st.sampled_from([1, 2, 5, 1000]),
)
def test_every_reachable_node_exactly_once(
    edges: dict[int, list[int]],
    delays: list[float],
    batch: int | None,
    ordered: bool,
    plain: bool,
    window: int,
) -> None:
    """A random graph walked from 0, through random stages, against a plain BFS."""
    reachable, todo = {0}, [0]
    while todo:
        for m in edges.get(todo.pop(), []):
            if m not in reachable:
                reachable.add(m)
                todo.append(m)
    seen: list[int] = []
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        feed = Feedback([0], unique=True)

        async def slow(n: int) -> int:
            await asyncio.sleep(delays[n % len(delays)])
            return n

        stages = single_task(slow) | single_task(lambda n: n) if plain else single_task(slow)
        if batch is not None:
            stages = stages | batch_task(max_size=batch)(lambda ns: ns)
        stream = stages.with_context(max_in_flight=window)(feed)
        if not ordered:
            stream = stream.as_completed()
        async for n in stream:
            seen.append(n)
            feed.extend(edges.get(n, []))

    run_on_virtual_clock(main(), errors)
    assert not errors
    assert sorted(seen) == sorted(reachable)


async def test_unhashable_items_of_a_unique_feed_name_key_and_the_item() -> None:
    """A bare ``TypeError: unhashable type`` said neither what needs hashing nor how to
    fix it: the constructor, ``put`` (on the loop and from a task's thread) name ``key=``
    and the item."""
    with pytest.raises(TypeError, match=r"unique=True.*item \[1, 2\] \(list\).*key="):
        Feedback([[1, 2]], unique=True)
    feed: Feedback[Any] = Feedback(unique=True)
    with pytest.raises(TypeError, match=r"item \{'url': 'a'\} \(dict\).*key=lambda item"):
        feed.put({"url": "a"})
    by_key: Feedback[Any] = Feedback(key=lambda item: item)
    with pytest.raises(TypeError, match=r"key= function returned dict.*for the item"):
        by_key.put({"url": "a"})
    assert Feedback([[1, 2], [1, 2]], key=tuple).accepted == 1  # the fix it names

    errors: list[BaseException] = []

    @single_task(executor="thread:1")
    def grows(n: int) -> int:
        if n == 0:
            try:
                feed.put([n])
            except TypeError as exc:
                errors.append(exc)
        return n

    feed = Feedback([0], unique=True)
    assert await grows(feed).collect() == [0]
    [error] = errors  # raised in the thread that put it, not lost on the loop
    assert "key=" in str(error) and "[0]" in str(error)
