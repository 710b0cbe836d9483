"""The extension points: the protocols a user's object implements to plug into a run.

conveyor's engine is private; these protocols are its public seams. Each is structural
(``typing.Protocol``): an object needs the methods, not a base class. Nothing here is
called by users; conveyor calls these methods on the objects users give it.

* :class:`Executor` -- how a task's calls are made (a task's ``executor=`` option).
  :class:`RunScopedExecutor` and :class:`ChunkedExecutor` are its optional parts:
  an executor that opens something per run, and one that sends calls away in chunks
  and reports where their time went (``stream.stats``'s ``offload``).
* :class:`RunObserver` and :class:`StageObserver` -- what happens in a run, event by
  event (``stream.observe(observer)``).
* :class:`CheckpointStore` and :class:`CheckpointRun` -- where a
  :class:`~conveyor.checkpoint.Checkpoint` keeps its records (``Checkpoint(store)``),
  for a backend other than the SQLite file and the PostgreSQL database conveyor has.

The optional parts are found by ``isinstance`` against these ``runtime_checkable``
protocols, in one place of the engine (``conveyor._engine._registry``), never by probing
attributes elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._stores.base import CheckpointSummary

__all__ = [
    "CheckpointRun",
    "CheckpointStore",
    "ChunkFigures",
    "ChunkedExecutor",
    "Executor",
    "RunObserver",
    "RunScopedExecutor",
    "StageObserver",
    "TaskDescription",
]


@runtime_checkable
class Executor(Protocol):
    """How a task's calls are made: ``executor=`` accepts any object with ``bind``.

    At the start of every run (after its run-scoped resources are open, and after
    :meth:`RunScopedExecutor.open` if the executor has it), the engine calls
    ``bind(invoke)`` once per stage. ``invoke`` is the task's function with that run's
    side inputs and resources bound: a callable of one item (one batch, for a batch task).

    ``bind`` returns the per-item call, a callable of one item that the engine calls on
    the event loop's thread, once per attempt (retries call it again). It must not block.
    It returns one of:

    * a value -- the result, handled like a plain function's (``None`` drops the item, a
      ``list`` or a generator is expanded, a :class:`~conveyor.Failure` passes through);
    * a coroutine, an ``asyncio.Future`` or a ``concurrent.futures.Future`` -- awaited in
      a real asyncio task of the run (its ``timeout=`` applies around it; a timeout
      cancels the task, and cancels a ``concurrent.futures.Future`` not yet running).

    An exception the call raises (or its awaitable raises) is the item's error, under the
    task's error policy. The engine never closes the executor: what it opened per run it
    closes through :meth:`RunScopedExecutor.open`'s exit stack.
    """

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The per-item call for ``invoke`` (see the class's docstring)."""
        ...


