"""``executor=client``: stages on a Dask cluster (``conveyor._engine._dask``).

One real ``LocalCluster`` (two single-threaded worker processes, loopback only) serves
the whole module, through a plain client; a test that kills a worker leaves it to the
Nanny to restart, and the next test waits for both workers. The functions live in
``tests/workers.py`` (workers import them by name), except the lambdas and closures,
which cloudpickle sends by value.
"""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workers
from pickled_copies import check_pickled_copies_are_counted

import conveyor
from conveyor import Failure, batch_task, single_task
from conveyor._engine import _dask

distributed = pytest.importorskip("distributed")

ALL_WORKERS = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=ALL_WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        # With no dashboard the scheduler still serves its HTTP routes (/health,
        # /metrics), on the fixed port 8787; when that port is taken (another run, a
        # notebook's cluster), Dask moves to another port but leaks the socket of the
        # failed attempt (ResourceWarning). Any free port on loopback never fails.
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def module_client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def client(module_client: Any) -> Any:
    """The plain client, with both workers up (a killed one is restarted by its Nanny)."""
    module_client.wait_for_workers(ALL_WORKERS, timeout=30)
    return module_client


@pytest.fixture
def chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of items of every chunk submitted to Dask, in order."""
    sizes: list[int] = []
    submit = _dask.DaskCalls.submit

    def counted(self: Any, function: bytes, items: bytes) -> Any:
        sizes.append(len(pickle.loads(items)))
        return submit(self, function, items)

    monkeypatch.setattr(_dask.DaskCalls, "submit", counted)
    return sizes


def keys_on_the_scheduler(client: Any, deadline: float = 10.0) -> list[str]:
    """The keys the scheduler still holds, once it holds none (or at the deadline)."""
    end = time.monotonic() + deadline
    while True:
        keys = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))
        if not keys or time.monotonic() > end:
            return keys  # type: ignore[no-any-return]
        time.sleep(0.05)


@single_task
async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@single_task
async def plus_one(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


# -- results ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_async_stages_and_a_dask_stage_match_inline(client: Any, mode: str) -> None:
    inline = double | single_task(workers.square) | plus_one
    on_dask = double | single_task(executor=client)(workers.square) | plus_one
    expected = await inline(range(300)).collect()
    out = await on_dask.with_execution_mode(mode)(range(300)).collect()
    assert (out if mode == "ordered" else sorted(out)) == expected


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_dask_stages_in_the_branches_of_parallel_and_route(client: Any, mode: str) -> None:
    """A branch of ``conveyor.parallel``/``route`` is a run of its own: a Dask stage
    (single, and a batch: each item its own result) runs in it as in any run."""
    square = single_task(executor=client)(workers.square)
    squares = batch_task(max_size=4, executor=client)(workers.squares)
    stage = conveyor.parallel(square, double | squares) | conveyor.route(
        lambda pair: pair[0] % 2, {0: single_task(sum)}
    )
    out = await stage.with_execution_mode(mode)(range(40)).collect()
    expected = [x * x + 4 * x * x if x % 2 == 0 else (x * x, 4 * x * x) for x in range(40)]
    assert (
        out == expected
        if mode == "ordered"
        else sorted(map(str, out)) == sorted(map(str, expected))
    )


async def test_calls_run_in_the_workers_processes_in_chunks(client: Any, chunks: list[int]) -> None:
    worker_pids = set(client.run(os.getpid).values())
    pids = await single_task(executor=client)(workers.pid)(range(2000)).collect()
    assert set(pids) <= worker_pids and os.getpid() not in pids
    assert sum(chunks) == 2000
    assert len(chunks) < 200  # measured chunks: far fewer round trips than items


async def test_a_lambda_and_a_closure_travel_by_value(client: Any) -> None:
    offset = 100
    triple = single_task(executor=client)(lambda x: 3 * x)

    def shifted(x: int) -> int:
        return x + offset

    out = await (triple | single_task(executor=client)(shifted))(range(20)).collect()
    assert out == [3 * x + 100 for x in range(20)]


async def test_batches_generators_and_side_inputs_travel(client: Any) -> None:
    batches = batch_task(max_size=4, executor=client)(workers.total)
    assert await batches(range(8)).collect() == [6, 6, 6, 6, 22, 22, 22, 22]
    expand = single_task(executor=client)(workers.up_to)
    assert await expand([2, 3]).collect() == [0, 1, 0, 1, 2]
    slow = single_task(executor=client)(workers.spin).with_inputs(0.0001)
    assert await slow(range(5)).collect() == list(range(5))


async def test_chunk_size_fixes_the_chunks(client: Any, chunks: list[int]) -> None:
    task = single_task(executor=client, chunk_size=7)(workers.square)
    assert await task(range(100)).collect() == [x * x for x in range(100)]
    assert sum(chunks) == 100 and max(chunks) == 7
    assert len(chunks) >= 15  # ceil(100 / 7)


async def test_a_timeout_fails_the_item_and_its_chunk_is_cancelled(client: Any) -> None:
    task = single_task(executor=client, timeout=0.2, on_error="emit")(workers.nap)
    [failure] = await task.with_inputs(0.5)([1]).collect()
    assert isinstance(failure, Failure) and isinstance(failure.exception, TimeoutError)
    assert keys_on_the_scheduler(client) == []  # (the run's end cancelled the chunk)


def test_the_synchronous_front_door(client: Any) -> None:
    task = single_task(executor=client)(workers.square)
    assert task.run(range(10)) == [x * x for x in range(10)]
    assert list(task.iter(range(5))) == [0, 1, 4, 9, 16]


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip_item", [1, 2, 4, 5, 7, 8]),
        ("emit", ["F0", 1, 2, "F3", 4, 5, "F6", 7, 8]),
    ],
)
async def test_a_failing_item_fails_alone_under_the_policy(
    client: Any, policy: str, expected: list[Any]
) -> None:
    task = single_task(executor=client, on_error=policy, chunk_size=9)(
        workers.fail_on_multiples_of_three
    )
    out = await task(range(9)).collect()
    assert [f"F{r.item}" if isinstance(r, Failure) else r for r in out] == expected
    for failure in out:
        if isinstance(failure, Failure):
            assert isinstance(failure.exception, ValueError)
            assert str(failure.exception) == f"bad item {failure.item}"
            notes = "\n".join(failure.exception.__notes__)
            assert "in a worker process" in notes and "fail_on_multiples_of_three" in notes


async def test_a_failure_raises_with_its_type_annotated_with_task_and_item(client: Any) -> None:
    task = single_task(executor=client)(workers.fail_on_multiples_of_three)
    with pytest.raises(ValueError, match="bad item 6") as caught:
        await (double | task)(range(1, 5)).collect()  # (only 3 doubled fails)
    assert "conveyor: raised by task 'fail_on_multiples_of_three' on 6" in caught.value.__notes__


async def test_retries_send_a_failed_item_again(client: Any, tmp_path: Path) -> None:
    task = single_task(executor=client, retry_attempts=2, retry_delay=0)(
        functools.partial(workers.fail_once, folder=str(tmp_path))
    )
    assert await task(range(20)).collect() == list(range(20))
    assert len(list(tmp_path.iterdir())) == 20  # every item failed once, then succeeded


# -- an asynchronous client -------------------------------------------------------------------


async def test_an_asynchronous_client_on_the_tests_loop(cluster: Any) -> None:
    async with distributed.Client(cluster.scheduler_address, asynchronous=True) as client:
        on_dask = double | single_task(executor=client)(workers.square) | plus_one
        expected = [(2 * x) ** 2 + 1 for x in range(200)]
        assert await on_dask(range(200)).collect() == expected
        done = await on_dask.with_execution_mode("as_completed")(range(200)).collect()
        assert sorted(done) == expected
        failing = single_task(executor=client, on_error="emit")(lambda x: 1 // (x % 2))
        [failure, one] = await failing(range(2)).collect()
        assert isinstance(failure, Failure) and isinstance(failure.exception, ZeroDivisionError)
        assert one == 1
        # Leaving early cancels the chunks still out; nothing stays on this loop (the
        # autouse fixture checks) or on the cluster.
        slow = single_task(executor=client)(workers.nap).with_inputs(0.05)
        async with slow(range(100)) as stream:
            async for _ in stream:
                break
        assert await on_dask(range(3)).collect() == [1, 5, 17]


# -- leaving early -----------------------------------------------------------------------------


async def test_an_early_exit_cancels_the_chunks_and_the_cluster_still_works(
    client: Any, chunks: list[int]
) -> None:
    slow = single_task(executor=client, chunk_size=1)(workers.nap).with_inputs(0.05)
    async with slow(range(100)) as stream:
        async for first in stream:
            assert first == 0
            break
    assert len(chunks) < 10  # (two chunks per worker thread were out at most)
    assert keys_on_the_scheduler(client) == []
    squares = single_task(executor=client)(workers.square)
    assert await squares(range(5)).collect() == [0, 1, 4, 9, 16]


async def test_cancellation_cancels_the_chunks_and_the_cluster_still_works(client: Any) -> None:
    slow = single_task(executor=client)(workers.nap).with_inputs(0.05)
    consumer = asyncio.ensure_future(slow(range(100)).collect())
    await asyncio.sleep(0.3)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert keys_on_the_scheduler(client) == []
    assert await single_task(executor=client)(lambda x: -x)(range(3)).collect() == [0, -1, -2]


async def test_a_client_closed_during_a_run_fails_the_items_left(cluster: Any) -> None:
    out = []
    with distributed.Client(cluster) as other:
        slow = single_task(executor=other, chunk_size=1, on_error="emit")(workers.nap)
        async with slow.with_inputs(0.05)(range(20)) as stream:
            async for result in stream:
                out.append(result)
                if len(out) == 2:
                    other.close()
    assert [r.item if isinstance(r, Failure) else r for r in out] == list(range(20))
    failed = [r.exception for r in out if isinstance(r, Failure)]
    assert failed and {type(e).__name__ for e in failed} <= {
        "FutureCancelledError",  # out when the client closed
        "ClosedClientError",  # submitted after
    }
    with pytest.raises(RuntimeError, match="its Dask client is closed"):
        await slow([1]).collect()


# -- dead workers -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_a_killed_worker_is_rescheduled_by_dask_with_every_item_once(
    client: Any, tmp_path: Path, mode: str
) -> None:
    task = single_task(executor=client, chunk_size=5)(
        functools.partial(workers.die_once, folder=str(tmp_path), at=17)
    )
    out = await task.with_execution_mode(mode)(range(60)).collect()
    assert (out if mode == "ordered" else sorted(out)) == list(range(60))
    assert (tmp_path / "died").exists()


@pytest.fixture
def no_allowed_failures(client: Any) -> Iterator[None]:
    """The scheduler fails a chunk whose worker dies at once (``KilledWorker``)."""

    def allow(dask_scheduler: Any, failures: int) -> int:
        before = dask_scheduler.allowed_failures
        dask_scheduler.allowed_failures = failures
        return before  # type: ignore[no-any-return]

    before = client.run_on_scheduler(allow, failures=0)
    try:
        yield
    finally:
        client.run_on_scheduler(allow, failures=before)


@pytest.mark.usefixtures("no_allowed_failures")
async def test_a_killed_worker_is_retried_by_conveyor_with_every_item_once(
    client: Any, tmp_path: Path
) -> None:
    task = single_task(executor=client, chunk_size=5, retry_attempts=3, retry_delay=0)(
        functools.partial(workers.die_once, folder=str(tmp_path), at=17)
    )
    assert await task(range(60)).collect() == list(range(60))
    assert (tmp_path / "died").exists()


@pytest.mark.usefixtures("no_allowed_failures")
async def test_a_killed_worker_without_retries_fails_only_its_chunks(
    client: Any, tmp_path: Path
) -> None:
    task = single_task(executor=client, chunk_size=5, on_error="emit")(
        functools.partial(workers.die_once, folder=str(tmp_path), at=17)
    )
    out = await task.with_execution_mode("as_completed")(range(60)).collect()
    seen = Counter(r.item if isinstance(r, Failure) else r for r in out)
    assert seen == Counter(range(60))  # every item accounted for, exactly once
    failed = [r for r in out if isinstance(r, Failure)]
    assert 17 in {r.item for r in failed}
    assert all(isinstance(r.exception, distributed.KilledWorker) for r in failed)
    assert len(failed) < 60  # only the chunks on the dead worker
    assert len({id(r.exception) for r in failed}) == len(failed)  # each item's own


@pytest.mark.usefixtures("no_allowed_failures")
async def test_a_killed_worker_fails_the_run_with_killed_worker(
    client: Any, tmp_path: Path
) -> None:
    task = single_task(executor=client, chunk_size=5, task_name="dies")(
        functools.partial(workers.die_once, folder=str(tmp_path), at=17)
    )
    with pytest.raises(distributed.KilledWorker) as caught:
        await task(range(60)).collect()
    [note] = caught.value.__notes__
    assert note.startswith("conveyor: raised by task 'dies' on ")


async def test_a_dask_stage_counts_its_pickled_copies_in_the_byte_bound(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's pickled copy, held until its answer is in, takes window places as a
    process pool's does (it was not counted on Dask), and gives them back."""
    stream = await check_pickled_copies_are_counted(client, 40, monkeypatch)
    assert stream.stats.input_admitted_at_once == 8


async def test_a_dask_stage_has_a_span_per_call(client: Any) -> None:
    """Traced (docs/tracing.md), a call on Dask has a span from its submission to its
    answer, a child of the run's."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    task = single_task(executor=client)(workers.square)
    assert await task.with_context(tracing=provider)(range(20)).collect() == [
        x * x for x in range(20)
    ]
    spans = exporter.get_finished_spans()
    (run,) = [span for span in spans if span.name == "conveyor.run"]
    calls = [span for span in spans if span.name == "square"]
    assert len(calls) == 20
    assert {c.attributes["conveyor.executor"] for c in calls} == {"dask"}  # type: ignore[index]
    assert {c.attributes["conveyor.outcome"] for c in calls} == {"ok"}  # type: ignore[index]
    assert all(c.parent.span_id == run.context.span_id for c in calls)  # type: ignore[union-attr]
