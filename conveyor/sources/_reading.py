"""``ThreadSource``: the one base of the sources whose blocking work runs on a thread they own.

Each source owns one worker thread (a ``ThreadPoolExecutor`` of one), started at the
first ``anext()`` and ended when the source closes. Every blocking call -- opening,
reading, parsing, listing, closing -- runs there, one at a time, in the order it was
asked for. That order is what makes closing safe: the close is queued behind a read in
progress, so a file is never closed under a thread still reading it, and the thread ends
right after. (Not the loop's shared default executor: its calls may run side by side.)

The event loop only hands work to the thread and takes the results; a source hands
results over in small lists, and ``anext()`` serves them from a queue without a thread
hand-off until the queue is empty. A source reads only when asked: never ahead of the
consumer by more than one such list.

A source also keeps figures of its reading, returned by ``figures()``: the engine looks
for that method on a pipeline's input to fold them into the run's statistics. The keys
and their meaning are :data:`READING_FIGURES`, the one statement of that contract.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MB = 1_000_000
"""Bytes in a megabyte of ``mb_per_second`` (decimal, as disks and networks count)."""

READING_FIGURES = {
    "items_read": "items handed out so far: chunks, lines or paths",
    "bytes_read": "bytes of the file consumed so far; None when unknown",
    "bytes_total": "the file's size when it was opened; None before that, or when unknown",
    "seconds_reading": "seconds the source's thread spent opening, reading, parsing, listing",
    "mb_per_second": "bytes_read / seconds_reading in MB (10**6 bytes) per second; or None",
    "progress": "bytes_read / bytes_total, at most 1.0, 1.0 once read to the end; or None",
}
"""The keys every source's ``figures()`` has, and what each means (see ``docs/files.md``).

