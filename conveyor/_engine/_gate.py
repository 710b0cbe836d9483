"""A stage's rate limit (``rate_limit=``): calls wait for their turn before they start.

The gate stands in front of the stage's ``start``. An item whose call may start now
starts at once; otherwise it waits in the gate's queue, in arrival order, holding a
concurrency slot (``running``) and its place in the order, and a timer starts it when
the limit allows. The wait is not part of the call, so the task's ``timeout`` does not
see it, and no task is held while waiting. Retries take their turn inside the call's
task (``Stage.attempt``). See ``conveyor.rate`` for the limit's semantics.

**Bounded executors.** The limit is on starts of the function, not on hand-overs to an
executor: a call handed to a pool whose workers are all busy would start whenever one
frees, bunched with the others queued there. So on an executor of ``capacity`` workers
(conveyor's thread pools, a user's ``ThreadPoolExecutor``, process pools) the gate lets
at most ``capacity`` of its calls be out at once: a call takes its turn only when a
worker is free to start it now, and the end of a call (``call_ended``, from
``_waiting`` and ``_expand``) lets the next one go. The workers are assumed to be the
stage's own: calls of other tasks sharing the pool (or a user's other work on it) can
still delay a start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._auto import Auto
from ._observe import ObservedExecutor
from ._pools import ChunkedCalls, PoolCalls, PoolExecutor, cores
from ._threads import THREADS, ThreadPool

if TYPE_CHECKING:
    from ..rate import Cell, Window
    from ._roles import StageRole


class Gate:
    """One stage's rate limit, for one run."""

    __slots__ = ("call", "queue", "stage", "timer", "window")

    def __init__(
        self, stage: StageRole, window: Window | Cell, call: Callable[[Any, Any, Any], None]
    ) -> None:
        self.stage = stage
        self.window = window
        self.call = call  # what starts a call, once its turn has come
        self.queue: deque[tuple[Any, Any, Any]] = deque()
        self.timer: Any = None

    @property
    def held(self) -> int:
        """Items waiting for their turn (each holds a concurrency slot)."""
        return len(self.queue)

    waiting = held

    async def acquire(self, item: Any) -> None:
        """A retry waits for its turn, then takes it."""
        await self.window.acquire()

    def room(self) -> bool:
        """Whether a call handed to the executor now would start at once: the stage's
        calls out (``running`` counts them, and the items queued here) leave a worker.

        (The executor is read each time: the run opens its pools after the gate is
        built, and ``"auto"`` moves between inline, threads and processes.)"""
        capacity = capacity_of(self.stage.executor)
        return capacity is None or self.stage.running - len(self.queue) < capacity

    def start(self, item: Any, node: Any, origin: Any) -> None:
        """Installed as the stage's ``start``: call now, or queue for a turn."""
        if not self.queue and self.window.wait() == 0 and self.room():
            self.window.take()
            self.call(item, node, origin)
            return
        stage = self.stage
        stage.ledger.gated(stage)  # the slot is held while waiting (concurrency bounded)
        self.queue.append((item, stage.place(node), origin))
        if self.timer is None and self.room():
            self.arm()  # (else the end of a call goes on: ``call_ended``)

    def arm(self) -> None:
        # A gate with a turn to come is working: the window must not take the run for
        # stalled (it would flush partial batches to make room).
        self.stage.ledger.work_started()
        loop = self.window.loop
        self.timer = loop.call_at(loop.time() + self.window.wait(), self.release)

    def release(self) -> None:
        """The timer: start what the limit allows now, in order; re-arm for the rest."""
        self.timer = None
        self.stage.ledger.work_ended_quietly()  # (go_on looks for the end, or a stall)
        self.go_on()

    def call_ended(self, item: Any = None) -> None:
        """(From ``_waiting`` and ``_expand``.) One of the stage's calls is over (its
        ``running`` count is down): a worker is free for the next in the queue."""
        if self.queue and self.timer is None and not self.stage.run.closed:
            self.go_on()

    def go_on(self) -> None:
        """Start the queued calls that the limit and the executor allow now, in order;
        arm the timer for the next turn, or leave the next start to ``call_ended``."""
        stage = self.stage
        run = stage.run
        window = self.window
        while self.queue and not run.closed and window.wait() == 0 and self.room():
            item, node, origin = self.queue.popleft()
            stage.ledger.ungated(stage)
            window.take()
            self.call(item, node, origin)
        if run.closed:
            return
        if self.queue and self.room():
            self.arm()
        # Slots given back by calls that ended at once (a plain function): as call_done
        # would after a call's task.
        if stage.running < stage.limit:
            stage.ledger.slot_freed(stage)
        ledger = stage.ledger
        if not stage.inflight and ledger.source_done:
            ledger.stage_idle()
        else:
            ledger.idle()

    def over(self, run: object) -> None:
        """The run is over: drop the timer (queued items go with the run)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.stage.ledger.work_ended_quietly()
        self.queue.clear()


def capacity_of(executor: Any) -> int | None:
    """How many calls ``executor`` starts at once (None: as many as it is given).

    A user's ``ThreadPoolExecutor`` or ``ProcessPoolExecutor`` does not make its size
    public: ``_max_workers`` has been their attribute since Python 3.2 (if it ever goes:
    a thread pool counts as unbounded, a process pool as one worker per core)."""
    if isinstance(executor, ObservedExecutor):  # (a user's observer times its calls)
        executor = executor.inner
    if isinstance(executor, Auto):  # where its calls go now
        if executor.choice == "thread":
            return THREADS
        if executor.choice == "process":
            return cores()
        return None
    if isinstance(executor, ThreadPool):
        return executor.workers
    if isinstance(executor, (PoolExecutor, PoolCalls)):  # (PoolCalls: opened for a run)
        size = getattr(executor.pool, "_max_workers", None)
        return size if isinstance(size, int) else None
    if isinstance(executor, ChunkedCalls):  # (a user's pool: its own size, if it says)
        size = getattr(executor.pool.user_pool, "_max_workers", None)
        return size if isinstance(size, int) else executor.pool.workers
    return None  # inline, Dask (turns are taken as calls go to the cluster), custom
