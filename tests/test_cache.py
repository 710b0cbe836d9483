"""The result cache (``cache=conveyor.Cache(...)``): hits across runs in memory and in
SQLite, expiry on the virtual clock, invalidation when the function changes, no sharing
across tasks, batch tasks per item, every executor, statistics, errors at call time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import workers

import conveyor
from conveyor import Cache, batch_task, single_task

calls: list[Any] = []


def counted(x: int) -> int:
    calls.append(x)
    return x * 10


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


async def test_memory_hits_across_runs() -> None:
    task = single_task(cache=Cache())(counted)
    assert await task(range(5)).collect() == [0, 10, 20, 30, 40]
    assert calls == [0, 1, 2, 3, 4]
    stream = task([3, 4, 5, 3])
    assert await stream.collect() == [30, 40, 50, 30]
    assert calls == [0, 1, 2, 3, 4, 5]  # only 5 was called
    stage = stream.stats.stages[0]
    assert (stage.cache_hits, stage.cache_misses) == (3, 1)
    assert stage.items_in == 4 and stage.items_out == 4


async def test_no_cache_no_figures() -> None:
    stream = single_task(counted)([1])
    await stream.collect()
    assert stream.stats.stages[0].cache_hits is None


async def test_sqlite_hits_across_runs_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    # Another process fills it: the same module-level function, so the same namespace.
    script = textwrap.dedent(
        f"""
        import asyncio, conveyor, workers
        task = conveyor.single_task(cache=conveyor.Cache({str(path)!r}))(workers.square)
        print(asyncio.run(task(range(4)).collect()))
        """
    )
    here = str(Path(__file__).parent)
    env_path = [here, str(Path(conveyor.__file__).parent.parent)]
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(env_path))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[0, 1, 4, 9]"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM conveyor_cache").fetchone() == (4,)
    db.close()
    stream = single_task(cache=Cache(path))(workers.square)(range(6))
    assert await stream.collect() == [0, 1, 4, 9, 16, 25]
    stage = stream.stats.stages[0]
    assert (stage.cache_hits, stage.cache_misses) == (4, 2)
    assert len(Cache(path)) == 6


async def test_sqlite_values_are_pickled(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")

    @single_task(cache=cache)
    def pair(x: int) -> dict[str, Any]:
        calls.append(x)
        return {"x": x, "list": [x] * 2}

    first = await pair([1, 2]).collect()
    again = await pair([1, 2]).collect()
    assert first == again == [{"x": 1, "list": [1, 1]}, {"x": 2, "list": [2, 2]}]
    assert calls == [1, 2]
    cache.clear()
    await pair([1]).collect()
    assert calls == [1, 2, 1]


@pytest.mark.looptime
async def test_ttl_expires_on_the_loop_clock() -> None:
    task = single_task(cache=Cache(ttl=10))(counted)
    await task([1]).collect()
    await asyncio.sleep(9)
    await task([1]).collect()  # a hit: 9 s < 10 s
    assert calls == [1]
    await asyncio.sleep(2)
    await task([1]).collect()  # expired: called again
    assert calls == [1, 1]


def _two_versions() -> tuple[Any, Any]:
    """Two functions of the same module and qualified name, different bodies (as a file
    edited between two runs)."""
    made = []
    for body in ("return x + 1", "return x + 2"):
        namespace: dict[str, Any] = {}
        source = f"def step(x):\n    {body}\n"
        code = compile(source, f"<step {body}>", "exec")
        import linecache

        linecache.cache[f"<step {body}>"] = (len(source), None, source.splitlines(True), "")
        exec(code, namespace)
        made.append(namespace["step"])
    return made[0], made[1]


async def test_changing_the_source_invalidates() -> None:
    cache = Cache()
    old, new = _two_versions()
    assert old.__qualname__ == new.__qualname__ and old.__module__ == new.__module__
    assert await single_task(cache=cache)(old)([1]).collect() == [2]
    assert await single_task(cache=cache)(new)([1]).collect() == [3]


async def test_version_invalidates() -> None:
    cache_v1, cache_v2 = Cache(version="1"), Cache(version="2")
    cache_v2._entries = cache_v1._entries  # (one store, two versions)
    await single_task(cache=cache_v1)(counted)([1]).collect()
    await single_task(cache=cache_v1)(counted)([1]).collect()
    assert calls == [1]
    await single_task(cache=cache_v2)(counted)([1]).collect()
    assert calls == [1, 1]


def other(x: int) -> int:
    return x * 10 + 1


async def test_no_key_collisions_across_tasks(tmp_path: Path) -> None:
    # (With one version given, only the tasks' names tell their entries apart.)
    for cache in (Cache(), Cache(tmp_path / "c.db"), Cache(version="1")):
        first = single_task(cache=cache)(counted)
        second = single_task(cache=cache)(other)
        assert await (first | second)([1, 2]).collect() == [101, 201]
        # 10 and 20 go to `other`; 1 and 2 to `counted`: the same keys never collide.
        assert await (second | first)([1, 2]).collect() == [110, 210]
        assert await first([1, 10]).collect() == [10, 100]


async def test_batch_tasks_per_item() -> None:
    seen: list[list[int]] = []

    @batch_task(max_size=4, cache=Cache())
    def tens(batch: list[int]) -> list[int]:
        seen.append(list(batch))
        return [x * 10 for x in batch]

    assert await tens(range(4)).collect() == [0, 10, 20, 30]
    stream = tens([5, 1, 6, 3])
    assert await stream.collect() == [50, 10, 60, 30]  # in order: hits and misses
    assert seen == [[0, 1, 2, 3], [5, 6]]  # only the misses were called
    assert (stream.stats.stages[0].cache_hits, stream.stats.stages[0].cache_misses) == (2, 2)
    assert await tens([3, 2]).collect() == [30, 20]
    assert len(seen) == 2  # all hits: no call


async def test_batch_must_return_one_result_per_item() -> None:
    @batch_task(max_size=2, cache=Cache())
    def total(batch: list[int]) -> int:
        return sum(batch)

    with pytest.raises(TypeError, match="one result per item"):
        await total([1, 2]).collect()


async def test_async_and_async_batch() -> None:
    @single_task(cache=Cache())
    async def slow(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return x + 1

    @batch_task(max_size=3, cache=Cache())
    async def slow_batch(batch: list[int]) -> list[int]:
        calls.append(tuple(batch))
        await asyncio.sleep(0)
        return [x * 2 for x in batch]

    pipeline = slow | slow_batch
    assert await pipeline([1, 2, 3]).collect() == [4, 6, 8]
    assert await pipeline([1, 2, 3]).collect() == [4, 6, 8]
    assert calls == [1, 2, 3, (2, 3, 4)]


@pytest.mark.parametrize("executor", [None, "thread", "process"])
async def test_every_executor(executor: str | None, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    task = single_task(executor=executor, cache=cache)(workers.square)
    first = task(range(20))
    assert await first.collect() == [x * x for x in range(20)]
    assert first.stats.stages[0].cache_misses == 20
    again = task(range(20))
    assert await again.collect() == [x * x for x in range(20)]
    assert (again.stats.stages[0].cache_hits, again.stats.stages[0].cache_misses) == (20, 0)


async def test_a_pool_of_ours(tmp_path: Path) -> None:
    """A concurrent.futures pool we pass: its Futures' results are stored by their done
    callbacks, in the pool's threads."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        task = single_task(executor=pool, cache=Cache(tmp_path / "c.db"))(workers.square)
        assert await task(range(10)).collect() == [x * x for x in range(10)]
        again = task(range(10))
        assert await again.collect() == [x * x for x in range(10)]
    assert again.stats.stages[0].cache_hits == 10