Sources add their own keys after these (``rows_read``, ``rows_total`` for tables,
``files_read`` for ``files()``). Every value is an int, a float or None: the dict is
JSON-serialisable as it is.
"""


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A call whose waiter was cancelled may still fail: mark its exception retrieved, so
    # that asyncio does not log "exception was never retrieved" for a source closed early.
    if not future.cancelled():
        future.exception()


def reading_figures(
    items: int, bytes_read: int | None, bytes_total: int | None, seconds: float, ended: bool
) -> dict[str, Any]:
    """The :data:`READING_FIGURES` of a reading, from its counts (for any source)."""
    progress: float | None = None
    if bytes_total is not None and bytes_read is not None:
        # Capped: a file that grows while it is read stays at 1.0, never above.
        done = ended or bytes_read >= bytes_total
        progress = 1.0 if done else bytes_read / bytes_total
    speed = bytes_read / seconds / MB if bytes_read is not None and seconds > 0 else None
    return {
        "items_read": items,
        "bytes_read": bytes_read,
        "bytes_total": bytes_total,
        "seconds_reading": seconds,
        "mb_per_second": speed,
        "progress": progress,
    }


class ThreadSource(AsyncIterator[T], Generic[T]):
    """An async iterator, consumed once, whose blocking calls run on a thread it owns.

    Subclasses implement ``_fetch()`` (on the thread: the next items as a list; an empty
    list at the end), ``_release()`` (close what ``_fetch`` opened) and ``_what`` (what is
    read, for error notes), and update ``bytes_read`` and ``bytes_total`` on the thread.
    ``anext()`` raises ``StopAsyncIteration`` once the source is exhausted or closed. An
    error raised by ``_fetch`` closes the source and reaches the caller of ``anext()``
    with a note naming what was being read. A cancelled ``anext()`` loses nothing: the
    call goes on, and the next ``anext()`` takes its items.

    Figures, as attributes (read them at any time) and as ``figures()``:
    ``items_read``, ``bytes_read``, ``bytes_total``, ``seconds_reading``; see
    :data:`READING_FIGURES`.
    """

    _thread_name = "conveyor-source"
    _pool: ThreadPoolExecutor | None = None  # (class defaults: __del__ may see a half-built source)
    _closed = True

    def __init__(self) -> None:
        self._ready: deque[T] = deque()
        self._job: asyncio.Future[list[T]] | None = None
        self._closed = False  # no more reads: closed, or closing
        self._finished = False  # ... and the release has run, the thread has ended
        self._closing: asyncio.Future[None] | None = None  # (done once finished closing)
        self._ended = False  # read to the end (not merely closed)
        self.items_read = 0
        self.bytes_read: int | None = 0
        self.bytes_total: int | None = None
        self.seconds_reading = 0.0

    @property
    def _what(self) -> str:
        raise NotImplementedError

    def _fetch(self) -> list[T]:
        """On the thread: the next items, or ``[]`` at the end."""
        raise NotImplementedError

    def _release(self) -> None:
        """On the thread (or in ``__del__``, when no call can be in progress): close it."""

    def _timed_fetch(self) -> list[T]:
        started = time.perf_counter()
        try:
            return self._fetch()
        finally:
            self.seconds_reading += time.perf_counter() - started

    # -- iteration -------------------------------------------------------------------

    def __aiter__(self) -> ThreadSource[T]:
        return self

    async def __anext__(self) -> T:
        ready = self._ready
        if not ready:
            ready.extend(await self._next_items())
        self.items_read += 1
        return ready.popleft()

    async def _next_items(self) -> list[T]:
        """The next non-empty list of items from the thread; ``StopAsyncIteration`` at the end."""
        if self._closed:
            raise StopAsyncIteration
        job = self._job if self._job is not None else self._start_fetch()
        try:
            # Shielded: a cancelled caller leaves the call to finish, and the next anext()
            # (or aclose()) picks it up, so no item read is lost.
            items = await asyncio.shield(job)
        except Exception as exc:
            self._job = None
            exc.add_note(f"conveyor: raised while reading {self._what}")
            await self.aclose()
            raise
        self._job = None
        if self._closed:  # closed by another task while this call was running
            raise StopAsyncIteration
        if not items:
            self._ended = True
            await self.aclose()
            raise StopAsyncIteration
        # Read one step ahead: the thread reads (or parses) the next items while the
        # pipeline works on these. On 2 cores, 2M rows of CSV in 100k-row chunks through a
        # feature task on the loop ran at 0.82-1.04x a plain pandas chunked loop reading in
        # turn, and at 1.11-1.27x reading ahead. At most one step is held beyond what the
        # run has taken.
        self._start_fetch()
        return items

    def _start_fetch(self) -> asyncio.Future[list[T]]:
        pool = self._pool
        if pool is None:
            pool = self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._thread_name)
        job = self._job = asyncio.get_running_loop().run_in_executor(pool, self._timed_fetch)
        job.add_done_callback(_retrieve)
        return job

    # -- closing ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the source: after any call in progress on its thread, which then ends.

        Waits until the file (or listing) is closed and the thread has ended; cancelling
        the wait does not stop either (``closed`` becomes True once they are done). Items
        read but not yet taken are dropped; later ``anext()`` calls raise
        ``StopAsyncIteration``. Closing twice, or closing a source never iterated, is
        harmless. (A pipeline run closes its input to the end on every exit, its own
        cancellation included.)
        """
        if self._closed:
            # Closing already (the run's own close, say): wait for it too, as promised.
            if self._closing is not None:
                await asyncio.shield(self._closing)
            return
        self._closed = True
        self._ready.clear()
        self._job = None
        pool = self._pool
        if pool is None:  # never started: nothing is open
            self._finished = True
            return
        # One worker: the release runs after any call in progress. Shutting down now lets
        # the thread end after it, even if this coroutine is cancelled while waiting.
        released = asyncio.get_running_loop().run_in_executor(pool, self._release)
        pool.shutdown(wait=False)
        # Finished when the release is done, whether or not this coroutine still waits.
        self._closing = asyncio.get_running_loop().create_future()  # (set by _released)
        released.add_done_callback(functools.partial(self._released, pool))
        await asyncio.shield(released)

    def _released(self, pool: ThreadPoolExecutor, released: asyncio.Future[None]) -> None:
        _retrieve(released)
        # The thread has nothing left to do: joining it is immediate, and leaves no thread.
        pool.shutdown(wait=True)
        self._finished = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)

    @property
    def closed(self) -> bool:
        """Whether the source is done: its file closed and its thread ended (at the end of
        the input, after a read error, or once ``aclose()`` has returned)."""
        return self._finished

    def __del__(self) -> None:
        # Dropped without aclose() (e.g. iterated by hand and abandoned): a queued call,
        # the read ahead too, holds a reference to the source, so none can be in
        # progress here (a dropped source is collected once its read ahead has ended).
        if not self._closed and self._pool is not None:
            self._closed = True
            self._release()
            self._pool.shutdown(wait=False)

    # -- figures ---------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """The reading so far as a plain dict: :data:`READING_FIGURES`, then the source's
        own keys. Safe to call at any time, from any thread."""
        return reading_figures(
            self.items_read, self.bytes_read, self.bytes_total, self.seconds_reading, self._ended
        )
