"""Executors on pools: a user's thread pool, and the process pools of a run.

* :class:`PoolExecutor`: a ``concurrent.futures`` thread pool the user passes; one item
  per call, in a copy of the run's context. Never shut down by conveyor; per run
  (:class:`PoolCalls`) the run's end waits for its own calls still running there.
* :class:`Processes`: ``executor="process"`` / ``"process:N"``, or a process pool the user
  passes (``ProcessPoolExecutor``, loky, any ``concurrent.futures.Executor`` that is not
  a thread pool): calls travel in measured chunks (``_chunks``).

Pools that conveyor creates are *run-scoped* (``conveyor.abc.RunScopedExecutor``): opened
with the run, shared by its tasks of the same kind and size, closed when it ends, however
it ends, once every process has exited. ``"process"``: a process per usable core.

**A worker that dies** breaks a ``ProcessPoolExecutor``: see ``_deaths`` for how the
item that killed it is found, and :meth:`ProcessPool.lost` for what becomes of the items
that were out (the culprit fails alone, the others are sent again to a fresh pool).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._spec import StageSpec
from . import _interrupt
from ._calls import Executor
from ._chunks import Chunker
from ._deaths import RESTARTS, Generation, PoolGaveUp, gave_up, users_pool_broke, worker_died
from ._pickling import dump_function
from ._weight import WEIGHER, Weigher
from ._worker import run_chunk

__all__ = ["PoolCalls", "PoolExecutor", "Processes", "cores"]


def cores() -> int:
    """Cores this process may use: the workers of ``executor="process"``."""
    count = getattr(os, "process_cpu_count", os.cpu_count)()  # (3.13+: affinity-aware)
    return count or 1


class PoolExecutor:
    """A ``concurrent.futures`` thread pool the user passes (never shut down by conveyor).

    Each call runs in its own copy of the run's context, as it would on the loop. Per
    run (:meth:`open`), the run's calls are :class:`PoolCalls`: conveyor cannot shut the
    pool down, but the run waits for its own calls before it ends.
    """

    def __init__(self, pool: concurrent.futures.Executor) -> None:
        self.pool = pool

    async def open(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> PoolCalls:
        # Opened after the run's resources, so waited for before they close: a call that
        # timed out or was left running by the run's end never sees a closed resource.
        calls = PoolCalls(self.pool)
        stack.push_async_callback(calls.wait)
        return calls

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The calls on the pool, outside a run (a run binds what :meth:`open` gives)."""
        return PoolCalls(self.pool).bind(invoke)

    def __repr__(self) -> str:
        return f"{type(self.pool).__name__}"


class PoolCalls:
    """The calls of one run on a user's thread pool: their Futures are kept (on the loop)
    until they are done, so that the run's end can wait for those still running."""

    def __init__(self, pool: concurrent.futures.Executor) -> None:
        self.pool = pool
        self.futures: list[concurrent.futures.Future[Any]] = []
        self.pruned = 0  # the length of ``futures`` after the last pruning

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        submit = self.pool.submit
        futures = self.futures
        if isinstance(self.pool, concurrent.futures.ThreadPoolExecutor):
            copy_context = contextvars.copy_context

            def call(item: Any) -> concurrent.futures.Future[Any]:
                return submit(copy_context().run, invoke, item)
        else:  # (another pool: the call as is; a run sends those to Processes)

            def call(item: Any) -> concurrent.futures.Future[Any]:
                return submit(invoke, item)

        def in_thread(item: Any) -> concurrent.futures.Future[Any]:
            future = call(item)
            futures.append(future)
            if len(futures) > 2 * self.pruned + 64:  # amortised: O(1) per call
                futures[:] = [kept for kept in futures if not kept.done()]
                self.pruned = len(futures)
            return future

        return in_thread

    async def wait(self) -> None:
        """Wait until every call of the run on the pool has ended (a call not started is
        cancelled by the run's end, and one running cannot be: it runs to its end)."""
        running = [asyncio.wrap_future(future) for future in self.futures if not future.done()]
        self.futures.clear()
        if running:
            await asyncio.wait(running)
        for call in running:  # (their outcome is the run's no more: retrieved, dropped)
            if not call.cancelled():
                call.exception()

    def __repr__(self) -> str:
        return f"{type(self.pool).__name__}"


# -- processes ------------------------------------------------------------------------------


