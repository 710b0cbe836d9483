"""Bugs found in a second hunt on issue 22's composition features (keyed batches,
``route`` with a whole-batch result, ``with_items()``, checkpoints, timed calls): each
test failed before its fix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor import batch_task, route, single_task


@single_task
def same(x: int) -> int:
    return x


async def _stop_after(pipeline: conveyor.Pipeline[Any, Any], items: list[Any], k: int) -> list[Any]:
    """The first ``k`` pairs of a run of ``pipeline``, then the consumer leaves (after a
    pause in which every batch sent off is answered)."""
    got: list[Any] = []
    stream = pipeline(items)
    async with stream:
        async for pair in stream:
            got.append(pair)
            if len(got) == k:
                await asyncio.sleep(0.2)
                break
    return got


@pytest.mark.parametrize("nested", [False, True])
async def test_a_routed_batch_result_taken_leaves_its_other_items_done(
    nested: bool, tmp_path: Any
) -> None:
    """Ordered: the batch's result goes at its first item's place and stands for its
    other items too, whose own calls end with nothing; but their empty places, behind
    items not taken yet, held them in the run until the reader passed them. A run left
    after the result was taken, then resumed, did those items again: their part of the
    result was delivered twice (item 2, here, in a batch of its own)."""

    @batch_task(max_size=2)
    def count(xs: list[int]) -> int:
        return -len(xs)

    stage: Any = route(lambda x: x % 2, {0: count}, default=same)
    if nested:
        stage = route(lambda x: x < 10, {True: stage})
    pipeline = (
        conveyor.Pipeline([stage])
        .with_checkpoint(conveyor.Checkpoint(str(tmp_path / "run.db")))
        .with_items()
    )
    items = [0, 1, 2, 3]
    first = await _stop_after(pipeline, items, 1)
    assert first == [([0, 2], -2)]
    assert await pipeline(items).collect() == [(1, 1), (3, 3)]


@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_a_timed_call_that_times_out_off_the_loop_has_its_latency(executor: str) -> None:
    """A call sent to a thread or a process is timed until its Answer is settled; a
    timeout cancels the Answer, and a cancelled Answer told no one: the sampled call's
    latency was never recorded (``-`` in stream.stats, for a stage whose calls all time
    out), where a call on the loop that times out has its time recorded."""
    stage = single_task(executor=executor, timeout=0.3, on_error="emit")(_sleep_long)
    stream = stage.with_context(max_in_flight=1)([1, 2])
    results = await stream.collect()
    assert all(isinstance(one, conveyor.Failure) for one in results)
    latency = stream.stats.stage("_sleep_long").latency
    assert latency.samples >= 1
    assert latency.max is not None and 0.25 < latency.max < 5


def _sleep_long(x: int) -> int:
    import time

    time.sleep(1.0)
    return x


@batch_task(max_size=3, key=lambda x: x % 3, max_keys=1)
async def _evicting(xs: list[int]) -> int:
    await asyncio.sleep(0.005)
    return -len(xs)


@batch_task(max_size=3, key=lambda x: x % 4, max_keys=2)
async def _keyed_gen(xs: list[int]) -> Any:
    await asyncio.sleep(0.005)
    yield -len(xs)


@batch_task(max_size=3, on_error="emit")
async def _emitting(xs: list[int]) -> int:
    await asyncio.sleep(0.005)
    if 4 in xs:
        raise ValueError(xs)
    return -len(xs)


def _route(branch: Any) -> Any:
    return route(lambda x: x % 2, {0: branch}, default=same)


_SHAPES: dict[str, Callable[[], Any]] = {
    "keyed-evicting": lambda: conveyor.Pipeline([_evicting]),
    "route-keyed": lambda: conveyor.Pipeline([_route(_evicting)]),
    "route-keyed-generator": lambda: conveyor.Pipeline([_route(_keyed_gen)]),
    "route-emit": lambda: conveyor.Pipeline([_route(_emitting)]),
    "route-in-route": lambda: conveyor.Pipeline(
        [route(lambda x: x % 3, {0: _route(_evicting)}, default=same)]
    ),
    "route-pipeline-branch": lambda: conveyor.Pipeline([_route(same | _evicting | same)]),
}


def _labels(label: Any) -> list[Any]:
    return [one for part in label for one in _labels(part)] if isinstance(label, list) else [label]


@pytest.mark.parametrize("shape", sorted(_SHAPES))
@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_stopped_and_resumed_every_item_delivered_once(
    shape: str, mode: str, tmp_path: Any
) -> None:
    """Keyed batches (evicted by ``max_keys``) and routed whole-batch results, on a
    checkpoint, with ``with_items()``: a run left after k results, then resumed with the
    same input, delivers each item's part exactly once over the two runs (no item
    recorded done before the result standing for it is taken, none held after)."""
    items = list(range(9))
    for window in (1, 3):
        for k in (1, 3):
            where = tmp_path / f"{window}-{k}.db"
            pipeline = (
                _SHAPES[shape]()
                .with_execution_mode(mode)
                .with_context(max_in_flight=window)
                .with_checkpoint(conveyor.Checkpoint(str(where)))
                .with_items()
            )
            first = await _stop_after(pipeline, items, k)
            second = await asyncio.wait_for(pipeline(items).collect(), 20)
            labels = sorted(one for label, _ in first + second for one in _labels(label))
            assert labels == items, (window, k, first, second)


async def test_an_error_of_route_key_or_parallel_combine_names_which() -> None:
    """What route's key function or parallel's combine raised was noted only as
    "raised by task 'route(same)' on 1": as if a branch had raised. The note names the
    parameter (and, for combine=, how it is called)."""

    def key(x: int) -> int:
        raise LookupError(x)

    with pytest.raises(LookupError) as caught:
        await route(key, {0: same})([1]).collect()
    notes = "\n".join(caught.value.__notes__)
    assert "key=" in notes and "route(same)" in notes and "on 1" in notes

    def combine(item: int, a: int) -> int:  # (one result too few)
        return a

    with pytest.raises(TypeError) as wrong:
        await conveyor.parallel(same, same, combine=combine)([1]).collect()
    notes = "\n".join(wrong.value.__notes__)
    assert "combine=" in notes and "combine(item, *results)" in notes and "2 branches" in notes


async def test_a_failed_checkpointed_run_delivers_nothing_it_cannot_record(tmp_path: Any) -> None:
    """As completed, the results ready when the run failed were still handed to the
    consumer before the error, but the checkpoint records nothing once the run is
    closed: they were delivered and not recorded done, and the next run did their items
    again (here 1, 2, 3, 4, 6, 7 twice; first found through a route, whose default
    branch's results come in bursts)."""
    failing = [True]

    @single_task
    async def f(x: int) -> int:
        if x == 5:
            await asyncio.sleep(0.05)
            if failing[0]:
                raise ValueError(x)
        return x

    pipeline = f.with_execution_mode("as_completed").with_checkpoint(
        conveyor.Checkpoint(str(tmp_path / "run.db"))
    )
    first: list[int] = []
    with pytest.raises(ValueError):
        async for result in pipeline(range(8)):
            first.append(result)
            if len(first) == 1:
                await asyncio.sleep(0.2)  # (the others are ready, then 5 fails the run)
    failing[0] = False
    second = await pipeline(range(8)).collect()
    assert sorted(first + second) == list(range(8)), (first, second)
