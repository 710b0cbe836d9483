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

**A worker that dies.** When one worker of a ``ProcessPoolExecutor`` dies, the pool
fails *every* chunk it holds with ``BrokenProcessPool`` and terminates its other
workers: the items of those chunks are innocent but for one. To tell which, each worker
of a pool conveyor owns writes, in a shared array, the chunk and item it is starting
(``_chunks.start_worker``), and conveyor keeps hold of the pool's worker processes
(``multiprocessing.active_children()`` after a submit, until it has them all). The
pool's manager thread fails the chunks *before* it terminates the other workers, so at
the first failed chunk (:meth:`Generation.examine`, in that thread) the workers already
dead are exactly those that died on their own; the item in a dead worker's slot killed
it, and ``Process.exitcode`` says how (exit code or signal). Then:

* that item fails with :class:`WorkerDied` ("the worker process running item 1000 died
  (killed by SIGKILL)"), under its task's policy: retried (on the fresh pool), skipped,
  emitted, or failing the run; counted once, like any failed call;
* every other item of the broken chunks is sent again, first in line, on a fresh pool:
  not a retry (the policy never sees it), not counted, answered once;
* a pool that breaks :data:`RESTARTS` times in a row with no chunk completing in between
  is not replaced again: every item waiting on it fails with :class:`PoolGaveUp`, which no
  policy handles (``_policy.Unrecoverable``): the run fails, naming the task, the item
  that killed the last worker and the bound. A function that kills every worker stops
  there, not after one restart per item.

A worker that died between items (killed from outside while idle) blames no item: its
chunks are sent again, and the bound applies. A pool the user passes cannot be replaced
(a broken ``ProcessPoolExecutor`` stays broken): when it breaks, the run fails with
:class:`PoolGaveUp`, which names the fix (``executor="process:N"``).
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
import pickle
import signal
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._spec import StageSpec
from ..errors import short_repr
from ._calls import Executor
from ._chunks import Chunker, run_chunk, start_worker
from ._pickling import dump_function
from ._policy import Unrecoverable

__all__ = ["RESTARTS", "PoolExecutor", "PoolGaveUp", "Processes", "WorkerDied", "cores"]

RESTARTS = 5
"""How many times in a row a run's pool is replaced with no chunk completing in between."""


class WorkerDied(BrokenProcessPool):
    """The worker process running this item died: the item's own failure, under its
    task's policy (the other items that were out were sent again)."""


class PoolGaveUp(BrokenProcessPool, Unrecoverable):
    """A process pool that cannot go on (it kept breaking, or it is the user's and
    broke): no policy handles it, the run fails with it."""


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
    in a process with threads. A worker that dies: see the module doc.
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
        return ChunkedCalls(shared[key], self.spec, repr(self))

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        raise RuntimeError("a run-scoped executor is used once the run has opened it")

    def __repr__(self) -> str:
        if self.user_pool is not None:
            return type(self.user_pool).__name__
        return f"'process:{self.workers}'"


class ChunkedCalls:
    """The calls of one task on one run's process pool (see ``_chunks``)."""

    def __init__(self, pool: ProcessPool, spec: StageSpec, name: str) -> None:
        self.pool = pool
        self.spec = spec
        self.name = name
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
        )
        self.pool.chunkers.append(self.chunker)
        return self.chunker.call

    def __repr__(self) -> str:
        return self.name


