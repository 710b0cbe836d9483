"""``executor="thread"`` / ``"thread:N"``: a thread pool that conveyor owns, per run.

:class:`RunThreads` is the option; each run opens a :class:`ThreadPool` (see ``_calls``
on run-scoped executors), shared by the run's tasks that ask for the same size, and
closed when the run ends, however it ends, once all of its threads have exited.
Threads are for waiting (I/O), so ``"thread"`` means :data:`THREADS` threads whatever
the machine. A call blocked in a thread cannot be interrupted: the run's end waits for
it.

Why not a ``ThreadPoolExecutor``: every call there makes a ``concurrent.futures``
Future (a Condition and a lock), runs its done callbacks under that lock in the worker,
and the loop needs a wake-up per call. Here a call is an ``_calls.Answer`` made on the
loop and a tuple on a ``SimpleQueue``; a worker appends its outcome to a deque and wakes
the loop only if no wake-up is on its way already, and the loop settles the Answers of
every outcome that has arrived and hands them on together (``_calls.hand_on``): no
Future, lock or loop callback per call. (Measured with 2,000 x ``time.sleep(0.01)`` on
64 threads: 0.330 s against ``ThreadPoolExecutor(64).map``'s 0.336-0.344 s, ideal 0.3125.)

Which threads are idle is a list used as a counter (``append`` and ``pop`` are atomic),
not a ``threading.Semaphore``, a Condition under the hood: measured on 3.11, its release
and non-blocking acquire cost 1-3 µs per call, the list's append and pop 0.1-0.2 µs.

A worker reads whether a call's Answer was cancelled before it starts the call, so the
calls of a run that ended early do not run (a read of one field; only the loop changes
it).

A pool is *abandoned* on a second Ctrl-C (see ``_interrupt``): its queued calls are
dropped, its idle threads exit, and a thread inside a call takes no more work once the
call returns; the pool's close no longer waits for it (the threads are daemons).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _interrupt
from ._calls import _ERROR, _RESULT, Answer, hand_on

if TYPE_CHECKING:
    from .._spec import StageSpec

__all__ = ["THREADS", "RunThreads", "ThreadPool", "executor_for"]

THREADS = 64
"""Threads of ``executor="thread"``: enough for 64 blocking calls at once (I/O)."""

_pool_numbers = itertools.count(1)

_Job = tuple[Answer, contextvars.Context, Callable[[Any], Any], Any]


class RunThreads:
    """``executor="thread"`` / ``"thread:N"``: opens a :class:`ThreadPool` per run."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    async def open(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> ThreadPool:
        return self.create(stack, shared)

    def create(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> ThreadPool:
        """:meth:`open`, callable from a plain function (``_auto`` opens pools lazily)."""
        key = ("thread", self.workers)
        if key not in shared:
            shared[key] = pool = ThreadPool(self.workers)
            stack.push_async_callback(pool.close)
        return shared[key]  # type: ignore[no-any-return]

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        raise RuntimeError("a run-scoped executor is used once the run has opened it")

    def __repr__(self) -> str:
        return f"thread:{self.workers}"


class ThreadPool:
    """Up to ``workers`` threads, started as calls arrive and find no thread idle.

    Each call runs in its own copy of the run's context, as it would on the loop."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.loop = asyncio.get_running_loop()
        self.name = f"conveyor-{next(_pool_numbers)}"
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        # One entry per worker about to wait for a job: the loop takes one for each job
        # it queues, or starts a thread if there is none (only workers append, only the
        # loop pops: whoever the loop counted is still there).
        self.idle: list[None] = []
        self.answers: deque[tuple[Answer, Any, BaseException | None]] = deque()
        self.scheduled = False  # whether a wake-up of the loop is on its way
        self.abandoned = False  # (read by the workers: set once, by the loop)
        _interrupt.register(self)

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        put = self.jobs.put
        copy_context = contextvars.copy_context
        idle = self.idle

        def in_thread(item: Any) -> Answer:
            answer = Answer(None)
            if self.abandoned:  # (the run is being torn down: nothing more starts)
                answer.cancel()
                return answer
            put((answer, copy_context(), invoke, item))
            if idle:
                idle.pop()
            elif len(self.threads) < self.workers:
                self._start_thread()
            return answer

        return in_thread

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self.name}_{len(self.threads)}", daemon=True
        )
        thread.start()
        self.threads.append(thread)

    def _work(self) -> None:
        """(A worker thread.) Run calls until told to stop (``None``)."""
        get, answers, idle = self.jobs.get, self.answers, self.idle.append
        while True:
            job = get()
            if job is None or self.abandoned:
                return
            future, context, invoke, item = job
            del job
            if future.cancelled():
                continue  # (no release: a thread that takes a job is not idle)
            try:
                answers.append((future, context.run(invoke, item), None))
            except BaseException as exc:  # (handed to the loop: the policy decides)
                answers.append((future, None, exc))
            del future, context, item  # (not kept alive while this thread waits)
            if not self.scheduled:
                # (Cleared by the loop before it reads the answers: an answer added
                # after that read schedules a wake-up of its own.)
                self.scheduled = True
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self.loop.call_soon_threadsafe(self._answer)
            if self.abandoned:
                return
            idle(None)

    def _answer(self) -> None:
        """(On the loop.) Settle the Answers of the outcomes that have arrived, and hand
        them on together, in the order they arrived."""
        self.scheduled = False
        answers = self.answers
        settled = []
        popleft = answers.popleft
        while answers:
            answer, value, error = popleft()
            if answer.state:  # cancelled: the run is over
                continue
            if error is None:
                answer.state, answer.value = _RESULT, value
            elif isinstance(error, StopIteration):  # (a Future refuses it, as a task does)
                wrapped = RuntimeError(f"StopIteration raised in a call: {error!r}")
                wrapped.__cause__ = error
                answer.state, answer.value = _ERROR, wrapped
            else:
                answer.state, answer.value = _ERROR, error
            settled.append(answer)
        hand_on(self.loop, settled)

    async def close(self) -> None:
        """Drop the calls not started, and wait (without blocking the loop) until every
        thread has finished its call and exited; once abandoned, stop waiting."""
        self._drop_queued()
        for _ in self.threads:
            self.jobs.put(None)
        while not self.abandoned and any(thread.is_alive() for thread in self.threads):
            await asyncio.sleep(0.002)  # (if cancelled here, a second Ctrl-C still reaches it)
        self._answer()  # (answers that arrived after the run's end: read, dropped)
        _interrupt.unregister(self)

    def abandon(self) -> list[threading.Thread]:
        """(On the loop; see ``_interrupt``.) Drop the queued calls, let the idle threads
        exit, and tell the busy ones to take no more work: the threads still alive."""
        self.abandoned = True
        self._drop_queued()
        for _ in self.threads:
            self.jobs.put(None)
        return [thread for thread in self.threads if thread.is_alive()]

    def _drop_queued(self) -> None:
        dropped = []
        with contextlib.suppress(queue.Empty):
            while True:
                job = self.jobs.get_nowait()
                if job is not None and job[0].cancel():
                    dropped.append(job[0])
        hand_on(self.loop, dropped)  # (whoever still waits for them: told, as by a Future)

    def __repr__(self) -> str:
        return f"thread:{self.workers}"


def executor_for(spec: StageSpec, option: str) -> RunThreads:
    """The ``thread`` kind's executor: ``"thread"`` or ``"thread:N"``, run-scoped."""
    _, _, workers = option.partition(":")
    return RunThreads(int(workers) if workers else THREADS)
