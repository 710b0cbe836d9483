"""The baselines conveyor is measured against.

* the *floor*: hand-written code with no pipeline machinery (a plain ``for`` loop awaiting
  the stages one after another; for I/O, ``asyncio.gather`` with one semaphore per stage);
* *aiostream*: ``stream.iterate(items) | pipe.map(f, ordered=..., task_limit=N)`` per stage;
* *streamable* (2.x): ``stream(items).map(f, concurrency=N, as_completed=...)`` per stage.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any

import streamable
from aiostream import pipe, stream

AsyncFn = Callable[[Any], Awaitable[Any]]


# -- hand-written floor ------------------------------------------------------------------


async def floor_loop(stages: Sequence[AsyncFn], items: Iterable[Any]) -> int:
    """Await every stage of every item, one after another."""
    count = 0
    if len(stages) == 3:  # the common case, unrolled
        a, b, c = stages
        for item in items:
            await c(await b(await a(item)))
            count += 1
        return count
    for item in items:
        value = item
        for stage in stages:
            value = await stage(value)
        count += 1
    return count


async def floor_tasks(stages: Sequence[AsyncFn], items: Iterable[Any]) -> int:
    """Like :func:`floor_loop`, but each call in a real task of its own, as conveyor's are
    (eager on 3.12+, a loop step each on 3.11): the floor for real-task semantics."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        start: Callable[..., Any] = functools.partial(asyncio.Task, eager_start=True)
    else:
        start = asyncio.Task
    count = 0
    for item in items:
        value = item
        for stage in stages:
            value = await start(stage(value), loop=loop, context=contextvars.copy_context())
        count += 1
    return count


async def floor_sync_loop(stages: Sequence[Callable[[Any], Any]], items: Iterable[Any]) -> int:
    a, b, c = stages
    count = 0
    for item in items:
        c(b(a(item)))
        count += 1
    return count


async def floor_batch_loop(
    first: AsyncFn,
    batch_fn: Callable[[list[Any]], Awaitable[list[Any]]],
    last: AsyncFn,
    items: Iterable[Any],
    size: int,
) -> int:
    """Stage 1 per item, stage 2 per batch of ``size``, stage 3 per item."""
    count = 0
    batch: list[Any] = []
    for item in items:
        batch.append(await first(item))
        if len(batch) == size:
            for value in await batch_fn(batch):
                await last(value)
                count += 1
            batch = []
    if batch:
        for value in await batch_fn(batch):
            await last(value)
            count += 1
    return count


async def gather_semaphores(stages: Sequence[AsyncFn], items: Iterable[Any], limit: int) -> int:
    """``asyncio.gather`` over all items, one ``Semaphore(limit)`` per stage."""
    sem1, sem2 = asyncio.Semaphore(limit), asyncio.Semaphore(limit)
    s1, s2 = stages

    async def one(item: Any) -> Any:
        async with sem1:
            value = await s1(item)
        async with sem2:
            return await s2(value)

    results = await asyncio.gather(*(one(item) for item in items))
    return len(results)


# -- aiostream -----------------------------------------------------------------------------


def aiostream_chain(
    stages: Sequence[Callable[[Any], Any]],
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    task_limit: int,
    ordered: bool,
) -> Any:
    xs: Any = stream.iterate(items)
    for stage in stages:
        if inspect.iscoroutinefunction(stage):
            xs = xs | pipe.map(stage, ordered=ordered, task_limit=task_limit)
        else:  # aiostream maps plain functions inline (task_limit is async-only)
            xs = xs | pipe.map(stage)
    return xs


async def consume_aiostream(xs: Any) -> int:
    count = 0
    async with xs.stream() as streamer:
        async for _ in streamer:
            count += 1
    return count


async def aiostream_map(
    stages: Sequence[Callable[[Any], Any]],
    items: Iterable[Any],
    *,
    task_limit: int,
    ordered: bool = True,
) -> int:
    return await consume_aiostream(
        aiostream_chain(stages, items, task_limit=task_limit, ordered=ordered)
    )


def _iterate(values: list[Any]) -> Any:
    return stream.iterate(values)


async def aiostream_batch(
    first: AsyncFn,
    batch_fn: Callable[[list[Any]], Awaitable[list[Any]]],
    last: AsyncFn,
    items: Iterable[Any],
    size: int,
    task_limit: int = 64,
) -> int:
    """map -> chunks(size) -> map(batch) -> concatmap(iterate) -> map, all ordered."""
    xs: Any = stream.iterate(items)
    xs = xs | pipe.map(first, ordered=True, task_limit=task_limit)
    xs = xs | pipe.chunks(size)
    amap: Any = pipe.map  # aiostream's operator signatures are too precise for mypy here
    concatmap: Any = pipe.concatmap
    xs = xs | amap(batch_fn, ordered=True, task_limit=1)
    xs = xs | concatmap(_iterate)
    xs = xs | pipe.map(last, ordered=True, task_limit=task_limit)
    return await consume_aiostream(xs)


# -- streamable ----------------------------------------------------------------------------


def streamable_chain(
    stages: Sequence[Callable[[Any], Any]],
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    concurrency: int,
    as_completed: bool = False,
) -> Any:
    xs: Any = streamable.stream(items)
    for stage in stages:
        if inspect.iscoroutinefunction(stage):
            xs = xs.map(stage, concurrency=concurrency, as_completed=as_completed)
        else:  # a plain function at concurrency > 1 would go to threads: call it inline
            xs = xs.map(stage)
    return xs


async def consume_streamable(xs: Any) -> int:
    count = 0
    async for _ in xs:
        count += 1
    return count


async def streamable_map(
    stages: Sequence[Callable[[Any], Any]],
    items: Iterable[Any],
    *,
    concurrency: int,
    as_completed: bool = False,
) -> int:
    return await consume_streamable(
        streamable_chain(stages, items, concurrency=concurrency, as_completed=as_completed)
    )


async def streamable_batch(
    first: AsyncFn,
    batch_fn: Callable[[list[Any]], Awaitable[list[Any]]],
    last: AsyncFn,
    items: Iterable[Any],
    size: int,
    concurrency: int = 64,
) -> int:
    """map -> group(size) -> map(batch) -> flatten -> map, all ordered."""
    xs: Any = streamable.stream(items)
    xs = xs.map(first, concurrency=concurrency)
    xs = xs.group(size)
    xs = xs.map(batch_fn)  # one batch at a time, like aiostream's task_limit=1
    xs = xs.flatten()
    xs = xs.map(last, concurrency=concurrency)
    return await consume_streamable(xs)