class Processes:
    """``executor="process"`` / ``"process:N"``, or a user's process pool: chunked calls.

    The pool conveyor creates uses the ``forkserver`` start method where there is one
    (Linux; the default from Python 3.14), else ``spawn``: never ``fork``, which is unsafe
    in a process with threads. A worker that dies: see the module doc.

    The workers of a pool conveyor creates ignore SIGINT (a Ctrl-C is the main process's
    to handle: the run's end lets running calls finish), and share the pool's *stop*
    flag: once the run ends, a chunk still queued in the pool, or the rest of a chunk
    under way, is not run (see ``run_chunk``), so the run's end waits for at most the
    calls running now. On a second Ctrl-C the workers are terminated (``_interrupt``).
    """

    def __init__(
        self, spec: StageSpec, workers: int = 0, pool: concurrent.futures.Executor | None = None
    ) -> None:
        self.spec = spec
        self.workers = workers
        self.user_pool = pool

    async def open(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> Executor:
        return self.create(stack, shared)

    def create(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> ChunkedCalls:
        key = ("pool", id(self.user_pool)) if self.user_pool else ("process", self.workers)
        if key not in shared:
            shared[key] = pool = ProcessPool(self.workers, self.user_pool)
            stack.push_async_callback(pool.close)
        return ChunkedCalls(shared[key], self.spec, repr(self), shared.get(WEIGHER))

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        raise RuntimeError("a run-scoped executor is used once the run has opened it")

    def __repr__(self) -> str:
        if self.user_pool is not None:
            return type(self.user_pool).__name__
        return f"'process:{self.workers}'"


class ChunkedCalls:
    """The calls of one task on one run's process pool (see ``_chunks``)."""

    def __init__(
        self, pool: ProcessPool, spec: StageSpec, name: str, weigher: Weigher | None = None
    ) -> None:
        self.pool = pool
        self.spec = spec
        self.name = name
        self.weigher = weigher  # (the run's byte bound: chunk copies count toward it)
        self.chunker: Chunker | None = None

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        resources = tuple(key for key, _ in self.spec.resources)
        function = dump_function(invoke, self.spec.name, self.name, resources)
        self.chunker = Chunker(
            asyncio.get_running_loop(),
            function,
            functools.partial(self.pool.submit, task=self.spec.name),
            self.pool.lost,
            self.pool.workers,
            self.spec.options.chunk_size,
            self.weigher,
        )
        self.pool.chunkers.append(self.chunker)
        return self.chunker.call

    def __repr__(self) -> str:
        return self.name


class ProcessPool:
    """One run's process pool (or the user's), shared by the run's tasks that use it.

    A pool that conveyor owns is one ``_deaths.Generation`` (a ``ProcessPoolExecutor``)
    after another: each break retires one, buried in a thread of its own, and starts the
    next (see ``_deaths``)."""

    def __init__(self, workers: int, user_pool: concurrent.futures.Executor | None) -> None:
        self.owned = user_pool is None
        self.workers = workers or cores()  # (a user's pool: its size is not public)
        self.user_pool = user_pool
        self.context: Any = None
        self.current: Generation | None = None
        self.stop: Any = None  # the workers' stop flag (a shared byte), on pools we own
        self.ended = False  # the run has ended: no pool is replaced any more
        if user_pool is None:
            self.context = _context()
            self.stop = self.context.RawValue("b", 0)  # (one for every generation)
            self.current = Generation(self.workers, self.context, self.stop)
        self.retired: list[tuple[Generation, threading.Thread]] = []  # and its burial
        self.chunkers: list[Chunker] = []
        self.loop = asyncio.get_running_loop()
        self.numbers = itertools.count()
        self.broken: dict[concurrent.futures.Future[Any], tuple[Generation, int]] = {}
        self.breaks = 0  # in a row, with no chunk completing in between
        self.stopped: PoolGaveUp | None = None
        # Whether a pool broke: on 3.11 a broken pool's thread raises InvalidStateError if
        # a future it is failing was cancelled meanwhile, so close() leaves them to it.
        self.broke = False
        _interrupt.register(self)

    def submit(self, function: bytes, items: bytes, task: str) -> concurrent.futures.Future[bytes]:
        if self.user_pool is not None:
            return self.user_pool.submit(run_chunk, function, items)
        if self.stopped is not None:
            raise PoolGaveUp(*self.stopped.args)  # (a fresh one: tracebacks of its own)
        generation = self.current
        if generation is None:  # (the run has ended: nothing more is sent)
            raise BrokenProcessPool("the run has ended: its pool is closed")
        number = next(self.numbers)
        try:
            future = generation.submit(run_chunk, function, items, number)
        except BrokenProcessPool:  # (before its manager thread told the loop)
            generation.examine()
            self.replace(generation)
            if self.stopped is not None or self.current is None:
                raise PoolGaveUp(*(self.stopped or BrokenProcessPool("closed")).args) from None
            generation = self.current
            future = generation.submit(run_chunk, function, items, number)
        generation.sent[number] = (task, items, future)
        future.add_done_callback(functools.partial(self._check, generation, number))
        return future

    def _check(
        self, generation: Generation, number: int, future: concurrent.futures.Future[Any]
    ) -> None:
        """(In the pool's manager thread.) A chunk is done: if it broke the pool, examine
        the dead and replace the pool, on the loop.

        Registered before the chunker's own callback: the loop replaces the pool before
        the chunk's items are answered, and sent again."""
        if future.cancelled():
            generation.sent.pop(number, None)
        elif isinstance(future.exception(), BrokenProcessPool):
            self.broke = True
            generation.examine()
            self.broken[future] = (generation, number)
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self.loop.call_soon_threadsafe(self.replace, generation)
        else:
            generation.sent.pop(number, None)
            self.breaks = 0  # the workers got through a chunk: the pool makes progress

    def replace(self, generation: Generation) -> None:
        """Retire a broken pool and start a fresh one, unless it broke too often. Not once
        the run has ended: ``close`` (or ``abandon``) shuts the pool down as it is."""
        if generation is not self.current or self.ended:
            return
        burial = threading.Thread(target=generation.bury, name="conveyor-broken-pool")
        burial.start()
        self.retired.append((generation, burial))
        self.breaks += 1
        if self.breaks <= RESTARTS:
            self.current = Generation(self.workers, self.context, self.stop)
            return
        self.current = None
        self.stopped = gave_up(generation, self.breaks)

    def lost(
        self, error: BaseException, sent: concurrent.futures.Future[Any] | None, count: int
    ) -> list[BaseException | None]:
        """How each item of a chunk that failed is answered (see ``Chunker``): a broken
        pool's innocent items are sent again (None), its culprit fails alone."""
        if not isinstance(error, BrokenProcessPool):
            return [error] * count
        if self.user_pool is not None:
            self.broke = True
            return [users_pool_broke(self.user_pool, count)] * count
        found = self.broken.pop(sent, None) if sent is not None else None
        if found is None:  # refused by submit: the pool gave up
            return [error] * count
        generation, number = found
        if self.stopped is not None:
            generation.sent.pop(number, None)
            return [self.stopped] * count
        answers: list[BaseException | None] = [None] * count
        culprit = generation.culprit(number)
        generation.sent.pop(number, None)
        if culprit is not None:
            _, item, code = culprit
            answers[generation.deaths[number][0]] = worker_died(item, code)
        return answers

    async def close(self) -> None:
        """Close the pools conveyor created, once their processes have exited.

        Chunks not started are cancelled; a chunk still running (the run ended early)
        runs to its end first: a worker process is never killed mid-call. On pools conveyor
        owns, only the call under way does: the stop flag tells the workers to skip the
        rest of their chunks (those already queued in the pool, and the rest of the
        chunk under way)."""
        self._stop()
        if not self.owned:
            _interrupt.unregister(self)
            return
        retired, current = list(self.retired), self.current

        def shut_down() -> None:
            for _, burial in retired:
                burial.join()
            if current is not None:
                current.executor.shutdown(wait=True, cancel_futures=True)

        try:
            await _in_thread(shut_down)  # (to its end, even if cancelled)
        finally:
            _interrupt.unregister(self)

    def _stop(self) -> None:
        """The run has ended: no pool is replaced, the workers skip what they have not
        started (the stop flag), and chunks not handed to a worker are cancelled (unless a
        pool broke: its own thread fails them, see ``_check``)."""
        self.ended = True
        if self.stop is not None:
            self.stop.value = 1
        if not self.broke:
            for chunker in self.chunkers:
                for future in chunker.out:
                    future.cancel()  # (a chunk not yet started)

    def abandon(self) -> list[threading.Thread]:
        """(On the loop; see ``_interrupt``.) Stop, and terminate the workers of the pools
        conveyor owns (a user's pool is the user's: only its chunks not started are
        cancelled). Their calls are lost: the run is over."""
        self._stop()
        if self.owned:
            generations = [generation for generation, _ in self.retired]
            if self.current is not None:
                generations.append(self.current)
            for generation in generations:
                generation.terminate()
        return []


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    method = "forkserver" if "forkserver" in methods else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        _preload(context)
    return context


_preloaded = False


def _preload(context: Any) -> None:
    """Ask the forkserver, before it starts, to import conveyor once for all workers.

    Each worker is forked from the forkserver; without this, each imports conveyor on
    its first chunk (measured on 3.11: first result 83-108 ms after the run starts;
    with it, 13-21 ms). ``"__main__"`` is the default preload, kept. This sets the
    forkserver's list for the whole process, once, and only matters if the forkserver
    has not started yet (a list set by the program after this replaces it)."""
    global _preloaded
    if not _preloaded:
        _preloaded = True
        context.set_forkserver_preload(["__main__", __name__])


async def _in_thread(blocking: Callable[[], Any]) -> None:
    """Run ``blocking`` in a thread of its own, awaited to its end (even if cancelled)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def target() -> None:
        try:
            blocking()
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_once, done)

    thread = threading.Thread(target=target, name="conveyor-close")
    thread.start()
    try:
        await asyncio.shield(done)
    finally:
        thread.join()


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def executor_for(spec: StageSpec, option: Any) -> Executor:
    """The pools' kinds (see ``_registry``): ``"process[:N]"``, or a user's pool."""
    if isinstance(option, concurrent.futures.ThreadPoolExecutor):
        return PoolExecutor(option)
    if isinstance(option, str):
        return Processes(spec, int(option.partition(":")[2] or cores()))
    return Processes(spec, pool=option)
