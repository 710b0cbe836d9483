"""``ThreadSource``: a one-shot async iterator whose blocking work runs on a thread it owns.

Each source owns one worker thread (a ``ThreadPoolExecutor`` of one), started at the
first ``anext()`` and ended when the source closes. Every blocking call -- opening,
reading, listing, closing -- runs there, one at a time, in the order it was asked for.
That order is what makes closing safe: the close is queued behind a read in progress, so
a file is never closed under a thread still reading it, and the thread ends right after.

The event loop only hands work to the thread and takes the results; a source hands
results over in small lists, and ``anext()`` serves them from a queue without a thread
hand-off until the queue is empty.

A source also keeps figures of its reading, read by ``figures()`` (see its docstring):
the engine looks for that method on a pipeline's input to fold them into the run's
statistics.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MB = 1_000_000
"""Bytes in a megabyte of ``mb_per_second`` (decimal, as disks and networks count)."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A call whose waiter was cancelled may still fail: mark its exception retrieved, so
    # that asyncio does not log "exception was never retrieved" for a source closed early.
    if not future.cancelled():
        future.exception()


class ThreadSource(AsyncIterator[T], Generic[T]):
    """An async iterator, consumed once, whose ``_step`` and ``_release`` run on its thread.

    Subclasses implement ``_step()`` (the next items as a list; an empty list at the end)
    and ``_release()`` (close what ``_step`` opened), and say what they read in
    ``_what``. ``anext()`` raises ``StopAsyncIteration`` once the source is exhausted or
    closed. An error raised by ``_step`` closes the source and reaches the caller of
    ``anext()`` with a note naming what was being read.
    """

    _thread_name = "conveyor-source"
    _reads_bytes = True  # False: a listing, whose mb_per_second is None
    _pool: ThreadPoolExecutor | None = None  # (class defaults: __del__ may see a half-built source)
    _closed = True

    def __init__(self) -> None:
        self._ready: deque[T] = deque()
        self._job: asyncio.Future[list[T]] | None = None
        self._closed = False
        self._ended = False  # read to the end (not merely closed)
        self.bytes_read = 0
        self.files_read = 0
        self.seconds_reading = 0.0
        self.total_bytes: int | None = None

    @property
    def _what(self) -> str:
        raise NotImplementedError

    def _step(self) -> list[T]:
        """On the thread: the next items, or ``[]`` at the end."""
        raise NotImplementedError

    def _release(self) -> None:
        """On the thread (or in ``__del__``, when no call can be in progress): close it."""

    def _timed_step(self) -> list[T]:
        started = time.perf_counter()
        try:
            return self._step()
        finally:
            self.seconds_reading += time.perf_counter() - started

    # -- iteration -------------------------------------------------------------------

    def __aiter__(self) -> ThreadSource[T]:
        return self

    async def __anext__(self) -> T:
        ready = self._ready
        if ready:
            return ready.popleft()
        if self._closed:
            raise StopAsyncIteration
        job = self._job
        if job is None:
            pool = self._pool
            if pool is None:
                pool = self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._thread_name)
            job = self._job = asyncio.get_running_loop().run_in_executor(pool, self._timed_step)
            job.add_done_callback(_retrieve)
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
        ready.extend(items)
        return ready.popleft()

    # -- closing ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the source: after any call in progress on its thread, which then ends.

        Waits until the file (or listing) is closed and the thread has ended. Items read
        but not yet taken are dropped; later ``anext()`` calls raise
        ``StopAsyncIteration``. Closing twice, or closing a source never iterated, is
        harmless.
        """
        if self._closed:
            return
        self._closed = True
        self._ready.clear()
        self._job = None
        pool = self._pool
        if pool is None:  # never started: nothing is open
            return
        # One worker: the release runs after any call in progress. Shutting down now lets
        # the thread end after it, even if this coroutine is cancelled while waiting.
        released = asyncio.get_running_loop().run_in_executor(pool, self._release)
        released.add_done_callback(_retrieve)
        pool.shutdown(wait=False)
        await asyncio.shield(released)
        # The thread has nothing left to do: joining it is immediate, and leaves no thread.
        pool.shutdown(wait=True)

    def __del__(self) -> None:
        # Dropped without aclose() (e.g. iterated by hand and abandoned): a queued call
        # holds a reference to the source, so none can be in progress here.
        if not self._closed and self._pool is not None:
            self._closed = True
            self._release()
            self._pool.shutdown(wait=False)

    # -- figures ---------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """The reading so far, as a plain dict (safe to call at any time, from any thread).

        - ``bytes_read`` (int): bytes read from files so far.
        - ``files_read`` (int): files read to their end (for ``files()``: paths yielded).
        - ``seconds_reading`` (float): time spent on the source's thread opening, reading
          and listing; the consumer's time is not in it.
        - ``total_bytes`` (int or None): the bytes there are to read, when known (a
          file's size when it was opened); None before that, or when unknown.
        - ``mb_per_second`` (float or None): ``bytes_read / seconds_reading`` in MB
          (10**6 bytes) per second: the speed of the reading itself; None before any
          reading, and for ``files()``, which reads no file.
        - ``progress`` (float or None): ``bytes_read / total_bytes``, at most 1.0 (a file
          that grows while read stays at 1.0), and 1.0 once the source is read to its
          end; None when ``total_bytes`` is unknown.
        """
        bytes_read = self.bytes_read
        seconds = self.seconds_reading
        total = self.total_bytes
        progress: float | None = None
        if self._ended and total is not None:
            progress = 1.0
        elif total is not None:
            progress = min(1.0, bytes_read / total) if total else 0.0
        return {
            "bytes_read": bytes_read,
            "files_read": self.files_read,
            "seconds_reading": seconds,
            "total_bytes": total,
            "mb_per_second": (
                bytes_read / seconds / MB if seconds > 0 and self._reads_bytes else None
            ),
            "progress": progress,
        }
