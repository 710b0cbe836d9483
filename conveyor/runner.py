"""``conveyor.run``: run a coroutine on the fastest event loop available.

Ctrl-C, as ``asyncio.run`` handles it, and one step further. The first cancels the main
task: a run under way ends as when it is cancelled (calls not started are dropped; the
calls running now on threads or processes are waited for), and ``KeyboardInterrupt`` is
raised once the main task has ended. A second Ctrl-C stops that wait (``asyncio.run``
would raise at once and then wait again, while closing the loop): the worker processes of
the loop's runs are terminated, their thread pools take no more work, and
``KeyboardInterrupt`` is raised as soon as the main task has ended, with a note naming the
threads still inside a call (Python cannot stop a thread; they exit when it returns). A
third Ctrl-C raises at once, as does the second when no pool of conveyor's is open. This
applies where ``asyncio.Runner`` would handle SIGINT: in the main thread, unless the
program has installed a SIGINT handler of its own.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from types import FrameType, TracebackType
from typing import Any, TypeVar

from ._engine import _interrupt

__all__ = ["new_event_loop", "run"]

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when it is installed (``conveyor[fast]``), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run ``main`` to completion on uvloop when it is installed, else on plain asyncio.

    Ctrl-C: the first cancels ``main`` and waits for the calls running now; a second
    stops waiting (see the module's documentation)."""
    if not asyncio.iscoroutine(main):
        raise ValueError(f"conveyor.run() takes a coroutine, got {main!r}")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        main.close()  # (never awaited: no warning about it)
        raise RuntimeError("conveyor.run() cannot be called from a running event loop")
    # (The handler outlives the runner: a second Ctrl-C while the runner closes the loop,
    # cancelling the tasks left, abandons what they wait for too.)
    with (
        Interrupts() as interrupts,
        asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner,
    ):
        loop = runner.get_loop()
        task = loop.create_task(main)
        interrupts.watch(loop, task)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupts.count and task.uncancel() == 0:  # (as asyncio.Runner decides)
                raise KeyboardInterrupt from None
            raise


class Interrupts:
    """SIGINT while a loop runs a main task: cancel it, then abandon the loop's pools,
    then raise. Installed only in the main thread over Python's default handler."""

    def __init__(self) -> None:
        self.count = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.installed = False
        self.left: list[threading.Thread] | None = None  # None: not abandoned

    def __enter__(self) -> Interrupts:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            try:
                signal.signal(signal.SIGINT, self.on_sigint)
                self.installed = True
            except ValueError:  # (an embedded interpreter without signals)
                pass
        return self

    def watch(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self.loop, self.task = loop, task

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        loop, task = self.loop, self.task
        if loop is None or loop.is_closed():
            raise KeyboardInterrupt
        if self.count == 1 and task is not None and not task.done():
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)  # (wake the loop up)
            return
        if self.left is None and _interrupt.any_open(loop):
            self.left = []
            loop.call_soon_threadsafe(self.abandon, loop)
            return
        raise KeyboardInterrupt  # (as asyncio.Runner does: nothing of conveyor's to stop)

    def abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.left is not None
        self.left.extend(_interrupt.abandon(loop))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.installed and signal.getsignal(signal.SIGINT) == self.on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if isinstance(error, KeyboardInterrupt) and self.left:
            said = _interrupt.note(self.left)
            if said is not None:
                error.add_note(said)
