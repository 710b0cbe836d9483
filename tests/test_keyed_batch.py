"""Keyed batch stages (``@batch_task(key=..., max_keys=...)``, ``conveyor._engine._batch``).

One open batch per key: a batch holds one key's items and reaches ``max_size`` per key;
``max_wait`` and ``min_size`` per key; at most ``max_keys`` open, the least recently fed
flushed first (whatever its size); the remainder rule per key; ordered output order; a
key function that raises, under each ``on_error``; thread and process executors; a window
smaller than the keys' batches never deadlocks (the stall rule); options checked at
decoration time; statistics and ``to_mermaid``. The random pipelines with keyed batches
against the model are in tests/test_model.py. Timing tests run on looptime's virtual
clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import conveyor
from conveyor import BatchTask, Failure, Pipeline, batch_task, single_task

MODES = ["ordered", "as_completed"]


def in_mode(task: Any, mode: str, **context: Any) -> Pipeline[Any, Any]:
    return Pipeline([task]).with_context(execution_mode=mode, **context)


async def timed_input(schedule: list[tuple[float, Any]]) -> AsyncIterator[Any]:
    """Yield each item at its (virtual) time, relative to the start."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at, item in schedule:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        yield item


def parity(x: int) -> int:
    return x % 2


def tens(x: int) -> int:
    return x // 10


# -- batches per key ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_each_batch_holds_one_key_and_fills_to_max_size_per_key(mode: str) -> None:
    calls: list[list[int]] = []

    @batch_task(max_size=3, key=parity)
    def record(batch: list[int]) -> list[int]:
        calls.append(batch)
        return batch

    results = await in_mode(record, mode)(range(10)).collect()
    assert sorted(results) == list(range(10))
    assert calls == [[0, 2, 4], [1, 3, 5], [6, 8], [7, 9]]  # (remainders: end of input)


@pytest.mark.looptime
@pytest.mark.parametrize("mode", MODES)
async def test_max_wait_counts_from_each_keys_first_item(mode: str) -> None:
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, list[int]]] = []

    @batch_task(max_size=10, max_wait=1, key=tens)
    def record(batch: list[int]) -> list[int]:
        calls.append((round(loop.time() - start, 6), batch))
        return batch

    start = loop.time()
    # key 0 opens at 0 s, key 1 at 0.5 s: each goes 1 s after its own first item.
    source = timed_input([(0, 1), (0.5, 11), (0.7, 2), (0.9, 12), (5, 3)])
    results = await in_mode(record, mode)(source).collect()
    assert sorted(results) == [1, 2, 3, 11, 12]
    assert calls == [(1, [1, 2]), (1.5, [11, 12]), (5, [3])]


@pytest.mark.looptime
async def test_max_wait_flushes_a_key_only_with_min_size_items() -> None:
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, list[int]]] = []

    @batch_task(min_size=2, max_size=10, max_wait=1, key=tens)
    def record(batch: list[int]) -> list[int]:
        calls.append((round(loop.time() - start, 6), batch))
        return batch

    start = loop.time()
    # At 1 s key 0 has 2 items (flushed), key 1 has 1 (waits: its time is up, so its
    # second item sends it off at once, at 3 s).
    source = timed_input([(0, 1), (0, 11), (0.5, 2), (3, 12), (4, 13)])
    assert await record(source).collect() == [1, 2, 11, 12]
    assert calls == [(1, [1, 2]), (3, [11, 12])]  # [13]: the remainder, below min_size


@pytest.mark.parametrize("mode", MODES)
async def test_max_keys_flushes_the_least_recently_fed_batch_whatever_its_size(
    mode: str,
) -> None:
    calls: list[list[int]] = []

    @batch_task(min_size=3, max_size=5, key=tens, max_keys=2)
    def record(batch: list[int]) -> list[int]:
        calls.append(batch)
        return batch

    # keys 0, 1 open; 0 fed again (1 is now the least recently fed); key 2 arrives: the
    # batch of key 1 goes (one item, below min_size); then key 3: key 0's goes.
    items = [1, 11, 2, 21, 31, 32, 33]
    results = await in_mode(record, mode)(items).collect()
    assert calls == [[11], [1, 2], [31, 32, 33]]  # [21]: the remainder, dropped
    assert sorted(results) == [1, 2, 11, 31, 32, 33]
    stage = record  # (the statistics count what the remainder rule dropped)
    assert stage.max_keys == 2


async def test_the_remainder_rule_applies_per_key() -> None:
    calls: list[list[int]] = []

    @batch_task(min_size=2, max_size=4, key=tens)
    def record(batch: list[int]) -> list[int]:
        calls.append(batch)
        return batch

    stream = record([1, 11, 21, 2, 22, 3])  # key 0: 3 items, key 1: 1, key 2: 2
    assert await stream.collect() == [1, 2, 3, 21, 22]
    assert calls == [[1, 2, 3], [21, 22]]
    assert stream.stats.stages[0].remainder_dropped == 1
    assert stream.stats.stages[0].batches == 2


