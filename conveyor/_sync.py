"""The synchronous front door: running a pipeline from plain (non-async) code.

``pipeline.run(items)`` runs the pipeline on a fresh event loop and returns the list of
results. ``pipeline.iter(items)`` streams them: the run executes on an event loop of its
own in a background thread, and the caller's ``for`` loop takes the results in chunks of
at most :data:`CHUNK` (only results already done: the first one comes as soon as it is
ready), so memory stays bounded by the run's window plus one chunk. Leaving the ``for``
loop early (``break``, an exception, dropping the iterator) closes the run -- in flight
calls cancelled, the input closed -- and stops the thread before control returns.

Ctrl-C: ``pipeline.run`` handles it as ``conveyor.run`` does (see ``runner``). In
``pipeline.iter`` the ``KeyboardInterrupt`` reaches the caller's thread, wherever it is;
leaving the ``for`` loop then closes the run, which drops the calls not started and waits
for the calls running now. A Ctrl-C during that wait (the second) stops it: the run's pools are
abandoned (worker processes terminated, threads told to take no more work; see
``_engine._interrupt``), the run's tasks are cancelled and awaited for at most
:data:`ABANDONED` seconds, and the ``KeyboardInterrupt`` gains a note naming the threads
still inside a call.

Both refuse to run inside a running event loop: there, ``await pipeline(items).collect()``
or ``async for`` is the way (blocking the loop to wait for the run would deadlock it).
Both use uvloop when it is installed (``conveyor[fast]``), as ``conveyor.run`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._engine import _interrupt
from .runner import new_event_loop, run

if TYPE_CHECKING:
    from .stream import AsyncStream

T = TypeVar("T")

CHUNK = 256
"""Most results handed to the caller's thread at a time."""

ABANDONED = 2.0
"""Seconds ``pipeline.iter`` waits, after a second Ctrl-C, for the run's tasks to end once
its pools are abandoned (they end at once unless a call on the loop itself blocks it)."""

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
        closed = True
        try:
            if stream is not None:
                call(stream.aclose())
        except KeyboardInterrupt as interrupt:  # a (second) Ctrl-C while the run closes
            closed = _abandon(loop, interrupt)
            raise
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(None if closed else ABANDONED)
            if not thread.is_alive():
                loop.close()


def _abandon(loop: asyncio.AbstractEventLoop, interrupt: KeyboardInterrupt) -> bool:
    """(The caller's thread.) Abandon the run on ``loop`` (see ``_engine._interrupt``),
    cancel its tasks and wait for them for at most :data:`ABANDONED` seconds; note on
    ``interrupt`` the threads still inside a call. Whether every task ended."""

    async def abandon() -> list[threading.Thread]:
        return _interrupt.abandon(loop)

    async def cancel_the_rest() -> None:
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    left: list[threading.Thread] = []
    ended = False
    with contextlib.suppress(concurrent.futures.TimeoutError):
        left = asyncio.run_coroutine_threadsafe(abandon(), loop).result(ABANDONED)
        asyncio.run_coroutine_threadsafe(cancel_the_rest(), loop).result(ABANDONED)
        ended = True
    said = _interrupt.note(left)
    if said is not None:
        interrupt.add_note(said)
    return ended
