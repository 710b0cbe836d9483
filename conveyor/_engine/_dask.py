"""``executor=client``: calls on a Dask cluster, in measured chunks (see ``_chunks``).

The client may be plain or ``asynchronous=True``, local (``LocalCluster``) or connected
to a scheduler on other machines: conveyor only submits chunks (``client.submit``) and
gathers their answers. Functions travel with cloudpickle, as Dask sends them, so lambdas
and closures work; items and results travel with pickle. Workers need conveyor
installed (they run ``conveyor._engine._worker.run_chunk``). A run sends at most two
chunks per thread of the cluster (counted when the run starts) at once.

A worker that dies is Dask's to recover from: the scheduler runs its chunks again on
another worker (up to its ``allowed-failures``), and only then fails them with
``KilledWorker``, which the items meet under the task's policy. An item's answer is taken
once, from the chunk that completed, so no result is lost or delivered twice. A client
closed during a run fails the items left with Dask's ``FutureCancelledError`` or
``ClosedClientError``. When the run ends, its chunks still out are cancelled (a chunk
already running runs to its end); conveyor never closes the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from .._spec import StageSpec
from ._chunks import Chunker, chunker_for
from ._pickling import dump_function
from ._weight import WEIGHER, Weigher
from ._worker import run_chunk

__all__ = ["DaskCalls"]

T = TypeVar("T")


class _Answer(concurrent.futures.Future[bytes]):
    """A chunk's answer, and the Dask future computing it (until it is gathered)."""

    task: Any = None


class DaskCalls:
    """One task's calls on a Dask client, for one run."""

    def __init__(self, spec: StageSpec, client: Any) -> None:
        self.spec = spec
        self.client = client
        self.threads = 1
        self.chunker: Chunker | None = None
        self.gathering: set[concurrent.futures.Future[None]] = set()
        self.weigher: Weigher | None = None  # (the run's byte bound: copies count toward it)

    async def open(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> DaskCalls:
        if self.client.status not in ("running", "connecting"):  # (else a puzzling error)
            status = self.client.status  # closed, or an asynchronous client never awaited
            raise RuntimeError(f"task {self.spec.name!r}: its Dask client is {status}")
        # Asked on the client's loop: a plain client's blocking call would stall this loop
        # for a round trip to the scheduler.
        nthreads = await asyncio.wrap_future(
            self._on_client_loop(self.client.nthreads(asynchronous=True))
        )
        self.threads = max(1, sum(nthreads.values()))  # (no workers yet: one, to start)
        self.weigher = shared.get(WEIGHER)
        stack.push_async_callback(self._cancel)
        return self

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        import cloudpickle  # (a dependency of dask.distributed)

        function = dump_function(invoke, self.spec.name, repr(self), dumps=cloudpickle.dumps)
        self.chunker = chunker_for(self, function)
        return self.chunker.call

    def submit(self, function: bytes, items: bytes) -> concurrent.futures.Future[bytes]:
        """Submit a chunk; its answer arrives on a ``concurrent.futures.Future``."""
        answer = _Answer()
        # A key of our own (never reused, so never cached) that names the task on the
        # dashboard, rather than ``run_chunk`` for every task.
        key = f"{self.spec.name}-{uuid.uuid4().hex}"
        answer.task = self.client.submit(run_chunk, function, items, key=key)
        gathering = self._on_client_loop(self._gather(answer))
        self.gathering.add(gathering)
        gathering.add_done_callback(self.gathering.discard)
        return answer

    async def _gather(self, answer: _Answer) -> None:
        """(On the client's loop.) Wait for the chunk, then hand its answer to the run.

        Awaiting the Dask future there, rather than in a done-callback, gathers on the
        client's own loop (answers that arrive together are fetched together) and leaves
        nothing behind when the run cancels the chunk."""
        try:
            result = await self.client.gather(answer.task, asynchronous=True)
        except asyncio.CancelledError:  # the client's loop is shutting down
            answer.cancel()
            raise
        except Exception as exc:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                answer.set_exception(exc)  # (unless the run cancelled it meanwhile)
        else:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                answer.set_result(result)
        finally:
            answer.task = None  # (the cluster may forget the chunk's result now)

    def lost(self, error: BaseException, sent: Any, count: int) -> list[BaseException | None]:
        """A failed chunk's error, as is: ``KilledWorker`` after Dask's own retries,
        ``FutureCancelledError``, or what ``run_chunk`` itself raised."""
        return [error] * count

    async def _cancel(self) -> None:
        """The run is over: cancel its chunks still out (the cluster keeps running), and
        wait until their gathering has ended, so that nothing outlives the run."""
        if self.chunker is None:
            return
        answers = cast(list[_Answer], list(self.chunker.out))
        tasks = [answer.task for answer in answers if answer.task is not None]
        for answer in answers:
            answer.cancel()
        if tasks:
            try:
                cancelled = self._on_client_loop(self.client.cancel(tasks, asynchronous=True))
            except RuntimeError:  # the client's loop is closed, and its futures with it
                return
            await asyncio.wrap_future(cancelled)
        if self.gathering:  # (cancelled chunks end their gathering at once)
            await asyncio.wait([asyncio.wrap_future(f) for f in self.gathering.copy()])

    def _on_client_loop(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` on the client's event loop: a plain client's own thread, or
        an asynchronous client's loop (the run's loop, usually)."""
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self.client.loop.asyncio_loop)
        except BaseException:
            coroutine.close()  # (never started: no "never awaited" warning)
            raise

    def __repr__(self) -> str:
        return f"Dask client at {getattr(self.client.scheduler, 'address', '?')}"
