"""``executor=ray``: calls on a Ray cluster, in measured chunks (see ``_chunks``).

The option is the ``ray`` module itself (``@single_task(executor=ray)``), or what
``ray.init()`` returned; either way the run uses the Ray runtime this process is
connected to when the run starts (a local one, or a cluster's: ``ray.init(address=...)``),
and fails at once, saying so, if ``ray.init()`` has not been called. conveyor never
starts or shuts Ray down.

Each chunk is one Ray task of :func:`~._worker.run_chunk`: functions travel with Ray's
cloudpickle (lambdas and closures work), put in Ray's object store once per run; items
and results travel with pickle, as for the other chunked executors. Workers need
conveyor installed. A run sends at most two chunks per CPU of the cluster (counted when
the run starts) at once; under the run's byte bound a chunk's pickled copy holds window
places until it is answered (``Weigher.hold``/``unhold``, as for Dask and processes).

**A worker that dies** (a crash, ``os._exit``, Ray's out-of-memory killer, a lost node)
fails the Ray task of its chunk with Ray's ``WorkerCrashedError`` (or the like): the
chunk is not failed, it is split, and each of its items is sent again alone, with one
retry of Ray's (a worker may die for reasons of its own). The item that kills its worker
again fails alone with :class:`~._deaths.WorkerDied`, naming it; the others are
answered from their own task. An item is answered once, from one task: nothing is lost
or delivered twice (an item of a lost chunk may have run before its worker died, so
its function may run twice; its result is delivered once).

When the run ends, its chunks still out are cancelled (``ray.cancel``: a chunk not
started never starts, one running is interrupted), and the run waits until their
answers are settled, so that nothing of the run is left behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import pickle
import threading
from collections.abc import Callable
from typing import Any

from .._spec import StageSpec
from ..errors import short_repr
from ._chunks import Chunker, chunker_for
from ._deaths import WorkerDied
from ._pickling import dump_function
from ._weight import WEIGHER, Weigher
from ._worker import _ERROR, _SKIPPED, PROTOCOL, run_chunk

__all__ = ["RayCalls"]

_DEATHS = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError")
"""Ray's errors for a task whose worker (or node) died: its chunk is split, not failed."""


