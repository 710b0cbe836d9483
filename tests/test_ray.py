"""``executor=ray``: stages on a Ray runtime (``conveyor._engine._ray``).

One real local Ray runtime (``ray.init(num_cpus=2)``, started here, shut down after the
module: a start costs seconds) serves the whole module. The functions of this module
travel by value (``register_pickle_by_value``): Ray's workers need not import the tests.
Where Ray has no wheel for the interpreter (3.15, when this was written), the module is
skipped, saying so.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pickled_copies import check_pickled_copies_are_counted

from conveyor import Failure, single_task
from conveyor._engine import _ray
from conveyor._engine._deaths import WorkerDied

ray = pytest.importorskip(
    "ray",
    reason="Ray is not installed: it has no wheel for this Python yet (conveyor[ray] "
    "installs it where it has one; the test extra too)",
)


@pytest.fixture(scope="module", autouse=True)
def runtime() -> Iterator[Any]:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    context = ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    try:
        yield context
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of items of every chunk sent to Ray, in order."""
    sizes: list[int] = []
    submit = _ray.RayCalls.submit

    def counted(self: Any, function: bytes, items: bytes) -> Any:
        sizes.append(len(pickle.loads(items)))
        return submit(self, function, items)

    monkeypatch.setattr(_ray.RayCalls, "submit", counted)
    return sizes


def square(x: int) -> int:
    return x * x


def pid(_: Any) -> int:
    return os.getpid()


def dies_on_13(x: int) -> int:
    if x == 13:
        os._exit(1)  # the worker process dies, mid-chunk
    return x * 2


def fails_on_7(x: int) -> int:
    if x == 7:
        raise ValueError(f"no {x}")
    return x


def nap(x: int) -> int:
    import time

    time.sleep(0.05)
    return x


async def test_calls_run_in_ray_workers_in_chunks(chunks: list[int]) -> None:
    pids = await single_task(executor=ray)(pid)(range(500)).collect()
    assert os.getpid() not in pids
    assert sum(chunks) == 500
    assert len(chunks) < 100  # measured chunks: far fewer round trips than items


async def test_what_ray_init_returned_is_accepted_too(runtime: Any) -> None:
    task = single_task(executor=runtime)(square)
    assert await task(range(20)).collect() == [x * x for x in range(20)]


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_results_match_inline_and_lambdas_travel(mode: str) -> None:
    offset = 100

    @single_task
    async def double(x: int) -> int:
        return 2 * x

    on_ray = double | single_task(executor=ray)(lambda x: x + offset) | single_task(square)
    out = await on_ray.with_execution_mode(mode)(range(300)).collect()
    expected = [(2 * x + offset) ** 2 for x in range(300)]
    assert (out if mode == "ordered" else sorted(out)) == expected


async def test_chunk_size_fixes_the_chunks(chunks: list[int]) -> None:
    task = single_task(executor=ray, chunk_size=7)(square)
    assert await task(range(100)).collect() == [x * x for x in range(100)]
    assert sum(chunks) == 100 and max(chunks) == 7


async def test_a_failing_item_fails_alone_naming_the_item() -> None:
    task = single_task(executor=ray, chunk_size=5, on_error="emit")(fails_on_7)
    out = await task(range(20)).collect()
    [failure] = [o for o in out if isinstance(o, Failure)]
    assert failure.item == 7 and isinstance(failure.exception, ValueError)
    assert [o for o in out if not isinstance(o, Failure)] == [x for x in range(20) if x != 7]


async def test_generators_come_back_and_expand() -> None:
    def upto(n: int) -> Iterator[int]:
        yield from range(n)

    out = await single_task(executor=ray)(upto)(range(5)).collect()
    assert out == [v for n in range(5) for v in range(n)]


async def test_a_killed_worker_fails_only_its_item_with_every_other_item_once(
    chunks: list[int],
) -> None:
    """A worker dies mid-chunk: the chunk is split, the item that killed it fails alone
    (it kills a worker again when sent alone), every other item is delivered once."""
    task = single_task(executor=ray, chunk_size=4, on_error="emit")(dies_on_13)
    out = await task(range(40)).collect()
    failures = [o for o in out if isinstance(o, Failure)]
    assert [f.item for f in failures] == [13]
    assert isinstance(failures[0].exception, WorkerDied)
    assert "item 13" in str(failures[0].exception)
    delivered = Counter(o for o in out if not isinstance(o, Failure))
    assert delivered == Counter(2 * x for x in range(40) if x != 13)  # none lost, none twice
    assert 1 in chunks[10:]  # (the split: its items were sent alone)
    assert await single_task(executor=ray)(square)(range(5)).collect() == [0, 1, 4, 9, 16]


async def test_an_early_exit_cancels_the_chunks_and_ray_still_works(chunks: list[int]) -> None:
    slow = single_task(executor=ray, chunk_size=1)(nap)
    async with slow(range(100)) as stream:
        async for first in stream:
            assert first == 0
            break
    assert len(chunks) < 10  # (two chunks per CPU were out at most)
    assert await single_task(executor=ray)(square)(range(5)).collect() == [0, 1, 4, 9, 16]


async def test_a_ray_stage_counts_its_pickled_copies_in_the_byte_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk's pickled copy holds window places until its answer is in, as on Dask."""
    await check_pickled_copies_are_counted(ray, 24, monkeypatch)


async def test_statistics_report_the_chunks() -> None:
    stream = single_task(executor=ray, task_name="sq")(square)(range(200))
    assert len(await stream.collect()) == 200
    [stage] = stream.stats.stages
    assert stage.offload is not None and stage.offload.items == 200
    assert stage.executor == "Ray"


async def test_a_run_without_ray_init_fails_saying_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match=r"call ray.init\(\)"):
        await single_task(executor=ray)(square)(range(3)).collect()


def test_resources_and_async_functions_stay_in_this_process() -> None:
    async def fetch(x: int) -> int:
        return x

    class Session:
        async def __aenter__(self) -> Session:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

    with pytest.raises(TypeError, match="is an async function"):
        single_task(executor=ray)(fetch)(range(1))
    with pytest.raises(TypeError, match=r"resource 'session'.*cannot be sent to a worker"):
        single_task(executor=ray)(square).with_resources(session=Session)


def test_the_chart_and_the_repr_name_ray() -> None:
    task = single_task(executor=ray)(square)
    assert "executor ray" in task.to_mermaid()
    assert repr(task) == "square(executor=ray)"


async def test_cancellation_leaves_nothing_behind() -> None:
    slow = single_task(executor=ray)(nap)
    consumer = asyncio.ensure_future(slow(range(100)).collect())
    await asyncio.sleep(0.3)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert await single_task(executor=ray)(lambda x: -x)(range(3)).collect() == [0, -1, -2]