async def test_builtin_on_processes() -> None:
    task = single_task(executor="process", cache=Cache())(abs)
    assert await task([-1, -2]).collect() == [1, 2]
    stream = task([-2, -3])
    assert await stream.collect() == [2, 3]
    assert (stream.stats.stages[0].cache_hits, stream.stats.stages[0].cache_misses) == (1, 1)


async def test_hit_skips_retries_and_the_rate_limit() -> None:
    cache = Cache()
    failing = [True]

    @single_task(cache=cache, retry_attempts=3, retry_delay=0)
    def flaky(x: int) -> int:
        calls.append(x)
        if failing[0]:
            failing[0] = False
            raise ValueError(x)
        return x

    assert await flaky([7]).collect() == [7]
    assert calls == [7, 7]  # the failure was not cached, the success was
    assert await flaky([7]).collect() == [7]
    assert calls == [7, 7]

    limited = single_task(cache=cache, rate_limit=(1, 3600))(counted)
    assert await limited([1]).collect() == [10]
    # Every item a hit: none waits an hour for its turn.
    assert await asyncio.wait_for(limited([1, 1, 1]).collect(), 5) == [10, 10, 10]


async def test_none_and_failures_are_not_cached() -> None:
    @single_task(cache=Cache(), on_error="emit")
    def odd(x: int) -> int | None:
        calls.append(x)
        if x == 3:
            raise ValueError(x)
        return x if x % 2 else None

    for _ in range(2):
        results = await odd([1, 2, 3]).collect()
        assert results[0] == 1 and isinstance(results[1], conveyor.Failure)
    assert calls == [1, 2, 3, 2, 3]


async def test_lru_bound() -> None:
    task = single_task(cache=Cache(max_entries=2))(counted)
    await task([1, 2, 3]).collect()  # 1 evicted
    await task([3, 1]).collect()
    assert calls == [1, 2, 3, 1]


