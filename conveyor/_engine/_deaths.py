"""Worker processes that die: which item killed one, how it died, and the errors that say so.

**A worker that dies.** When one worker of a ``ProcessPoolExecutor`` dies, the pool
fails *every* chunk it holds with ``BrokenProcessPool`` and terminates its other
workers: the items of those chunks are innocent but for one. To tell which, each worker
of a pool conveyor owns writes, in a shared array, the chunk and item it is starting
(``_worker.start_worker``), and conveyor keeps hold of the pool's worker processes (the
children a ``submit`` starts: ``multiprocessing.active_children()`` around it). The
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
chunks are sent again, and the bound applies. A broken pool is buried in a thread of its
own (:meth:`Generation.bury`, joined when the run closes its pools), so that no worker
outlives the run. A pool the user passes cannot be replaced
(a broken ``ProcessPoolExecutor`` stays broken): when it breaks, the run fails with
:class:`PoolGaveUp`, which names the fix (``executor="process:N"``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import pickle
import signal
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import short_repr
from ._policy import Unrecoverable
from ._worker import start_worker

__all__ = [
    "RESTARTS",
    "Generation",
    "PoolGaveUp",
    "WorkerDied",
    "gave_up",
    "how",
    "users_pool_broke",
    "worker_died",
]

RESTARTS = 5
"""How many times in a row a run's pool is replaced with no chunk completing in between."""


class WorkerDied(BrokenProcessPool):
    """The worker process running this item died: the item's own failure, under its
    task's policy (the other items that were out were sent again)."""


class PoolGaveUp(BrokenProcessPool, Unrecoverable):
    """A process pool that cannot go on (it kept breaking, or it is the user's and
    broke): no policy handles it, the run fails with it."""


class Generation:
    """One ``ProcessPoolExecutor`` of a run's pool, its workers' record, and who died.

    ``sent`` maps a chunk's number to ``(task, items payload, future)`` while it is out;
    ``deaths`` (filled by :meth:`examine`) maps a chunk's number to ``(index, exit code)``
    of the item that killed its worker; ``processes`` are the pool's worker processes."""

    def __init__(self, workers: int, context: Any, stop: Any) -> None:
        self.workers = workers
        self.record = context.RawArray("q", 3 * workers)  # pid, chunk, item, per worker
        taken = context.Value("i", 0)
        self.executor = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=start_worker,
            initargs=(self.record, taken, stop),
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
        worker, which never got a call, is terminated. Every worker is joined.

        The workers still alive are terminated first: the pool's thread terminates them
        anyway, and then waits for each, so a worker started after its terminations (the
        race above) would keep it, and this thread, waiting forever (seen on 3.11)."""
        for process in list(self.processes.values()):
            if process.exitcode is None:
                process.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)
        for _, _, future in list(self.sent.values()):
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(BrokenProcessPool("left pending by a broken pool"))
        for process in self.processes.values():
            if process.exitcode is None:
                process.terminate()
            process.join()

    def terminate(self) -> None:
        """Terminate the workers now (SIGTERM; a second Ctrl-C, see ``_interrupt``): their
        calls are lost, the run is over. The pool is shut down without waiting."""
        for process in list(self.processes.values()):
            with contextlib.suppress(Exception):  # (exited meanwhile)
                process.terminate()
        self.executor.shutdown(wait=False, cancel_futures=True)

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


def how(code: int) -> str:
    """How a process with this exit code ended: "killed by SIGKILL", "exit code 1"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def worker_died(item: Any, code: int) -> WorkerDied:
    return WorkerDied(
        f"the worker process running item {short_repr(item)} died ({how(code)}): it "
        f"crashed, was killed, or ran out of memory. The other items that were out on the "
        f"pool were sent again, to a fresh pool; retry_attempts would try this one again "
        f"there."
    )


def gave_up(generation: Generation, breaks: int) -> PoolGaveUp:
    task, words = generation.last_words()
    return PoolGaveUp(
        f"task {task!r}: its worker processes died {breaks} times in a row, with no chunk "
        f"of work completing in between (the last time, {words}); conveyor replaces a "
        f"broken pool at most {RESTARTS} times in a row, so the run stops. Find out why the "
        f"workers die (a crash in native code, memory: SIGKILL is what the out-of-memory "
        f"killer sends); with on_error='skip_item' or 'emit', a few such items fail alone."
    )


def users_pool_broke(pool: Any, count: int) -> PoolGaveUp:
    return PoolGaveUp(
        f"the process pool given as executor= ({type(pool).__name__}) is broken: one of "
        f"its worker processes died (crashed, killed, or out of memory) while this item's "
        f"chunk of {count} was out. conveyor cannot replace a pool it does not own (a "
        f"broken ProcessPoolExecutor stays broken), so the run stops. Use "
        f"executor='process' or 'process:N' instead: conveyor then replaces a broken pool, "
        f"sends the other items again and fails only the item that killed the worker."
    )
