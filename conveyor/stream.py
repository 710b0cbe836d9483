"""``AsyncStream``: the results of one run, consumed once.

A stream starts its run when first iterated. It is an async iterator and an async
context manager: leaving ``async with`` (or calling ``aclose()``) cancels whatever is
still in flight, closes the input, and waits until every task of the run has ended. A
stream that is dropped early (``break`` out of ``async for``) cancels its run at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NoReturn, TextIO, TypeVar

from ._engine._input import NO_INPUT, close_source
from ._engine._run import NOTHING, Run
from ._engine._stats import Collector
from ._progress import Progress, ProgressOptions
from ._spec import StageSpec
from .abc import RunObserver
from .checkpoint import Resumed
from .context import ExecutionMode, PipelineContext
from .feedback import Feedback
from .stats import RunStats

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["AsyncStream"]

T = TypeVar("T")


def check_input(items: Any) -> Any:
    """Reject inputs that are not a stream of items, with a hint."""
    if items is ...:
        return NO_INPUT
    if isinstance(items, Feedback):
        return items  # (read by the pump: see conveyor.feedback)
    if isinstance(items, (str, bytes, bytearray)):
        return (items,)  # one item (as in conveyor-streaming), never split into characters
    if not isinstance(items, (Iterable, AsyncIterable)):
        raise TypeError(
            f"items must be an iterable or async iterable, got {type(items).__name__}; "
            "for a single item write pipeline([item]); to call the first task with no "
            "item (a source task) write pipeline()"
        )
    return items


class AsyncStream(AsyncIterator[T], Generic[T]):
    """The results of one pipeline run (or of wrapping an async iterable).

    ``AsyncStream(source)`` wraps any async iterable; pipelines create streams for runs.
    """

    is_conveyor_stream: ClassVar[bool] = True

    def __init__(self, source: AsyncIterable[T] | Iterable[T]) -> None:
        self._specs: Sequence[StageSpec] = ()
        self._source: Any = check_input(source)
        self._context = PipelineContext()
        self._run: Run | None = None
        self._ready: Any = ()  # the run's results ready to take (see __anext__)
        self._taken: Callable[[], None] = _nothing  # and the ledger's taken, once it runs
        self._started = False
        self._observer: RunObserver | None = None
        self._stats: Collector | None = None
        self._progress: ProgressOptions | None = None
        self._paired: Callable[[Any], Any] | None = None  # (``Pipeline.with_items``)

    @classmethod
    def _for_pipeline(
        cls,
        specs: Sequence[StageSpec],
        source: Any,
        context: PipelineContext,
        paired: Callable[[Any], Any] | None = None,
    ) -> AsyncStream[Any]:
        stream: AsyncStream[Any] = cls.__new__(cls)
        stream._paired = paired
        stream._specs = specs
        stream._source = source
        stream._context = context
        stream._run = None
        stream._ready = ()
        stream._taken = _nothing
        stream._started = False
        stream._observer = None
        stream._stats = None
        stream._progress = ProgressOptions() if context.progress else None
        return stream

    def observe(self, observer: RunObserver) -> AsyncStream[T]:
        """Report this run's per-stage events to ``observer`` (call before iterating).

        See ``conveyor._engine._observe`` for what is reported; an unobserved run pays
        nothing for it.
        """
        if self._started:
            raise RuntimeError("an observer must be attached before iteration starts")
        self._observer = observer
        return self

    def progress(
        self,
        *,
        file: TextIO | None = None,
        stages: bool = False,
        interval: float | None = None,
        desc: str | None = None,
    ) -> AsyncStream[T]:
        """Show this run's progress (call before iterating); see :mod:`conveyor._progress`.

        In a terminal or a notebook: a tqdm bar (``pip install 'conveyor[progress]'``)
        with items/s, and the total and an ETA when the input has a length; one more line
        per stage with ``stages=True``. Written anywhere else (``file=`` a log, stderr
        redirected): a plain line every ``interval`` seconds (10 by default) and one at
        the end. ``file`` is tqdm's: stderr by default. Progress reads the run's
        statistics, which it turns on for this run if the context turned them off.
        """
        if self._started:
            raise RuntimeError("progress() must be called before iteration starts")
        options = ProgressOptions(file=file, stages=stages, interval=interval, desc=desc)
        options.check()
        self._progress = options
        return self

    @property
    def stats(self) -> RunStats:
        """This run's statistics so far: a consistent snapshot, during or after iteration
        (see :mod:`conveyor.stats`). Before the run starts, or with
        ``PipelineContext(statistics=False)``, every figure is empty."""
        collector = self._stats
        snapshot = collector.snapshot() if collector is not None else None
        return RunStats.from_snapshot(
            snapshot, enabled=self._context.statistics or collector is not None
        )

    def as_completed(self) -> AsyncStream[T]:
        """Deliver this run's results in completion order (call before iterating)."""
        self._switch_mode(ExecutionMode.AS_COMPLETED)
        return self

    def ordered(self) -> AsyncStream[T]:
        """Deliver this run's results in input order (the default)."""
        self._switch_mode(ExecutionMode.ORDERED)
        return self

    def _switch_mode(self, mode: ExecutionMode) -> None:
        if self._started:
            raise RuntimeError("the execution mode must be chosen before iteration starts")
        self._context = self._context.copy()
        self._context.execution_mode = mode

    # -- iteration -------------------------------------------------------------------

    def __aiter__(self) -> AsyncStream[T]:
        """The stream itself (an iterator): after ``await anext(stream)``, ``async for``
        and ``collect()`` read on from where it is."""
        return self

    async def __anext__(self) -> T:
        ready = self._ready  # (the run's ``ready``; empty before the run starts)
        if ready:  # Run.take's first lines, inlined: this runs once per result
            item: T = ready.popleft()
            self._taken()  # (the ledger's: delivered, and its token back)
            return item
        run = self._run
        if run is None:
            if self._started:  # closed before it ran: it is over, like any closed stream
                raise StopAsyncIteration
            run = self._start()
        try:
            item = await run.next()
        except asyncio.CancelledError:
            run.abort()
            raise
        return item

    def _start(self) -> Run:
        self._started = True
        context = self._context.copy()
        context.pipeline_id = _new_id()
        progress = self._progress
        if progress is not None:
            progress.check()  # (progress=True in the context: checked here, at the start)
        self._stats = Collector() if context.statistics or progress is not None else None
        run = Run(
            self._specs, self._source, context, self._observer, self._stats, paired=self._paired
        )
        self._run = run
        self._ready = run.ready
        self._taken = run.on_taken
        if progress is not None and self._stats is not None:
            Progress(run, self._stats, progress, run.source)  # (a checkpoint's: its input)
        run.start()
        return run

    def __await__(self) -> Generator[Any, Any, NoReturn]:
        raise TypeError(
            "a pipeline's stream is not awaitable: write `await pipeline(items).collect()` "
            "for the list of results, or `async for result in pipeline(items)` to stream them"
        )

    def __iter__(self) -> NoReturn:
        raise TypeError(
            "a pipeline's stream is asynchronous: write `async for result in "
            "pipeline(items)` or `await pipeline(items).collect()` inside a coroutine "
            "(conveyor.run(main()) runs one from plain code)"
        )

    def _take_ready(self, limit: int) -> list[T]:
        """Up to ``limit`` results that are ready now (no waiting): for the sync iterator."""
        run = self._run
        taken: list[T] = []
        if run is None:
            return taken
        while len(taken) < limit and (value := run.take()) is not NOTHING:
            taken.append(value)
        return taken

    async def collect(self) -> list[T]:
        """Run to the end and return all results."""
        async with self:
            return [item async for item in self]

    async def collect_dataframe(self) -> pd.DataFrame:
        """Run to the end and return all results, in the stream's order, as one pandas
        DataFrame: DataFrames concatenated (their indexes kept), Series joined into one
        column, numpy arrays stacked, dicts as rows, scalars as a column ``value``; an
        empty stream gives an empty DataFrame. Results of mixed kinds raise
        ``TypeError``. See :mod:`conveyor._frames_collect` and ``docs/dataframes.md``.
        """
        from ._frames_collect import to_dataframe  # imports pandas: not with conveyor

        return to_dataframe(await self.collect())

    # -- clean-up --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Cancel what is in flight, close the input, and wait for the run's tasks."""
        if self._run is not None:
            await self._run.shutdown()
        elif not self._started:
            self._started = True  # never ran: nothing to cancel, but it cannot run later
            source = self._source
            if isinstance(source, Resumed):  # (a run on a checkpoint: the input it was given)
                source = source.source
            if source is not NO_INPUT:
                await close_source(source)

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        run = self.__dict__.get("_run")
        if run is not None and not run.loop.is_closed():
            run.abort()

    def __repr__(self) -> str:
        state = "not started" if not self._started else "running"
        return f"<AsyncStream {self._context.execution_mode} {state}>"


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())


def _nothing() -> None:
    """(What taking a result does before a run exists: there is none to take.)"""