class Generation:
    """One ``ProcessPoolExecutor`` of a run's pool, its workers' record, and who died.

    ``sent`` maps a chunk's number to ``(task, items payload, future)`` while it is out;
    ``deaths`` (filled by :meth:`examine`) maps a chunk's number to ``(index, exit code)``
    of the item that killed its worker; ``processes`` are the pool's worker processes."""

    def __init__(self, workers: int, context: Any) -> None:
        self.workers = workers
        self.record = context.RawArray("q", 3 * workers)  # pid, chunk, item, per worker
        taken = context.Value("i", 0)
        self.executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=start_worker, initargs=(self.record, taken)
        )
        self.processes: dict[int, Any] = {}  # pid: its multiprocessing.Process
        self.sent: dict[int, tuple[str, bytes, concurrent.futures.Future[bytes]]] = {}
        self.deaths: dict[int, tuple[int, int]] = {}
        self.dead: list[int] = []  # exit codes of workers that died between items
        self.examined = False
        self.lock = threading.Lock()  # (a worker's exit status is read once, under it)

    def submit(self, *args: Any) -> concurrent.futures.Future[bytes]:
        """``executor.submit``, keeping hold of the worker processes it starts, the public
        way: ``submit`` starts a worker itself (never from another thread: conveyor's pools
        set no ``max_tasks_per_child``), so a new worker is a child that was not active just
        before (until the pool has all its workers)."""
        if len(self.processes) >= self.workers:
            return self.executor.submit(*args)
        with self.lock:
            before = {process.pid for process in multiprocessing.active_children()}
        future = self.executor.submit(*args)
        with self.lock:
            for process in multiprocessing.active_children():
                if process.pid not in before:
                    self.processes[process.pid] = process  # type: ignore[index]
        return future

    def bury(self) -> None:
        """(In a thread of its own, once the pool broke.) Wait for the pool's thread to end,
        then finish what it may have left: on 3.11 a ``submit`` racing the break can add
        a chunk after the pool failed its chunks, and start a worker after it terminated
        its workers; such a chunk is failed here (its items are sent again) and such a
        worker, which never got a call, is terminated. Every worker is joined."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        for _, _, future in list(self.sent.values()):
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(BrokenProcessPool("left pending by a broken pool"))
        for process in self.processes.values():
            if process.exitcode is None:
                process.terminate()
            process.join()

    def examine(self) -> None:
        """Which workers died on their own, and on which item (see the module doc).

        Called at the first chunk the pool fails, in its manager thread, before it
        terminates the other workers (or on the loop, if ``submit`` found the pool broken
        first: then too the others are still alive, or being terminated, and the dead
        were found dead before that). Once per pool."""
        with self.lock:
            if self.examined:
                return
            self.examined = True
            for at in range(0, 3 * self.workers, 3):
                pid, chunk, index = self.record[at : at + 3]
                process = self.processes.get(pid)
                code = None if process is None else process.exitcode
                if code is None:  # alive (terminated next, by the pool), or unknown
                    continue
                if index >= 0:
                    self.deaths[chunk] = (index, code)
                else:
                    self.dead.append(code)

    def culprit(self, chunk: int) -> tuple[str, Any, int] | None:
        """``(task, item, exit code)`` of the item that killed the worker running
        ``chunk``, if one did."""
        death, sent = self.deaths.get(chunk), self.sent.get(chunk)
        if death is None or sent is None:
            return None
        index, code = death
        return sent[0], pickle.loads(sent[1])[index], code

    def last_words(self) -> tuple[str, str]:
        """The task, and what is known of how this pool broke, for :class:`PoolGaveUp`."""
        task = next(iter(self.sent.values()), ("?",))[0]
        for chunk in self.deaths:
            found = self.culprit(chunk)
            if found is not None:
                task, item, code = found
                return task, f"the worker running item {short_repr(item)} died ({how(code)})"
        if self.dead:
            return task, f"a worker died between items ({how(self.dead[0])})"
        return task, "a worker died with no item to blame"


class ProcessPool:
    """One run's process pool (or the user's), shared by the run's tasks that use it.

    A pool that conveyor owns is a succession of :class:`Generation` after another: each break
    (see the module doc) retires one and starts the next."""

    def __init__(self, workers: int, user_pool: concurrent.futures.Executor | None) -> None:
        self.owned = user_pool is None
        self.workers = workers or cores()  # (a user's pool: its size is not public)
        self.user_pool = user_pool
        self.context: Any = None
        self.current: Generation | None = None
        if user_pool is None:
            self.context = _context()
            self.current = Generation(self.workers, self.context)
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

    def submit(self, function: bytes, items: bytes, task: str) -> concurrent.futures.Future[bytes]:
        if self.user_pool is not None:
            return self.user_pool.submit(run_chunk, function, items)
        if self.stopped is not None:
            raise PoolGaveUp(*self.stopped.args)  # (a fresh one: tracebacks of its own)
        generation = self.current
        assert generation is not None
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
        """Retire a broken pool and start a fresh one, unless it broke too often."""
        if generation is not self.current:
            return
        burial = threading.Thread(target=generation.bury, name="conveyor-broken-pool")
        burial.start()
        self.retired.append((generation, burial))
        self.breaks += 1
        if self.breaks <= RESTARTS:
            self.current = Generation(self.workers, self.context)
            return
        task, words = generation.last_words()
        self.current = None
        self.stopped = PoolGaveUp(
            f"task {task!r}: its worker processes died {self.breaks} times in a row, with "
            f"no chunk of work completing in between (the last time, {words}); conveyor "
            f"replaces a broken pool at most {RESTARTS} times in a row, so the run stops. "
            f"Find out why the workers die (a crash in native code, memory: SIGKILL is what "
            f"the out-of-memory killer sends); with on_error='skip_item' or 'emit', a few "
            f"such items fail alone."
        )

    def lost(
        self, error: BaseException, sent: concurrent.futures.Future[Any] | None, count: int
    ) -> list[BaseException | None]:
        """How each item of a chunk that failed is answered (see ``Chunker``): a broken
        pool's innocent items are sent again (None), its culprit fails alone."""
        if not isinstance(error, BrokenProcessPool):
            return [error] * count
        if self.user_pool is not None:
            self.broke = True
            return [self._users_pool_broke(count)] * count
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
            index = generation.deaths[number][0]
            answers[index] = WorkerDied(
                f"the worker process running item {short_repr(item)} died ({how(code)}): "
                f"it crashed, was killed, or ran out of memory. The other items that were "
                f"out on the pool were sent again, to a fresh pool; retry_attempts would "
                f"try this one again there."
            )
        return answers

    def _users_pool_broke(self, count: int) -> PoolGaveUp:
        return PoolGaveUp(
            f"the process pool given as executor= ({type(self.user_pool).__name__}) is "
            f"broken: one of its worker processes died (crashed, killed, or out of memory) "
            f"while this item's chunk of {count} was out. conveyor cannot replace a pool it "
            f"does not own (a broken ProcessPoolExecutor stays broken), so the run stops. "
            f"Use executor='process' or 'process:N' instead: conveyor then replaces a "
            f"broken pool, sends the other items again and fails only the item that "
            f"killed the worker."
        )

    async def close(self) -> None:
        """Close the pools conveyor created, once their processes have exited.

        Chunks not started are cancelled; a chunk still running (the run ended early)
        runs to its end first: a worker process is never killed mid-call (a chunk is
        sized to 100-250 ms of work unless ``chunk_size`` says otherwise)."""
        if not self.broke:  # (else the pool's own thread fails them: see _check)
            for chunker in self.chunkers:
                for future in chunker.out:
                    future.cancel()  # (a chunk not yet started)
        if not self.owned:
            return
        retired, current = list(self.retired), self.current

        def shut_down() -> None:
            for _, burial in retired:
                burial.join()
            if current is not None:
                current.executor.shutdown(wait=True, cancel_futures=True)

        await _in_thread(shut_down)


def how(code: int) -> str:
    """How a process with this exit code ended: "killed by SIGKILL", "exit code 1"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


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
