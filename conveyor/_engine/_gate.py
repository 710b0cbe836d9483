"""A stage's rate limit (``rate_limit=``): calls wait for their turn before they start.

The gate stands in front of the stage's ``start``. An item whose call may start now
starts at once; otherwise it waits in the gate's queue, in arrival order, holding a
concurrency slot (``running``) and its place in the order, and a timer starts it when
the limit allows. The wait is not part of the call, so the task's ``timeout`` does not
see it, and no task is held while waiting. Retries take their turn inside the call's
task (``Stage.attempt``). See ``conveyor.rate`` for the limit's semantics.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..rate import Window
    from ._run import Run
    from ._stage import Stage


def gate_rate_limits(run: Run) -> None:
    """Put a gate in front of each rate-limited stage's calls (after the observers'
    twins are in place: the gate starts whatever their ``start`` is)."""
    for stage in run.stages:
        limit = stage.spec.options.rate_limit
        if limit is not None:
            gate = stage.gate = Gate(stage, limit.window(run.loop))
            stage.start = gate.start
            run.on_over.append(gate.over)


class Gate:
    """One stage's rate limit, for one run."""

    __slots__ = ("call", "queue", "stage", "timer", "window")

    def __init__(self, stage: Stage, window: Window) -> None:
        self.stage = stage
        self.window = window
        self.call = stage.start  # what starts a call (a twin's, once observed)
        self.queue: deque[tuple[Any, Any]] = deque()
        self.timer: Any = None

    def start(self, item: Any, node: Any) -> None:
        """Installed as the stage's ``start``: call now, or queue for a turn."""
        if not self.queue and self.window.wait() == 0:
            self.window.take()
            self.call(item, node)
            return
        stage = self.stage
        stage.running += 1  # the slot is held while waiting (concurrency stays bounded)
        if not stage.is_batch:  # (a batch's items count from their arrival)
            stage.inflight += 1
        self.queue.append((item, stage.place(node)))
        if self.timer is None:
            self.arm()

    def arm(self) -> None:
        # A gate with a turn to come is working: the window must not take the run for
        # stalled (it would flush partial batches to make room).
        self.stage.window.busy += 1
        loop = self.window.loop
        self.timer = loop.call_at(loop.time() + self.window.wait(), self.release)

    def release(self) -> None:
        """The timer: start what the limit allows now, in order; re-arm for the rest."""
        self.timer = None
        stage = self.stage
        stage.window.busy -= 1
        run = stage.run
        window = self.window
        while self.queue and not run.closed and window.wait() == 0:
            item, node = self.queue.popleft()
            stage.running -= 1
            if not stage.is_batch:
                stage.inflight -= 1
            window.take()
            self.call(item, node)
        if run.closed:
            return
        if self.queue:
            self.arm()
        # Slots given back by calls that ended at once (a plain function): as call_done
        # would after a call's task.
        if stage.pending and not stage.draining and stage.running < stage.limit:
            stage.start_pending()
        if not stage.inflight and run.source_done:
            run.stage_idle()
        elif not stage.window.busy:
            stage.window.check_stall()

    def over(self, run: Run) -> None:
        """The run is over: drop the timer (queued items go with the run)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.stage.window.busy -= 1
        self.queue.clear()
