"""The synchronous front door: running a pipeline from plain (non-async) code.

``pipeline.run(items)`` runs the pipeline on a fresh event loop and returns the list of
results. ``pipeline.iter(items)`` streams them: the run executes on an event loop of its
own in a background thread, and the caller's ``for`` loop takes the results in chunks of
at most :data:`CHUNK` (only results already done: the first one comes as soon as it is
ready), so memory stays bounded by the run's window plus one chunk. Leaving the ``for``
loop early (``break``, an exception, dropping the iterator) closes the run -- in flight
calls cancelled, the input closed -- and stops the thread before control returns.

Both refuse to run inside a running event loop: there, ``await pipeline(items).collect()``
or ``async for`` is the way (blocking the loop to wait for the run would deadlock it).
Both use uvloop when it is installed (``conveyor[fast]``), as ``conveyor.run`` does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .runner import new_event_loop, run

if TYPE_CHECKING:
    from .stream import AsyncStream

T = TypeVar("T")

CHUNK = 256
"""Most results handed to the caller's thread at a time."""

_END: Any = object()


def refuse_inside_a_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{what} is for plain synchronous code, and an event loop is running here: "
        "write `await pipeline(items).collect()` or `async for result in pipeline(items)`"
    )


def run_to_list(stream: Callable[[], AsyncStream[T]]) -> list[T]:
    """All results of the stream ``stream()`` makes, from synchronous code."""
    refuse_inside_a_loop("pipeline.run()")

    async def main() -> list[T]:
        return await stream().collect()

    return run(main())


def iterate(stream: Callable[[], AsyncStream[T]]) -> Iterator[T]:
    """The results of the stream ``stream()`` makes, streamed into synchronous code."""
    refuse_inside_a_loop("pipeline.iter()")
    return _iterate(stream)


def _iterate(make: Callable[[], AsyncStream[T]]) -> Iterator[T]:
    loop = new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="conveyor-iter", daemon=True)
    thread.start()
    stream: AsyncStream[T] | None = None

    async def start() -> None:
        nonlocal stream
        stream = make()

    async def next_chunk() -> list[Any]:
        assert stream is not None
        try:
            chunk: list[Any] = [await anext(stream)]
        except StopAsyncIteration:
            return [_END]
        chunk.extend(stream._take_ready(CHUNK - 1))
        return chunk

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    try:
        call(start())
        while True:
            for item in call(next_chunk()):
                if item is _END:
                    return
                yield item
    finally:
        try:
            if stream is not None:
                call(stream.aclose())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
