"""Merged inputs: one run fed by several sources (``conveyor.merge``).

``pipeline(conveyor.merge(a, b, c))`` runs the pipeline on the items of ``a``, ``b`` and
``c`` as they arrive. Each input may be an iterable, an async iterable, or another
run's stream (an :class:`~conveyor.AsyncStream`).

**Order.** Items come in the order they are ready, fairly: the inputs take turns (round
robin), and an input with nothing ready is passed over until it has, so a slow input never
holds back the others. Ordered runs keep this merged order in their results; items of one
input keep their own order.

**Pulled lazily.** The merge reads only when the run asks for an item, and the run asks
only when its window has room. Each async input has at most one read in progress (its
next item read ahead, at most one per input: the bound in items is the number of
inputs); a plain iterable is read only on its turn, on the event loop (as a run reads a
plain input: give a blocking one as an async source, e.g. :mod:`conveyor.sources`).

**Closed on every exit.** When the run ends (finished, broken off, failed, cancelled),
the merge cancels the reads in progress, waits for them, and closes every input it was
given that can be closed (an async generator or a stream: ``aclose()``; a generator:
``close()``), each of them even if closing another fails. An input that raises ends the
merge with its exception (with a note naming the input); the run fails as it would on a
plain input's error, and closes the others.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Generic, TypeVar

from ._engine._input import close_source

__all__ = ["Merged", "merge"]

T = TypeVar("T")

_END: Any = object()  # an async input's read that found its end


async def _read(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _END


class _Input:
    """One input of a merge, and its read in progress (async inputs)."""

    __slots__ = ("given", "index", "iterator", "reading", "sync")

    def __init__(self, index: int, given: Any) -> None:
        self.index = index
        self.given = given
        # Decided by what was given, not by what ``iter`` returns: an iterable's iterator
        # need not be a ``collections.abc.Iterator`` (``__next__`` without ``__iter__``).
        self.sync = not hasattr(given, "__aiter__")
        self.iterator: Any = None
        self.reading: asyncio.Task[Any] | None = None

    def open(self) -> None:
        self.iterator = iter(self.given) if self.sync else aiter(self.given)

    def note(self, exc: BaseException) -> None:
        exc.add_note(f"(raised by conveyor.merge's input {self.index}: {self.given!r:.80})")

    async def close(self) -> None:
        reading, self.reading = self.reading, None
        if reading is not None:
            reading.cancel()
            await asyncio.wait([reading])
            if not reading.cancelled():
                reading.exception()  # (read ahead and never taken: not an error of the run)
        await close_source(self.iterator)
        if self.given is not self.iterator:
            await close_source(self.given)


class Merged(Generic[T]):
    """The merge of several inputs: an async iterator a pipeline takes as its input (see
    the module's docstring). Made by :func:`merge`; read once.

    **Turns.** ``_turns`` is the line of inputs with an item ready: every plain iterable
    (always ready) and each async input whose read has ended (its read's done callback
    puts it at the end of the line). The input at the head is served and goes to the end
    again (a plain one at once, an async one when its next read ends), so each input
    with an item ready is served once before any is served twice, and an input with
    nothing ready is simply not in the line. Serving an item is O(1) whatever the
    number of inputs (a scan of every input per item made 20,000 lists of 3 items take
    8 minutes).
    """

    def __init__(self, inputs: tuple[Any, ...]) -> None:
        self._inputs = [_Input(index, given) for index, given in enumerate(inputs)]
        self._turns: deque[_Input] | None = None  # (opened at the first read)
        self._left = 0  # inputs not at their end yet
        self._waiter: asyncio.Future[None] | None = None  # the reader, while none is ready
        self._closed = False

    def __aiter__(self) -> Merged[T]:
        return self

    def _read(self, one: _Input) -> None:
        """Start ``one``'s next read (an async input): it joins the line when it ends."""
        one.reading = reading = asyncio.ensure_future(_read(one.iterator))
        reading.add_done_callback(lambda _: self._ready(one))

    def _ready(self, one: _Input) -> None:
        if self._closed or self._turns is None:
            return  # (cancelled by aclose: nobody reads on)
        self._turns.append(one)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __anext__(self) -> T:
        turns = self._turns
        if turns is None:
            if self._closed:
                raise StopAsyncIteration
            for one in self._inputs:
                one.open()
            turns = self._turns = deque()
            self._left = len(self._inputs)
            for one in self._inputs:
                if one.sync:
                    turns.append(one)
                else:
                    self._read(one)
        while self._left and not self._closed:
            if not turns:
                # Nothing ready: wait for a read to end.
                self._waiter = waiter = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None
                continue
            one = turns.popleft()
            if one.sync:
                try:
                    item = next(one.iterator)
                except StopIteration:
                    self._left -= 1
                    continue
                except Exception as exc:
                    self._left -= 1  # (a generator that raised is over)
                    one.note(exc)
                    raise
                turns.append(one)
                return item  # type: ignore[no-any-return]
            reading, one.reading = one.reading, None
            assert reading is not None and reading.done()
            try:
                item = reading.result()
            except Exception as exc:
                self._left -= 1
                one.note(exc)
                raise
            if item is _END:
                self._left -= 1
                continue
            self._read(one)  # (its next item, read ahead: at most one per input)
            return item  # type: ignore[no-any-return]
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel the reads in progress and close every input (see the module's
        docstring); each input is closed even if closing another raised, and the first
        such error is raised at the end."""
        if self._closed:
            return
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # (a reader waiting for a read: it ends, as they do)
        error: BaseException | None = None
        for one in self._inputs:
            try:
                await one.close()
            except BaseException as exc:  # (every input is closed first)
                error = error or exc
        self._turns = deque()
        if error is not None:
            raise error


def merge(*inputs: Iterable[T] | AsyncIterable[T]) -> Merged[T]:
    """One input made of several: ``pipeline(conveyor.merge(a, b, c))``.

    Items come as they are ready, the inputs taking turns (round robin), each input read
    lazily under the run's window (one read in progress per async input at most), and
    every input closed on every exit of the run. See :mod:`conveyor.merge`.
    """
    if not inputs:
        raise TypeError("conveyor.merge needs at least one input: merge(a, b, ...)")
    readers: dict[int, int] = {}  # id of an async iterator -> its input's index
    for index, given in enumerate(inputs):
        if not hasattr(given, "__aiter__") and not isinstance(given, Iterable):
            raise TypeError(
                f"conveyor.merge: input {index} is a {type(given).__name__!r}, neither an "
                f"iterable nor an async iterable; give lists, generators, async "
                f"generators or streams"
            )
        if hasattr(given, "__anext__"):
            # Two reads of one async generator at once fail deep in the run ("anext():
            # asynchronous generator is already running"): say so here.
            first = readers.setdefault(id(given), index)
            if first != index:
                raise TypeError(
                    f"conveyor.merge: input {index} is input {first} again ({given!r:.60}); "
                    f"an async iterator has one reader: give it once"
                )
    return Merged(inputs)