@runtime_checkable
class RunScopedExecutor(Executor, Protocol):
    """An :class:`Executor` that opens something for each run (a pool, a connection).

    ``await open(stack, shared)`` is called once per run, before ``bind``, on the run's
    loop; it returns the executor the run uses (often a fresh object for that run, so
    that one task object can run in several runs at once). What it opens it registers
    on ``stack`` (a :class:`contextlib.AsyncExitStack`), which the run closes when it
    ends, however it ends, after every call of the run has ended. ``shared`` is one
    dict per run, shared by the run's stages: executors of the same kind and size may
    share one pool through it (keyed by an object of their own). An exception ``open``
    raises fails the run before any item is read.

    A run whose stages have run-scoped executors keeps them open until every call has
    ended, as it does for resources.
    """

    async def open(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> Executor: ...


@runtime_checkable
class ChunkFigures(Protocol):
    """Where the time of chunked calls went, for one stage of one run.

    Totals over the chunks answered so far (read by ``stream.stats`` while the run
    goes on): ``chunks`` and ``items`` sent and answered, and seconds of ``work_total``
    (the function's calls in the workers), ``transfer_total`` (pickling there and
    back) and ``round_trip_total`` (from sending a chunk to its answer). ``size`` is the
    current chunk size; ``per_item`` and ``cpu_per_item`` the measured seconds of work
    (wall and CPU) per item, ``None`` until a chunk was answered.
    """

    chunks: int
    items: int
    work_total: float
    transfer_total: float
    round_trip_total: float
    size: int
    per_item: float | None
    cpu_per_item: float | None


@runtime_checkable
class ChunkedExecutor(Executor, Protocol):
    """An :class:`Executor` that sends calls to other processes in chunks.

    ``chunker`` is the run's :class:`ChunkFigures` once ``bind`` was called (``None``
    before, or when nothing is chunked): ``stream.stats`` reports it as the stage's
    ``offload``, and ``executor="auto"`` learns from it.
    """

    @property
    def chunker(self) -> ChunkFigures | None: ...


class TaskDescription(Protocol):
    """What a :class:`RunObserver` is told of a stage's task (read-only).

    ``name`` is the task's name (``task_name=``, or its function's), ``batch`` whether
    it is a batch task, ``options`` its validated options (attributes named as the
    keyword options of ``@single_task``/``@batch_task``: ``options.executor``,
    ``options.concurrency_limit``, ...).
    """

    @property
    def name(self) -> str: ...
    @property
    def batch(self) -> bool: ...
    @property
    def options(self) -> Any: ...


class StageObserver(Protocol):
    """Receives what happens in one stage of one run (see :class:`RunObserver`).

    Every method is called on the event loop's thread and must return quickly without
    blocking; an exception it raises fails the run.

    * ``items_in(n)`` -- ``n`` items reached the stage (a batch stage: each item of a
      batch; a :class:`~conveyor.Failure` passing through counts too);
    * ``items_out(n)`` -- the stage sent ``n`` results on (a list result counts once per
      element, a dropped item not at all, a ``Failure`` passing through counts);
    * ``call_started()`` / ``call_ended(seconds, error)`` -- every call, retries
      included, with its duration and the exception it raised (``None`` on success);
    * ``retried(error, attempt)`` -- attempt number ``attempt`` failed with ``error`` and
      is retried.
    """

    def items_in(self, n: int) -> None: ...
    def items_out(self, n: int) -> None: ...
    def call_started(self) -> None: ...
    def call_ended(self, seconds: float, error: BaseException | None) -> None: ...
    def retried(self, error: BaseException, attempt: int) -> None: ...


class RunObserver(Protocol):
    """Receives what happens in one run: ``stream.observe(observer)``.

    * ``stage(index, spec)`` -- called once per stage, in order, when the run starts;
      returns that stage's :class:`StageObserver`; ``spec`` describes the stage's task
      (:class:`TaskDescription`: its ``name``, ``batch``, ``options``).
    * ``waited_for_room(seconds)`` -- the input (or a generator) waited that long for
      room in the window (``max_in_flight``).

    Every method is called on the event loop's thread and must not block. A run that is
    observed fuses no stages, so that every item and call is reported.
    """

    def stage(self, index: int, spec: TaskDescription) -> StageObserver: ...
    def waited_for_room(self, seconds: float) -> None: ...


class CheckpointRun(Protocol):
    """One run's hold on a :class:`CheckpointStore` (what ``open_run`` returns).

    It holds the store's lock (one run at a time) from ``open_run`` until ``close``.
    Every method is called on the thread that called ``open_run`` (the run's checkpoint
    writer, never the event loop's thread), one call at a time; each may block on its
    disk or its network.

    * ``skip`` -- the keys recorded when the run opened: done ones, and failed ones
      unless ``open_run`` was given ``retry_failed=True``. The run skips input items
      whose key is in it.
    * ``record(done, failed)`` -- record the keys of ``done`` as done and those of
      ``failed`` as failed, with ``(exception type, message)``, **in one transaction**
      (all or none: a crash in the middle must leave none of them recorded), replacing
      what is recorded for them. The two are disjoint, without repeats. When it returns,
      the records must survive the process's death (a crash of the machine may lose the
      last ones if the store says so).
    * ``close(outcome, done, failed, skipped)`` -- the run is over: keep its end,
      ``outcome`` (``"finished"``, ``"closed"`` or ``"failed"``) and counts for
      ``summary()``, and let the lock go, even if keeping them fails.
    """

    @property
    def skip(self) -> set[str]: ...
    def record(self, done: list[str], failed: dict[str, tuple[str, str]]) -> None: ...
    def close(self, outcome: str, done: int, failed: int, skipped: int) -> None: ...


@runtime_checkable
class CheckpointStore(Protocol):
    """Where a :class:`~conveyor.checkpoint.Checkpoint` keeps its records:
    ``Checkpoint(store)``.

    conveyor has two: a SQLite file (``Checkpoint(path)``) and a PostgreSQL database
    (``Checkpoint("postgresql://...")``); implement this protocol for another backend.
    Keys are ``str`` (the ``Checkpoint``'s ``key_of(item)``).

    * ``open_run(retry_failed)`` -- take the store's lock for one run and return its
      :class:`CheckpointRun`; raise :class:`~conveyor.checkpoint.CheckpointBusy` at once
      if another run (in this process or another) holds it. The lock must be let go
      when the process dies, however it dies (a file lock, a database session's lock),
      so that a crash leaves no stale lock. Called on the run's checkpoint writer thread.
    * ``summary()`` -- a :class:`~conveyor.checkpoint.CheckpointSummary`;
      ``failures()`` -- the failed keys, ``{key: (exception type, message)}``;
      ``reset()`` -- forget every key and run, raising
      :class:`~conveyor.checkpoint.CheckpointBusy` while a run holds the lock. These
      three are called on the user's thread, which may be running an event loop: they
      must not use (nor need) the caller's loop.
    """

    def open_run(self, retry_failed: bool) -> CheckpointRun: ...
    def summary(self) -> CheckpointSummary: ...
    def failures(self) -> dict[str, tuple[str, str]]: ...
    def reset(self) -> None: ...
