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
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
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

    __slots__ = ("given", "index", "iterator", "reading")

    def __init__(self, index: int, given: Any) -> None:
        self.index = index
        self.given = given
        self.iterator: Iterator[Any] | AsyncIterator[Any] | None = None
        self.reading: asyncio.Task[Any] | None = None

    def open(self) -> None:
        given = self.given
        self.iterator = aiter(given) if hasattr(given, "__aiter__") else iter(given)

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
    the module's docstring). Made by :func:`merge`; read once."""

    def __init__(self, inputs: tuple[Any, ...]) -> None:
        self._inputs = [_Input(index, given) for index, given in enumerate(inputs)]
        self._live: list[_Input] | None = None  # (opened at the first read)
        self._turn = 0
        self._closed = False

    def __aiter__(self) -> Merged[T]:
        return self

    async def __anext__(self) -> T:
        live = self._live
        if live is None:
            if self._closed:
                raise StopAsyncIteration
            for one in self._inputs:
                one.open()
            live = self._live = list(self._inputs)
        while live:
            # Each async input has its next read going (at most one each).
            for one in live:
                if one.reading is None and not isinstance(one.iterator, Iterator):
                    one.reading = asyncio.ensure_future(_read(one.iterator))  # type: ignore[arg-type]
            # Round robin, from the input after the one served last: the first with an
            # item ready is served (a plain iterable always is).
            count = len(live)
            for step in range(count):
                position = (self._turn + step) % count
                one = live[position]
                iterator = one.iterator
                if isinstance(iterator, Iterator):
                    try:
                        item = next(iterator)
                    except StopIteration:
                        del live[position]
                        self._turn = position
                        break
                    except Exception as exc:
                        one.note(exc)
                        raise
                    self._turn = position + 1
                    return item  # type: ignore[no-any-return]
                reading = one.reading
                assert reading is not None
                if not reading.done():
                    continue
                one.reading = None
                try:
                    item = reading.result()
                except Exception as exc:
                    one.note(exc)
                    raise
                if item is _END:
                    del live[position]
                    self._turn = position
                    break
                self._turn = position + 1
                return item  # type: ignore[no-any-return]
            else:
                # Nothing ready: wait for the first read to end.
                waiting = [one.reading for one in live if one.reading is not None]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel the reads in progress and close every input (see the module's
        docstring); each input is closed even if closing another raised, and the first
        such error is raised at the end."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        for one in self._inputs:
            try:
                await one.close()
            except BaseException as exc:  # (every input is closed first)
                error = error or exc
        self._live = []
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
    for index, given in enumerate(inputs):
        if not hasattr(given, "__aiter__") and not isinstance(given, Iterable):
            raise TypeError(
                f"conveyor.merge: input {index} is a {type(given).__name__!r}, neither an "
                f"iterable nor an async iterable; give lists, generators, async "
                f"generators or streams"
            )
    return Merged(inputs)
