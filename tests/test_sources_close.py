"""Every source is closed on every exit of the run that reads it, errors included.

For each source kind (``file_chunks``, ``file_lines``, ``files``, ``read_csv_chunks``,
``read_parquet_chunks``, ``dataframe_chunks``) and each way a run can end early -- a
task failing under ``on_error="fail"`` (at once, in the step that admitted the item, or
later, in a call's task), ``break`` out of ``async with``, ``aclose()``, a cancelled
consumer, a dropped stream, ``pipeline.run`` -- the source is closed (its file or
listing closed, its thread ended) when the consumer gets the error or the close
returns; for a cancelled consumer or a dropped stream, whose run is cancelled at once
and unwinds on the next iterations of the loop, within a bounded wait.

(A run failed from inside its supervisor's own step used to cancel the source's
``aclose()`` half-way: ``source.closed`` stayed False.)
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import single_task
from conveyor.sources import (
    dataframe_chunks,
    file_chunks,
    file_lines,
    files,
    read_csv_chunks,
    read_parquet_chunks,
)
from conveyor.sources._frames import DataFrameChunks

pd = pytest.importorskip("pandas")

KINDS = [
    "file_chunks",
    "file_lines",
    "files",
    "read_csv_chunks",
    "read_parquet_chunks",
    "dataframe_chunks",
]


def make_source(kind: str, folder: Path) -> Any:
    frame = pd.DataFrame({"a": range(500), "b": range(500)})
    csv = folder / "table.csv"
    frame.to_csv(csv, index=False)
    if kind == "file_chunks":
        return file_chunks(csv, 16)
    if kind == "file_lines":
        return file_lines(csv)
    if kind == "files":
        listed = folder / "listed"
        listed.mkdir()
        for number in range(600):  # more than one batch of the listing (256 paths)
            (listed / f"{number:04}.txt").touch()
        return files(listed)
    if kind == "read_csv_chunks":
        return read_csv_chunks(csv, rows=10)
    if kind == "read_parquet_chunks":
        pytest.importorskip("pyarrow")
        parquet = folder / "table.parquet"
        frame.to_parquet(parquet, index=False)
        return read_parquet_chunks(parquet, rows=10)
    return dataframe_chunks(frame, rows=10)


def open_frame_iterations() -> list[Any]:
    """The iterations of a ``dataframe_chunks`` (async generators) not closed yet."""
    code = DataFrameChunks.__aiter__.__code__
    return [
        agen
        for agen in gc.get_objects()
        if inspect.isasyncgen(agen) and agen.ag_code is code and agen.ag_frame is not None
    ]


def threads_of(source: Any) -> list[threading.Thread]:
    """The live threads of ``source``'s own pool (sources of a kind share a thread name:
    another test's source may still be ending its thread on a loaded machine)."""
    pool = getattr(source, "_pool", None)
    if pool is None:
        return []
    return [t for t in list(pool._threads) if t.is_alive()]


def is_closed(source: Any) -> bool:
    """Closed, with no thread left: a file source's ``closed``, a frame's iteration."""
    if isinstance(source, DataFrameChunks):
        return not open_frame_iterations()
    return bool(source.closed) and not threads_of(source)


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait (generously: the machine is noisy) until ``condition()`` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


class Bad(Exception):
    pass


@single_task
def fails_at_once(item: Any) -> Any:
    """Fails on the first item, in the step that admits it (the supervisor's own)."""
    raise Bad(repr(item)[:20])


@single_task
def fails_at_the_third(item: Any, seen: list[Any] = []) -> Any:  # noqa: B006
    seen.append(item)
    if len(seen) % 3 == 0:
        raise Bad("the third")
    return item


@single_task
async def fails_later(item: Any) -> Any:
    await asyncio.sleep(0.001)
    raise Bad("in a call's task")


@single_task
async def slow(item: Any) -> Any:
    await asyncio.sleep(0.001)
    return item


@pytest.fixture(autouse=True)
def nothing_left_open() -> Any:
    gc.collect()
    assert open_frame_iterations() == []
    yield
    gc.collect()
    assert open_frame_iterations() == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("failing", [fails_at_once, fails_at_the_third, fails_later])
async def test_a_failing_run_closes_its_source(kind: str, failing: Any, tmp_path: Path) -> None:
    source = make_source(kind, tmp_path)
    with pytest.raises(Bad):
        await failing(source).collect()
    assert is_closed(source)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failing_async_for_closes_its_source(kind: str, tmp_path: Path) -> None:
    source = make_source(kind, tmp_path)
    with pytest.raises(Bad):
        async with (slow | fails_at_the_third)(source) as stream:
            async for _ in stream:
                pass
    assert is_closed(source)


@pytest.mark.parametrize("kind", KINDS)
async def test_break_out_of_async_with_closes_its_source(kind: str, tmp_path: Path) -> None:
    source = make_source(kind, tmp_path)
    async with slow(source) as stream:
        async for _ in stream:
            break
    assert is_closed(source)


@pytest.mark.parametrize("kind", KINDS)
async def test_aclose_closes_its_source(kind: str, tmp_path: Path) -> None:
    source = make_source(kind, tmp_path)
    stream = slow(source)
    await anext(stream)
    await stream.aclose()
    assert is_closed(source)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_cancelled_consumer_closes_its_source(kind: str, tmp_path: Path) -> None:
    source = make_source(kind, tmp_path)
    started = asyncio.Event()

    @single_task
    async def stuck(item: Any) -> Any:
        started.set()
        await asyncio.sleep(60)
        return item

    async def consume() -> None:
        async for _ in stuck(source):
            pass

    consumer = asyncio.create_task(consume())
    await started.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await until(lambda: is_closed(source))


@pytest.mark.parametrize("kind", KINDS)
async def test_a_dropped_stream_closes_its_source(kind: str, tmp_path: Path) -> None:
    source = make_source(kind, tmp_path)
    async for _ in slow(source):
        break  # the stream is dropped: its run is cancelled when it is collected
    await until(lambda: gc.collect() >= 0 and is_closed(source))


@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_run_closes_its_source_on_an_error(kind: str, tmp_path: Path) -> None:
    source = make_source(kind, tmp_path)
    with pytest.raises(Bad):
        fails_at_the_third.run(source)
    assert is_closed(source)


@pytest.mark.parametrize("kind", KINDS)
def test_leaving_pipeline_iter_closes_its_source(kind: str, tmp_path: Path) -> None:
    source = make_source(kind, tmp_path)
    results = slow.iter(source)
    for _ in results:
        break
    results.close()  # (what dropping the iterator does, now)
    assert is_closed(source)


@pytest.mark.parametrize("kind", ["file_chunks", "file_lines", "files", "read_csv_chunks"])
async def test_a_second_aclose_waits_for_the_first(kind: str, tmp_path: Path) -> None:
    """``aclose()`` returns once the source is closed, its thread ended: also when it is
    closing already (a run's own close under way, and the caller's). It returned at once."""
    source = make_source(kind, tmp_path)
    await anext(source)
    first = asyncio.create_task(source.aclose())
    await asyncio.sleep(0)  # (the first close is under way)
    await source.aclose()
    assert is_closed(source)
    await first
