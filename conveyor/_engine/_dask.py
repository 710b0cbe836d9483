"""``executor=client``: calls on a Dask cluster, in measured chunks (see ``_chunks``).

The client may be plain or ``asynchronous=True``, local (``LocalCluster``) or connected
to a scheduler on other machines: conveyor only submits chunks (``client.submit``) and
reads their answers. Functions travel with cloudpickle, as Dask sends them, so lambdas
and closures work; items and results travel with pickle. Workers need conveyor
installed (they run ``conveyor._engine._chunks.run_chunk``).

A worker that dies is Dask's to recover from: the scheduler runs its chunks again on
another worker (up to its ``allowed-failures``), and only then fails them with
``KilledWorker``, which the items meet under the task's policy. An item's answer is taken
once, from the chunk that completed, so no result is lost or delivered twice. conveyor
never closes the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
from collections.abc import Callable
from typing import Any

from .._spec import StageSpec
from ._chunks import Chunker, run_chunk
from ._pickling import dump_function

__all__ = ["DaskCalls"]


class DaskCalls:
    """One task's calls on a Dask client, for one run."""

    def __init__(self, spec: StageSpec, client: Any) -> None:
        self.spec = spec
        self.client = client
        self.chunker: Chunker | None = None

    async def open(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> DaskCalls:
        stack.push_async_callback(self._cancel)
        return self

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        import cloudpickle  # type: ignore[import-untyped]  # (a dependency of dask.distributed)

        function = dump_function(invoke, self.spec.name, repr(self), dumps=cloudpickle.dumps)
        workers = self.client.scheduler_info().get("workers", {})
        threads = sum(worker.get("nthreads", 1) for worker in workers.values()) or 1
        self.chunker = Chunker(
            asyncio.get_running_loop(),
            function,
            self.submit,
            self.lost,
            threads,
            self.spec.options.chunk_size,
        )
        return self.chunker.call

    def submit(self, function: bytes, items: bytes) -> concurrent.futures.Future[bytes]:
        """Submit a chunk; its answer arrives on a ``concurrent.futures.Future``."""
        answer: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        task = self.client.submit(run_chunk, function, items, pure=False)

        def done(task: Any) -> None:  # (in a Dask callback thread)
            try:
                result = task.result()
            except BaseException as exc:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    answer.set_exception(exc)
            else:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    answer.set_result(result)  # (unless the run cancelled it meanwhile)

        task.add_done_callback(done)
        answer.dask_task = task  # type: ignore[attr-defined]  # (cancelled with the run)
        return answer

    def lost(self, error: BaseException, count: int) -> BaseException:
        """Each item of a failed chunk fails with an exception of its own (annotated per
        item), of the chunk's type: ``KilledWorker`` after Dask's own retries."""
        try:
            return type(error)(*error.args)
        except Exception:
            return error

    async def _cancel(self) -> None:
        """The run is over: cancel the chunks still out (the cluster may keep running)."""
        if self.chunker is None or not self.chunker.out:
            return
        answers = list(self.chunker.out)
        for answer in answers:
            answer.cancel()
        cancelled = self.client.cancel([answer.dask_task for answer in answers])  # type: ignore[attr-defined]
        if inspect.isawaitable(cancelled):  # an asynchronous client
            await cancelled

    def __repr__(self) -> str:
        return f"Dask client at {getattr(self.client.scheduler, 'address', '?')}"
