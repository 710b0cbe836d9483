"""Executors on pools: a user's thread pool, and the process pools of a run.

* :class:`PoolExecutor`: a ``concurrent.futures`` thread pool the user passes; one item
  per call, in a copy of the run's context. Never shut down by conveyor.
* :class:`Processes`: ``executor="process"`` / ``"process:N"``, or a process pool the user
  passes (``ProcessPoolExecutor``, loky, any ``concurrent.futures.Executor`` that is not
  a thread pool): calls travel in measured chunks (``_chunks``).

Pools that conveyor creates are *run-scoped* (see ``_calls``): created when the run opens
them, shared by the run's tasks that ask for the same kind and size, and closed when the
run ends, however it ends, once every process has exited. ``"process"`` means one
process per core the process may use (``N`` is never capped). (Threads that conveyor
owns are ``_threads``'.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._spec import StageSpec
from . import _interrupt
from ._calls import Executor
from ._chunks import Chunker, run_chunk, start_worker
from ._pickling import dump_function
from ._weight import WEIGHER, Weigher

__all__ = ["PoolExecutor", "Processes", "cores"]


def cores() -> int:
    """Cores this process may use: the workers of ``executor="process"``."""
    count = getattr(os, "process_cpu_count", os.cpu_count)()  # (3.13+: affinity-aware)
    return count or 1


class PoolExecutor:
    """A ``concurrent.futures`` thread pool the user passes (never shut down by conveyor).

    Each call runs in its own copy of the run's context, as it would on the loop.
    """

    def __init__(self, pool: concurrent.futures.Executor) -> None:
        self.pool = pool

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        submit = self.pool.submit
        if isinstance(self.pool, concurrent.futures.ThreadPoolExecutor):
            copy_context = contextvars.copy_context

            def in_thread(item: Any) -> concurrent.futures.Future[Any]:
                return submit(copy_context().run, invoke, item)

            return in_thread
        return lambda item: submit(invoke, item)

    def __repr__(self) -> str:
        return f"{type(self.pool).__name__}"


# -- processes ------------------------------------------------------------------------------


class Processes:
    """``executor="process"`` / ``"process:N"``, or a user's process pool: chunked calls.

    The pool conveyor creates uses the ``forkserver`` start method where there is one
    (Linux; the default from Python 3.14), else ``spawn``: never ``fork``, which is unsafe
    in a process with threads. A worker that dies breaks a ``ProcessPoolExecutor``: the
    items of its chunks fail with ``BrokenProcessPool`` under the task's policy, and a
    pool that conveyor owns is replaced for the chunks that follow.

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
            self.pool.submit,
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
    """One run's process pool (or the user's), shared by the run's tasks that use it."""

    def __init__(self, workers: int, user_pool: concurrent.futures.Executor | None) -> None:
        self.owned = user_pool is None
        self.workers = workers or cores()  # (a user's pool: its size is not public)
        self.stop: Any = None  # the workers' stop flag (a shared byte), on pools we own
        self.stopped = False  # the run has ended: no pool is replaced any more
        self.pool = user_pool or self._new()
        self.retired: list[concurrent.futures.Executor] = []
        self.chunkers: list[Chunker] = []
        self.loop = asyncio.get_running_loop()
        _interrupt.register(self)

    def _new(self) -> concurrent.futures.ProcessPoolExecutor:
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            _preload(context)
        if self.stop is None:  # (one flag for the pool and its replacements)
            self.stop = context.RawValue("b", 0)
        return concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=start_worker, initargs=(self.stop,)
        )

    def submit(self, function: bytes, items: bytes) -> concurrent.futures.Future[bytes]:
        pool = self.pool
        try:
            future = pool.submit(run_chunk, function, items)
        except BrokenProcessPool:
            if not self.owned:
                raise
            self.replace(pool)
            pool = self.pool
            future = pool.submit(run_chunk, function, items)
        if self.owned:
            future.add_done_callback(functools.partial(self._check, pool))
        return future

    def _check(
        self, pool: concurrent.futures.Executor, future: concurrent.futures.Future[Any]
    ) -> None:
        """(In the pool's thread.) Replace the pool, on the loop, if this chunk broke it.

        Registered before the chunker's own callback: the pool is replaced before the
        chunk's items fail, so their retries go to the new pool."""
        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self.loop.call_soon_threadsafe(self.replace, pool)

    def replace(self, pool: concurrent.futures.Executor) -> None:
        if pool is self.pool and not self.stopped:
            pool.shutdown(wait=False, cancel_futures=True)
            self.retired.append(pool)
            self.pool = self._new()

    def lost(self, error: BaseException, count: int) -> BaseException:
        """The exception each item of a chunk lost with ``error`` fails with."""
        if isinstance(error, BrokenProcessPool):
            replaced = " conveyor replaced the pool." if self.owned else ""
            return BrokenProcessPool(
                f"a worker process died (killed, crashed, or out of memory) while this "
                f"item's chunk of {count} was out, so its result is lost.{replaced} Set "
                f"retry_attempts to run such items again."
            )
        return error

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
        pools = [*self.retired, self.pool]

        def shut_down() -> None:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)

        try:
            await _in_thread(shut_down)  # (to its end, even if cancelled)
        finally:
            _interrupt.unregister(self)

    def _stop(self) -> None:
        self.stopped = True
        if self.stop is not None:
            self.stop.value = 1
        for chunker in self.chunkers:
            for future in chunker.out:
                future.cancel()  # (a chunk not yet started)

    def abandon(self) -> list[threading.Thread]:
        """(On the loop; see ``_interrupt``.) Stop, and terminate the workers of the pools
        conveyor owns (a user's pool is the user's: only its chunks not started are
        cancelled). Their calls are lost: the run is over."""
        self._stop()
        if self.owned:
            for pool in [*self.retired, self.pool]:
                _terminate(pool)
        return []


def _terminate(pool: concurrent.futures.Executor) -> None:
    """Terminate a process pool's workers now (SIGTERM): ``terminate_workers()`` from
    Python 3.14, the pool's process table before it."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        with contextlib.suppress(Exception):  # (the pool has ended meanwhile)
            terminate()
        return
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(Exception):  # (exited meanwhile)
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


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
