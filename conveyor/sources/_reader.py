"""``ChunkReader``: an async iterator that reads a file in chunks on a thread of its own.

Every blocking step -- opening the file, parsing each chunk, closing it -- runs on one
worker thread that the reader owns, so the event loop never waits for the disk or the
parser. One thread, not the loop's shared default executor: its jobs run in the order
they were queued, so the close queued by ``aclose()`` runs after a read still in
progress, never beside it; and it ends with the reader, so nothing is left behind.

The reader reads one chunk per ``__anext__``: it never reads ahead, so the run's window
paces it. It is an iterator, like a file: it reads its file once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["ChunkReader"]


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A read whose reader stopped waiting (the run was cancelled) may fail later; its
    # error is dropped here rather than reported by the loop as never retrieved.
    if not future.cancelled():
        future.exception()


class ChunkReader(AsyncIterator[Any]):
    """Base class of the file sources: subclasses say how to open, read and close.

    Reading figures, plain attributes updated as chunks arrive (read them at any time):

    - ``chunks_read``, ``rows_read`` -- chunks and rows delivered so far;
    - ``bytes_read`` -- how far into the file the parser has read, in bytes (``None``
      when the format does not tell);
    - ``bytes_total`` -- the file's size on disk;
    - ``rows_total`` -- the rows in all (``None`` unless the format says so cheaply);
    - ``seconds_reading`` -- time spent opening, reading and parsing, on the thread.

    :meth:`figures` returns them as a dict.
    """

    def __init__(self, description: str, bytes_total: int | None = None) -> None:
        self.description = description
        self.chunks_read = 0
        self.rows_read = 0
        self.bytes_read: int | None = None
        self.bytes_total = bytes_total
        self.rows_total: int | None = None
        self.seconds_reading = 0.0
        self._worker: ThreadPoolExecutor | None = None
        self._pending: asyncio.Future[Any] | None = None
        self._opened = False
        self._stopped = False  # no more reads (aclose() called or the end reached)
        self._closed = False  # ... and the file closed, the thread ended

    # -- what a subclass provides (each runs on the worker thread) ----------------------

    def _open(self) -> None:
        raise NotImplementedError

    def _next_chunk(self) -> Any | None:
        """The next chunk, or ``None`` at the end of the file."""
        raise NotImplementedError

    def _position(self) -> int | None:
        """Bytes of the file read so far (``None`` if unknown)."""
        return None

    def _close(self) -> None:
        raise NotImplementedError

    # -- on the worker thread ------------------------------------------------------------

    def _read(self) -> tuple[Any | None, int | None]:
        start = time.perf_counter()
        try:
            if not self._opened:
                self._opened = True  # (so that a failed open is still closed)
                self._open()
            chunk = self._next_chunk()
            return chunk, self._position()
        finally:
            self.seconds_reading += time.perf_counter() - start

    def _close_if_open(self) -> None:
        if self._opened:
            self._close()

    # -- on the event loop -----------------------------------------------------------------

    def __aiter__(self) -> ChunkReader:
        return self

    async def __anext__(self) -> Any:
        """Read the next chunk on the worker thread (the loop runs on meanwhile)."""
        if self._stopped:
            raise StopAsyncIteration
        pending = self._pending  # a read whose wait was cancelled: its chunk is next
        if pending is None:
            if self._worker is None:  # started on the first read, not with the source
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="conveyor-source")
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(self._worker, self._read)
            pending.add_done_callback(_retrieve)
            self._pending = pending
        try:
            # Shielded: a cancelled wait stops waiting, but the read itself cannot be
            # stopped; it goes on, and aclose() queues the close behind it.
            chunk, position = await asyncio.shield(pending)
        except asyncio.CancelledError:
            raise
        except BaseException:  # the read failed: close the file, then report it
            self._pending = None
            await self.aclose()
            raise
        self._pending = None
        if chunk is None:
            await self.aclose()
            raise StopAsyncIteration
        self.chunks_read += 1
        self.rows_read += len(chunk)
        if position is not None:
            self.bytes_read = position
        return chunk

    async def aclose(self) -> None:
        """Stop reading: wait for a read in progress, close the file on the worker
        thread, and end the thread. Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        worker = self._worker
        if worker is None:  # never read: nothing opened, no thread
            self._closed = True
            return
        loop = asyncio.get_running_loop()
        closing = loop.run_in_executor(worker, self._close_if_open)  # after any read
        worker.shutdown(wait=False)  # the thread ends once the close has run
        await closing
        self._pending = None
        # The thread has nothing left to do: joining it takes a moment, not a read.
        worker.shutdown(wait=True)
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether the reader is closed: its file closed and its thread ended (at the end
        of the file, or once ``aclose()`` has returned)."""
        return self._closed

    def figures(self) -> dict[str, Any]:
        """The reading figures as a dict (see the class docstring)."""
        return {
            "chunks_read": self.chunks_read,
            "rows_read": self.rows_read,
            "rows_total": self.rows_total,
            "bytes_read": self.bytes_read,
            "bytes_total": self.bytes_total,
            "seconds_reading": self.seconds_reading,
        }

    def __repr__(self) -> str:
        state = "closed" if self._stopped else "open" if self._opened else "not started"
        return f"<{type(self).__name__} {self.description} {state}, {self.rows_read} rows read>"
