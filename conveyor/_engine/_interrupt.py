"""A second Ctrl-C: stop waiting for the calls that a run's end would wait for.

The first Ctrl-C cancels the run (``conveyor.run`` and ``pipeline.run`` cancel their main
task, as ``asyncio.Runner`` does; in ``pipeline.iter`` the ``KeyboardInterrupt`` in the
caller's thread closes the stream). A cancelled run drops the calls not started and waits
for the calls running now: a thread cannot be interrupted, and a process worker is not
killed mid-call.

A second Ctrl-C stops that wait. The front doors (``runner``, ``_sync``) call
:func:`abandon` with the run's loop, which tells every pool that conveyor opened on that
loop, and has not closed yet, to stop: a process pool terminates its workers (the calls
they were running are lost: the run is over); a thread pool drops its queued calls, its
idle threads exit, and the threads still inside a call (Python cannot stop a thread) take
no more work and exit when their call returns. Those are named by :func:`note`, which the
front doors add to the ``KeyboardInterrupt``, so that nothing is left running unsaid.

Each pool registers itself here when it opens (:func:`register`) and leaves when it has
closed (:func:`unregister`); ``abandon()`` returns the threads it could not stop. Pools
are held weakly (a pool whose close was cut short by a cancellation leaves once dropped;
a thread pool's threads keep it alive while they run).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Protocol

__all__ = ["Abandonable", "abandon", "any_open", "note", "register", "unregister"]


class Abandonable(Protocol):
    loop: asyncio.AbstractEventLoop

    def abandon(self) -> list[threading.Thread]:
        """(On the pool's loop.) Stop at once; the threads still inside a call."""
        ...


_open: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakSet[Abandonable]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()  # (pools open on several loops, in several threads)


def register(pool: Abandonable) -> None:
    with _lock:
        _open.setdefault(pool.loop, weakref.WeakSet()).add(pool)


def unregister(pool: Abandonable) -> None:
    with _lock:
        pools = _open.get(pool.loop)
        if pools is not None:
            pools.discard(pool)


def any_open(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a pool is open on ``loop`` (read without the lock: a signal handler may
    ask, in a thread that holds it)."""
    return bool(_open.get(loop))


def abandon(loop: asyncio.AbstractEventLoop) -> list[threading.Thread]:
    """(On ``loop``.) Abandon every pool open on ``loop``: the threads still in a call."""
    with _lock:
        pools = list(_open.get(loop, ()))
    left: list[threading.Thread] = []
    for pool in pools:
        left.extend(pool.abandon())
    return left


def note(threads: list[threading.Thread], grace: float = 0.2) -> str | None:
    """What a ``KeyboardInterrupt`` says about the threads that :func:`abandon` left: those
    still inside a call once idle ones have had ``grace`` seconds to exit (None: none)."""
    deadline = time.monotonic() + grace
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = [thread.name for thread in threads if thread.is_alive()]
    if not busy:
        return None
    return (
        f"conveyor: the run was abandoned; {len(busy)} of its thread(s) were still inside "
        f"a call, which Python cannot interrupt: {', '.join(busy)}. They take no more work "
        f"and exit when their call returns."
    )