async def test_ordered_results_keep_input_order_at_each_batchs_first_item() -> None:
    @batch_task(max_size=2, key=parity)
    async def slow_odds(batch: list[int]) -> list[int]:
        await asyncio.sleep(0.01 if batch[0] % 2 else 0)
        return [x * 10 for x in batch]

    # batches [0, 2], [1, 3], [4, 6], [5]: each batch's results at its first item's place
    assert await slow_odds(range(7)).collect() == [0, 20, 10, 30, 40, 60, 50]


async def test_failures_from_an_earlier_stage_come_after_the_open_batches() -> None:
    @single_task(on_error="emit")
    def fail_on_5(x: int) -> int:
        if x == 5:
            raise ValueError(x)
        return x

    @batch_task(max_size=3, key=parity)
    def ident(batch: list[int]) -> list[int]:
        return batch

    got = await (fail_on_5 | ident)(range(9)).collect()
    shown = [("F", v.item) if isinstance(v, Failure) else v for v in got]
    # batches [0, 2, 4] (opened at 0), [1, 3, 7] (at 1), [6, 8] (at 6); the Failure of 5
    # arrives while [6, 8] is not open yet: after the two open batches' places.
    assert shown == [0, 2, 4, 1, 3, 7, ("F", 5), 6, 8]


async def test_failures_beyond_the_window_send_the_oldest_batch_off() -> None:
    @single_task(on_error="emit")
    def fail_big(x: int) -> int:
        if x >= 10:
            raise ValueError(x)
        return x

    sizes: list[list[int]] = []

    @batch_task(max_size=4, key=parity)
    def ident(batch: list[int]) -> list[int]:
        sizes.append(batch)
        return batch

    items = [0, 1, 10, 11, 12, 13, 14, 15, 2, 3]
    got = await (fail_big | ident).with_context(max_in_flight=4)(items).collect()
    shown = [("F", v.item) if isinstance(v, Failure) else v for v in got]
    assert sorted(x for x in shown if not isinstance(x, tuple)) == [0, 1, 2, 3]
    assert [x for x in shown if isinstance(x, tuple)] == [("F", n) for n in range(10, 16)]
    # (window 4: at most 4 Failures wait lent behind the oldest batch, [0]; the fifth
    # sends it off, the rest wait behind [1, ...])
    assert sizes[0] == [0]
    assert shown.index(0) < shown.index(("F", 10)) and shown.index(1) < shown.index(("F", 10))


# -- a key function that raises ---------------------------------------------------------------


def bad_key(x: int) -> int:
    if x == 3:
        raise KeyError("no key for 3")
    return x % 2


@pytest.mark.parametrize("mode", MODES)
async def test_a_raising_key_emits_a_failure_for_that_item(mode: str) -> None:
    @batch_task(max_size=2, key=bad_key, on_error="emit", retry_attempts=3, retry_delay=0)
    def ident(batch: list[int]) -> list[int]:
        return batch

    stream = in_mode(ident, mode)(range(6))
    got = await stream.collect()
    failures = [v for v in got if isinstance(v, Failure)]
    assert len(failures) == 1 and failures[0].item == 3 and failures[0].attempts == 1
    assert isinstance(failures[0].exception, KeyError)
    assert sorted(v for v in got if not isinstance(v, Failure)) == [0, 1, 2, 4, 5]
    s = stream.stats.stages[0]
    assert (s.emitted, s.retried, s.items_in) == (1, 0, 6)


async def test_a_raising_key_skips_that_item_counted_as_skipped() -> None:
    @batch_task(max_size=2, key=bad_key, on_error="skip_item")
    def ident(batch: list[int]) -> list[int]:
        return batch

    stream = ident(range(6))
    assert await stream.collect() == [0, 2, 1, 5, 4]
    s = stream.stats.stages[0]
    assert (s.skipped, s.dropped, s.items_out) == (1, 0, 5)


async def test_a_raising_key_fails_the_run_naming_key_and_the_item() -> None:
    @batch_task(max_size=2, key=bad_key)
    def ident(batch: list[int]) -> list[int]:
        return batch

    with pytest.raises(KeyError) as info:
        await ident(range(6)).collect()
    notes = "\n".join(info.value.__notes__)
    assert "key= function of task 'ident'" in notes and "raised on 3" in notes


async def test_an_unhashable_key_fails_the_item() -> None:
    @batch_task(max_size=2, key=lambda x: [x], on_error="emit")
    def ident(batch: list[int]) -> list[int]:
        return batch

    got = await ident([1]).collect()
    assert isinstance(got[0], Failure) and isinstance(got[0].exception, TypeError)