class RayCalls:
    """One task's calls on the Ray runtime, for one run (run-scoped: see ``open``)."""

    def __init__(self, spec: StageSpec, option: Any) -> None:
        self.spec = spec
        self.option = option
        self.ray: Any = None
        self.threads = 1
        self.chunker: Chunker | None = None
        self.weigher: Weigher | None = None  # (the run's byte bound: copies count toward it)
        self.remote: Any = None  # run_chunk as a Ray task: a chunk, or an item alone
        self.alone: Any = None
        self.function: Any = None  # the function's ObjectRef, put once per run
        self.deaths: tuple[type[BaseException], ...] = ()
        self.lock = threading.Lock()  # (tasks are sent from the loop and Ray's threads)
        self.tasks: dict[Any, None] = {}  # the ObjectRefs out, for the run's end
        self.answers: set[concurrent.futures.Future[bytes]] = set()
        self.closed = False

    async def open(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> RayCalls:
        ray = importlib.import_module("ray")
        if not ray.is_initialized():  # (else Ray would start a runtime of its own)
            raise RuntimeError(
                f"task {self.spec.name!r} has executor=ray, but this process is not "
                f"connected to a Ray runtime: call ray.init() (or ray.init(address=...)) "
                f"before the run; conveyor never starts or stops Ray"
            )
        self.ray = ray
        # A round trip to Ray's control store: off the loop, so as not to stall it.
        resources = await asyncio.to_thread(ray.cluster_resources)
        self.threads = max(1, int(resources.get("CPU", 1)))
        self.weigher = shared.get(WEIGHER)
        self.deaths = tuple(
            getattr(ray.exceptions, name) for name in _DEATHS if hasattr(ray.exceptions, name)
        )
        # max_retries=0: a chunk whose worker died is split (see the module's docstring).
        # max_retries=1 for an item sent alone: one more try, as a worker may die alone.
        remote = ray.remote(run_chunk)
        self.remote = remote.options(name=self.spec.name, max_retries=0)
        self.alone = remote.options(name=self.spec.name, max_retries=1)
        stack.push_async_callback(self._cancel)
        return self

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        dumps = importlib.import_module("ray.cloudpickle").dumps
        function = dump_function(invoke, self.spec.name, repr(self), dumps=dumps)
        self.function = self.ray.put(function)
        self.chunker = chunker_for(self, function)
        return self.chunker.call

    # -- sending -------------------------------------------------------------------------

    def submit(self, function: bytes, items: bytes) -> concurrent.futures.Future[bytes]:
        """Send a chunk as one Ray task; its answer arrives on the returned Future."""
        answer: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        self._send(self.remote, items, answer, split=True)
        return answer

    def _send(
        self, remote: Any, items: bytes, answer: concurrent.futures.Future[bytes], split: bool
    ) -> None:
        with self.lock:
            if self.closed:  # (a lost chunk's items, split after the run's end)
                answer.cancel()
                return
            task = remote.remote(self.function, items)
            self.tasks[task] = None
            self.answers.add(answer)
        task.future().add_done_callback(lambda done: self._settle(task, done, items, answer, split))

    def _settle(
        self,
        task: Any,
        done: concurrent.futures.Future[bytes],
        items: bytes,
        answer: concurrent.futures.Future[bytes],
        split: bool,
    ) -> None:
        """(In Ray's thread.) A task's answer: the chunk's, or its items' one by one."""
        error = None if done.cancelled() else done.exception()
        dead = error is not None and isinstance(error, self.deaths) and split
        with self.lock:
            self.tasks.pop(task, None)
            if not dead:  # (a split chunk's answer is out until its items are answered)
                self.answers.discard(answer)
        if dead:
            try:
                self._split(items, answer)
            except BaseException as exc:  # (Ray shut down meanwhile): the chunk fails
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    answer.set_exception(exc)
        elif done.cancelled():
            answer.cancel()
        elif error is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                answer.set_exception(error)
        else:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                answer.set_result(done.result())

    def _split(self, items: bytes, answer: concurrent.futures.Future[bytes]) -> None:
        """A chunk whose worker died: its items again, alone, then one answer of them."""
        batch = pickle.loads(items)
        alone = self.alone
        parts: list[concurrent.futures.Future[bytes]] = []
        for item in batch:
            part: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            parts.append(part)
            self._send(alone, pickle.dumps([item], PROTOCOL), part, split=False)
        remaining = [len(parts)]

        def one_done(_: concurrent.futures.Future[bytes]) -> None:
            with self.lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
                self.answers.discard(answer)
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                answer.set_result(self._joined(batch, parts))

        for part in parts:
            part.add_done_callback(one_done)

    def _joined(self, batch: list[Any], parts: list[concurrent.futures.Future[bytes]]) -> bytes:
        """The answers of a split chunk's items, as one chunk's (see ``run_chunk``)."""
        results: list[tuple[int, Any]] = []
        work = cpu = loaded = 0.0
        for item, part in zip(batch, parts, strict=True):
            if part.cancelled():  # (the run ended: its item's call was cancelled too)
                results.append((_SKIPPED, None))
                continue
            error = part.exception()
            if error is None:
                answers, *times = pickle.loads(part.result())
                results.extend(answers)
                work, cpu, loaded = work + times[0], cpu + times[1], loaded + times[2]
            elif isinstance(error, self.deaths):
                results.append((_ERROR, _died(self.spec.name, item, error)))
            else:
                results.append((_ERROR, _portable(error)))
        return pickle.dumps((results, work, cpu, loaded), PROTOCOL)

    def lost(self, error: BaseException, sent: Any, count: int) -> list[BaseException | None]:
        """A chunk that failed as a whole (not a dead worker: that is split), as is."""
        return [error] * count

    # -- the run's end -------------------------------------------------------------------

    async def _cancel(self) -> None:
        """Cancel the run's tasks still out (Ray keeps running), and wait until their
        answers are settled, so that nothing of the run is left behind."""
        with self.lock:
            self.closed = True
            tasks = list(self.tasks)
            answers = list(self.answers)
        for task in tasks:
            with contextlib.suppress(Exception):  # (done meanwhile, or Ray shut down)
                self.ray.cancel(task)
        settled = [asyncio.wrap_future(answer) for answer in answers]
        if settled:
            await asyncio.wait(settled)
        for answer in settled:  # (their outcome is the run's no more: retrieved, dropped)
            if not answer.cancelled():
                answer.exception()

    def __repr__(self) -> str:
        return "Ray"


def _died(task: str, item: Any, error: BaseException) -> WorkerDied:
    died = WorkerDied(
        f"task {task!r}: the Ray worker running item {short_repr(item)} died, twice, with "
        f"this item alone ({type(error).__name__}): it crashed, was killed, or ran out of "
        f"memory. The other items of its chunk were sent again, alone; retry_attempts "
        f"would try this one again."
    )
    died.__cause__ = error
    return died


def _portable(error: BaseException) -> BaseException:
    """``error`` if it pickles (it travels in a chunk's answer), else a stand-in."""
    try:
        pickle.dumps(error, PROTOCOL)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
