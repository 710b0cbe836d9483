"""Checkpoint and resume (``pipeline.with_checkpoint(conveyor.Checkpoint(path))``): an
input item is recorded done exactly when everything derived from it has left the run
(single, filter, list and generator expansions, batches, Failures under each policy);
a resumed run skips done items without calling any task; an exception midway, then a
resume, delivers the plain run's results with nothing delivered twice once recorded done.
(A child killed with SIGKILL and restarted until complete: tests/test_crash.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import Checkpoint, CheckpointBusy, Failure, batch_task, single_task

calls: list[Any] = []


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


def recorded(cp: Checkpoint) -> dict[str, str]:
    """key -> state, as stored."""
    with contextlib.closing(sqlite3.connect(cp.path)) as db:
        return dict(db.execute("SELECT key, state FROM conveyor_checkpoint"))


def keys(items: Any) -> set[str]:
    return {f"int:{x!r}" for x in items}


@single_task
def double(x: int) -> int:
    calls.append(x)
    return x * 2


@single_task
def evens_only(x: int) -> int | None:
    return x if x % 2 == 0 else None


@single_task
def pairs(x: int) -> list[tuple[int, int]]:
    return [(x, 0), (x, 1)] if x % 3 else []


@single_task
def counted(x: int) -> Iterator[int]:
    yield from range(x % 4)  # 0 to 3 results, lazily


@batch_task(max_size=4, min_size=3)
def sums(batch: list[Any]) -> list[Any]:
    return [sum(batch)]


@batch_task(max_size=5, executor="thread")
def plus_one(batch: list[int]) -> list[int]:
    return [x + 1 for x in batch]


async def test_done_is_recorded_for_each_shape(tmp_path: Path) -> None:
    shapes = {
        "single": conveyor.Pipeline([double]),
        "filter": double | evens_only,
        "list": pairs | single_task(lambda p: p[0]),
        "generator": conveyor.Pipeline([counted]),
        "batch on threads": double | plus_one,
        # the remainder rule drops the last items (min_size=3): they are done too
        "filter, then batch with a remainder": evens_only | sums,
    }
    for name, pipeline in shapes.items():
        cp = Checkpoint(tmp_path / f"{name}.db")
        plain = await pipeline.with_context(max_in_flight=8)(range(101)).collect()
        on_cp = pipeline.with_context(max_in_flight=8).with_checkpoint(cp)
        assert await on_cp(range(101)).collect() == plain, name
        assert recorded(cp) == dict.fromkeys(keys(range(101)), "done"), name
        summary = cp.summary()
        assert (summary.done, summary.failed, summary.last_run_outcome) == (
            101,
            0,
            "finished",
        ), name
        assert summary.last_run_started is not None and summary.last_run_ended is not None


async def test_batches_stay_whole(tmp_path: Path) -> None:
    """Batches in a small window: no barrier sends a partial batch off, so a checkpointed
    run's batches are the plain run's; every item is done."""
    pipeline = (double | plus_one).with_context(max_in_flight=8)
    cp = Checkpoint(tmp_path / "cp.db")
    plain_stream = pipeline(range(100))
    plain = await plain_stream.collect()
    stream = pipeline.with_checkpoint(cp)(range(100))
    assert await stream.collect() == plain
    assert recorded(cp) == dict.fromkeys(keys(range(100)), "done")
    sizes = stream.stats.stage("plus_one").mean_batch_size
    assert sizes == plain_stream.stats.stage("plus_one").mean_batch_size == 5


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_generators_in_a_small_window_behind_a_limit(tmp_path: Path, mode: str) -> None:
    """Generators of 20 in a window of 4, a stage at concurrency_limit=1: nothing stalls
    (the pump waiting at the crash bound is not working, and the stall rule applies)."""

    @single_task
    def twenty(x: int) -> Iterator[tuple[int, int]]:
        for i in range(20):
            yield (x, i)

    @single_task(concurrency_limit=1)
    async def one_at_a_time(p: tuple[int, int]) -> tuple[int, int]:
        await asyncio.sleep(0)
        return p

    pipeline = (twenty | one_at_a_time | counted_twice).with_context(
        max_in_flight=4, execution_mode=mode
    )
    plain = await asyncio.wait_for(pipeline(range(10)).collect(), 30)
    cp = Checkpoint(tmp_path / "cp.db")
    results = await asyncio.wait_for(pipeline.with_checkpoint(cp)(range(10)).collect(), 30)
    assert sorted(results) == sorted(plain)  # (as completed: in another order)
    assert recorded(cp) == dict.fromkeys(keys(range(10)), "done")


@single_task
def counted_twice(p: Any) -> Iterator[Any]:
    yield p
    yield p


async def test_a_run_without_checkpoint_pays_nothing() -> None:
    stream = conveyor.Pipeline([single_task(on_error="emit")(boom_on_7)])(range(3))
    await stream.collect()
    assert stream._run is not None and stream._run.checkpoint is None
    assert all(stage.policy.on_gave_up is None for stage in stream._run.stages)


def boom_on_7(x: int) -> int:
    if x % 10 == 7:
        raise ValueError(f"no {x}")
    return x


async def test_failures_are_recorded_under_each_policy(tmp_path: Path) -> None:
    emit = single_task(on_error="emit")(boom_on_7)
    cp = Checkpoint(tmp_path / "emit.db")
    results = await conveyor.Pipeline([emit]).with_checkpoint(cp)(range(30)).collect()
    assert [type(r) is Failure for r in results].count(True) == 3
    assert cp.failures() == {f"int:{x}": ("ValueError", f"no {x}") for x in (7, 17, 27)}
    assert cp.summary().done == 27

    skip = single_task(on_error="skip_item")(boom_on_7)
    cp = Checkpoint(tmp_path / "skip.db")
    assert len(await conveyor.Pipeline([skip]).with_checkpoint(cp)(range(30)).collect()) == 27
    assert set(cp.failures()) == {"int:7", "int:17", "int:27"}

    @batch_task(max_size=4, on_error="skip_item")
    def batch_boom(batch: list[int]) -> list[int]:
        return [boom_on_7(x) for x in batch]

    cp = Checkpoint(tmp_path / "batch.db")
    assert len(await conveyor.Pipeline([batch_boom]).with_checkpoint(cp)(range(30)).collect()) == 27
    assert set(cp.failures()) == {"int:7", "int:17", "int:27"}
    assert cp.summary().done == 27

    # on_error="raise": the run fails; the failing item is not done, nor anything after
    # the last drain; what was committed is skipped by the next run
    cp = Checkpoint(tmp_path / "raise.db")
    fail = conveyor.Pipeline([single_task(boom_on_7)]).with_context(max_in_flight=4)
    with pytest.raises(ValueError, match="no 7"):
        await fail.with_checkpoint(cp)(range(30)).collect()
    done = recorded(cp)
    assert "int:7" not in done and set(done) <= keys(range(7))
    assert cp.summary().last_run_outcome == "failed"


async def test_resume_skips_done_items_without_calls(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp.db")
    pipeline = conveyor.Pipeline([double]).with_checkpoint(cp)
    assert await pipeline(range(10)).collect() == [x * 2 for x in range(10)]
    calls.clear()
    stream = pipeline(range(15))
    assert await stream.collect() == [x * 2 for x in range(10, 15)]
    assert calls == list(range(10, 15))  # no call for the 10 done earlier
    assert stream.stats.done_earlier == 10
    assert stream.stats.stage("double").items_in == 5
    summary = cp.summary()
    assert (summary.done, summary.last_run_skipped) == (15, 10)


async def test_retry_failed_runs_recorded_failures_again(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp.db")
    flaky = conveyor.Pipeline([single_task(on_error="emit")(boom_on_7)])
    await flaky.with_checkpoint(cp)(range(20)).collect()
    assert set(cp.failures()) == {"int:7", "int:17"}
    # a plain resume skips the failures too
    assert await flaky.with_checkpoint(cp)(range(20)).collect() == []
    fixed = conveyor.Pipeline([double])
    assert await fixed.with_checkpoint(cp, retry_failed=True)(range(20)).collect() == [14, 34]
    assert cp.failures() == {}
    assert cp.summary().done == 20


async def test_one_run_per_checkpoint(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp.db")
    pipeline = conveyor.Pipeline([double]).with_checkpoint(cp)
    async with pipeline(range(100)) as first:
        assert await anext(first) == 0
        with pytest.raises(CheckpointBusy, match="in use by another run"):
            await anext(pipeline(range(5)))
        with pytest.raises(CheckpointBusy):
            cp.reset()
        # another Checkpoint object on the same file is refused too
        with pytest.raises(CheckpointBusy):
            await anext(conveyor.Pipeline([double]).with_checkpoint(Checkpoint(cp.path))(range(5)))
    assert cp.summary().last_run_outcome in {"closed", "failed"}
    cp.reset()
    assert cp.summary() == conveyor.CheckpointSummary(0, 0, None, None, None, 0)
    assert await pipeline(range(3)).collect() == [0, 2, 4]  # free again


async def test_keys(tmp_path: Path) -> None:
    rows = [{"id": i, "v": i * i} for i in range(5)]
    cp = Checkpoint(tmp_path / "cp.db")
    take_v = conveyor.Pipeline([single_task(lambda row: row["v"])])
    with pytest.raises(TypeError, match=r"key=lambda row: row\['id'\]"):
        await take_v.with_checkpoint(cp)(rows).collect()
    cp = Checkpoint(tmp_path / "keyed.db", key=lambda row: row["id"])
    assert await take_v.with_checkpoint(cp)(rows).collect() == [0, 1, 4, 9, 16]
    assert set(recorded(cp)) == keys(range(5))
    with pytest.raises(TypeError, match="Checkpoint"):
        conveyor.Pipeline([double]).with_checkpoint("cp.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="source task"):
        conveyor.Pipeline([double]).with_checkpoint(cp)()


def origin(result: Any) -> int:
    return result[0] if isinstance(result, tuple) else result // 2


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_exception_midway_then_resume(tmp_path: Path, mode: str) -> None:
    """An exception thrown into the run (by its consumer, or by a task) at a random
    point; resume until complete: the union of what was delivered is the plain run's,
    and nothing is delivered twice once its item was recorded done."""

    async def slow_pairs(x: int) -> list[tuple[int, int]]:
        await asyncio.sleep(random.random() / 1000)
        return [(x, 0), (x, 1)] if x % 5 else []

    pipeline = (single_task(slow_pairs) | single_task(lambda p: p)).with_context(
        max_in_flight=16, execution_mode=mode
    )
    plain = sorted(await pipeline(range(300)).collect())
    rng = random.Random(20)
    for trial in range(3):
        cp = Checkpoint(tmp_path / f"{trial}.db")
        delivered: list[Any] = []
        done_before: set[str] = set()
        for attempt in range(20):
            done_before = set(recorded(cp))
            stop = rng.randrange(1, 400)
            run: list[Any] = []
            try:
                async with pipeline.with_checkpoint(cp)(range(300)) as stream:
                    async for result in stream:
                        assert f"int:{origin(result)}" not in done_before
                        run.append(result)
                        if len(run) == stop and attempt < 4:
                            raise RuntimeError("thrown into the run")
            except RuntimeError:
                pass
            delivered += run
            repeated = {origin(r) for r in run} & {origin(r) for r in delivered[: -len(run)]}
            assert len(repeated) <= 16  # at most the window runs again
            if cp.summary().last_run_outcome == "finished":
                break
        assert sorted(set(delivered)) == plain