# -- executors ----------------------------------------------------------------------------------


def total(batch: list[int]) -> list[int]:
    return [sum(batch)] * len(batch)


@pytest.mark.parametrize("executor", ["thread", "process"])
@pytest.mark.parametrize("mode", MODES)
async def test_keyed_batches_on_threads_and_processes(executor: str, mode: str) -> None:
    task = BatchTask(total, max_size=3, key=tens, executor=executor)
    items = [1, 11, 2, 12, 3, 13, 4, 14, 21]
    results = await in_mode(task, mode)(items).collect()
    # (a batch's results come together, at its first item's place)
    expected = [6, 6, 6, 36, 36, 36, 4, 14, 21]
    assert results == expected if mode == "ordered" else sorted(results) == sorted(expected)


# -- the window and the stall rule ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("window", [1, 2, 3, 5])
async def test_a_window_smaller_than_the_keys_batches_never_deadlocks(
    mode: str, window: int
) -> None:
    sizes: list[int] = []

    @batch_task(max_size=4, key=lambda x: x % 7)
    def ident(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        return batch

    items = list(range(60))
    stream = in_mode(ident, mode, max_in_flight=window)(items)
    results = await asyncio.wait_for(stream.collect(), 20)
    assert sorted(results) == items
    assert stream._run is not None and stream._run.ledger.tokens == 0
    assert max(sizes) <= 4 and sum(sizes) == 60
    assert len(sizes) > 60 // 4  # (partial batches flushed by the stall rule)


# -- options --------------------------------------------------------------------------------------


def test_bad_options_fail_at_decoration_time() -> None:
    with pytest.raises(TypeError, match="key must be a function of the item"):
        batch_task(max_size=2, key=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_keys must be >= 1"):
        batch_task(max_size=2, key=parity, max_keys=0)
    with pytest.raises(ValueError, match="give key= too"):
        batch_task(max_size=2, max_keys=4)
    with pytest.raises(TypeError, match="key is an option of @batch_task"):
        single_task(key=parity)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="give key= too"):
        BatchTask(total, max_size=2, max_keys=4)


def test_keyed_options_default_and_show() -> None:
    task = BatchTask(total, max_size=32, key=tens)
    assert (task.key, task.max_keys) == (tens, 1024)
    assert "key=tens, max_keys=1024" in repr(task)
    assert batch_task(max_size=2)(total).max_keys is None
    assert "batch 1\N{EN DASH}32 by key" in Pipeline([task]).to_mermaid()
    assert "by key" not in Pipeline([BatchTask(total, max_size=32)]).to_mermaid()


async def test_open_keys_share_the_stage_statistics() -> None:
    @batch_task(max_size=2, key=parity)
    def ident(batch: list[int]) -> list[int]:
        return batch

    open_keys: list[int | None] = []

    async def items() -> AsyncIterator[int]:
        for x in range(7):
            if x == 2:  # (0 and 1 are in: both keys have an open batch)
                open_keys.append(stream.stats.stages[0].open_keys)
            yield x

    stream = ident(items())
    await stream.collect()
    s = stream.stats.stages[0]
    assert (s.items_in, s.items_out, s.batches, s.remainder_dropped) == (7, 7, 4, 0)
    assert open_keys == [2] and s.open_keys == 0
    plain = BatchTask(ident.func, max_size=2)(range(2))
    await plain.collect()
    assert plain.stats.stages[0].open_keys is None


async def test_a_checkpoint_keeps_each_keyed_batchs_origins(tmp_path: Any) -> None:
    seen: list[tuple[list[int], list[str]]] = []

    @batch_task(max_size=2, key=parity)
    def keys_of(batch: list[int]) -> list[int]:
        seen.append((batch, sorted(conveyor.current_keys())))
        return batch

    pipeline = Pipeline([keys_of]).with_checkpoint(conveyor.Checkpoint(tmp_path / "c.db"))
    assert await pipeline(range(5)).collect() == [0, 2, 1, 3, 4]
    assert [batch for batch, _ in seen] == [[0, 2], [1, 3], [4]]
    assert all(len(keys) == len(batch) for batch, keys in seen)
    assert len({k for _, keys in seen for k in keys}) == 5
    # a second run finds every item done
    assert await pipeline(range(5)).collect() == []


async def test_remainders_sent_off_at_the_end_when_one_ends_the_runs_work() -> None:
    """The end of the input flushes each key's remainder; the first one, done at once,
    may be the run's last work, and the ledger asks the stage again from inside that
    flush (the model found it: ``coroutine raised StopIteration``)."""

    @batch_task(max_size=2, key=parity)
    def ident(batch: list[int]) -> list[int]:
        return batch

    @single_task
    async def plus(x: int) -> int:
        return x + 100

    assert await (ident | plus | plus)([0, 1]).collect() == [200, 201]