@pytest.mark.parametrize("path", [None, "c.db"])
async def test_equal_items_of_other_types_are_other_keys(path: str | None, tmp_path: Path) -> None:
    cache = Cache(None if path is None else tmp_path / path)
    task = single_task(cache=cache)(repr)
    assert await task([1, True, 1.0, (1,), (True,)]).collect() == [
        "1",
        "True",
        "1.0",
        "(1,)",
        "(True,)",
    ]


async def test_unstable_key_fails_naming_key() -> None:
    task = single_task(cache=Cache())(lambda x: x)
    with pytest.raises(TypeError, match=r"Cache\(key=\.\.\.\)"):
        await task([{"id": 1}]).collect()
    keyed = single_task(cache=Cache(key=lambda row: row["id"]))(lambda row: row["id"] * 2)
    assert await keyed([{"id": 1}, {"id": 1}]).collect() == [2, 2]


async def test_unhashable_custom_key_in_sqlite(tmp_path: Path) -> None:
    task = single_task(cache=Cache(tmp_path / "c.db", key=lambda x: [x]))(counted)
    with pytest.raises(TypeError, match="not a stable key"):
        await task([1]).collect()


def test_bad_options() -> None:
    with pytest.raises(TypeError, match=r"conveyor\.Cache"):
        single_task(cache={})  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="ttl"):
        Cache(ttl=0)
    with pytest.raises(TypeError, match="key="):
        Cache(key="id")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_entries"):
        Cache(max_entries=0)
    with pytest.raises(TypeError, match="version"):
        Cache(version=2)  # type: ignore[arg-type]

    def gen(x: int) -> Any:
        yield x

    with pytest.raises(TypeError, match="generator function and has cache"):
        single_task(cache=Cache())(gen)


async def test_sqlite_entries_are_written_a_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other processes see a run's entries a group at a time (one transaction each, not
    one per entry), and the last group at the run's end."""
    from conveyor._engine import _cache

    monkeypatch.setattr(_cache, "WRITE_GROUP", 10)
    cache = Cache(path=str(tmp_path / "c.db"))
    seen: list[int] = []

    @single_task(cache=cache)
    def double(x: int) -> int:
        return 2 * x

    @single_task
    def look(x: int) -> int:
        seen.append(len(cache))  # (a connection of its own: what other processes see)
        return x

    await (double | look)(range(25)).collect()
    assert seen == [(n + 1) // 10 * 10 for n in range(25)]
    assert len(cache) == 25


@pytest.mark.parametrize("executor", [None, "thread"])
async def test_hits_and_misses_count_items_not_attempts(executor: str | None) -> None:
    """A retry and a batch's isolation look the item up again: 10 items retried once
    counted 20 misses, and a batch isolated to its failing item counted hits twice."""
    tries: dict[int, int] = {}

    @single_task(
        cache=Cache(), retry_attempts=3, retry_delay=0, executor=executor, task_name="flaky"
    )
    def flaky(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        if tries[x] == 1:
            raise ValueError(x)
        return x

    stream = flaky(range(10))
    assert await stream.collect() == list(range(10))
    assert (stream.stats.stages[0].cache_hits, stream.stats.stages[0].cache_misses) == (0, 10)

    @batch_task(max_size=4, cache=Cache(), on_error="skip_item", task_name="batch")
    def batch(xs: list[int]) -> list[int]:
        if 5 in xs:
            raise ValueError(5)
        return [x + 100 for x in xs]

    for hits, misses in [(0, 12), (11, 1)]:
        stream = batch(range(12))
        assert len(await stream.collect()) == 11
        figures = stream.stats.stages[0]
        assert (figures.cache_hits, figures.cache_misses) == (hits, misses)


def scale(x: int, k: int) -> int:
    calls.append((x, k))
    return x * k


async def test_functions_made_with_other_values_do_not_share_entries(tmp_path: Path) -> None:
    """``make(2)`` and ``make(3)`` have one source and one qualified name: they shared
    entries, and ``make(3)`` answered with ``make(2)``'s results."""
    cache = Cache(tmp_path / "made.db")

    def make(k: int) -> conveyor.Pipeline:
        @single_task(cache=cache)
        def times(x: int) -> int:
            return x * k

        return conveyor.Pipeline([times])

    assert await make(2)([1, 2]).collect() == [2, 4]
    assert await make(3)([1, 2]).collect() == [3, 6]
    defaults = [single_task(cache=cache)(lambda x, k=k: x * k) for k in (2, 3)]
    assert [await task([5]).collect() for task in defaults] == [[10], [15]]
    partials = [single_task(cache=cache)(functools.partial(scale, k=k)) for k in (2, 3)]
    assert [await task([5]).collect() for task in partials] == [[10], [15]]
    # The same values again: hits (a partial's namespace holds no address).
    again = single_task(cache=cache)(functools.partial(scale, k=3))
    assert await again([5]).collect() == [15] and calls == [(5, 2), (5, 3)]
