"""Rate limits: how often calls may start (``@single_task(rate_limit=...)``).

A :class:`RateLimit` allows at most ``calls`` call starts in any window of
``per_seconds`` (a sliding window over the last ``calls`` starts: exact, and bounded in
memory by ``calls``). A call that would exceed it waits *before* it starts: the wait
holds one of the task's concurrency slots, but it is not part of the call, so it never
counts against the task's ``timeout``. Retries are calls too: each attempt takes its turn.
On a thread or process pool a call also waits for a free worker before it takes its turn,
so that it starts when its turn is taken (see ``conveyor._engine._gate``).

``rate_limit=(calls, per_seconds)`` gives a task a limit of its own. One ``RateLimit``
object given to several tasks is one quota for all of them: e.g. two endpoints of the
same API. A limit is shared by every run that uses it on the same event loop (a new loop,
such as each ``pipeline.run(...)``, starts with a fresh window).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Any

__all__ = ["RateLimit"]


class RateLimit:
    """At most ``calls`` call starts in any ``per_seconds`` (see the module's docstring)."""

    __slots__ = ("__weakref__", "_windows", "calls", "per_seconds")

    def __init__(self, calls: int, per_seconds: float = 1.0) -> None:
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ValueError(f"calls must be an int >= 1, got {calls!r}")
        if (
            isinstance(per_seconds, bool)
            or not isinstance(per_seconds, (int, float))
            or not per_seconds > 0
        ):
            raise ValueError(f"per_seconds must be a number of seconds > 0, got {per_seconds!r}")
        self.calls = calls
        self.per_seconds = float(per_seconds)
        self._windows: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Window] = (
            weakref.WeakKeyDictionary()
        )

    def window(self, loop: asyncio.AbstractEventLoop) -> Window:
        """The starts on ``loop`` (one window per event loop)."""
        window = self._windows.get(loop)
        if window is None:
            window = self._windows[loop] = Window(self.calls, self.per_seconds, loop)
        return window

    def __repr__(self) -> str:
        return f"RateLimit({self.calls}, per_seconds={self.per_seconds:g})"


class Window:
    """The latest starts under one limit, on one loop (times of ``loop.time()``)."""

    __slots__ = ("calls", "loop", "per", "starts")

    def __init__(self, calls: int, per: float, loop: asyncio.AbstractEventLoop) -> None:
        self.calls = calls
        self.per = per
        self.loop = loop
        self.starts: deque[float] = deque(maxlen=calls)

    def wait(self) -> float:
        """Seconds until a call may start (0: now)."""
        if len(self.starts) < self.calls:
            return 0.0
        return max(0.0, self.starts[0] + self.per - self.loop.time())

    def take(self) -> None:
        """A call starts now."""
        self.starts.append(self.loop.time())

    async def acquire(self) -> None:
        """Wait for a turn, then take it (retries, inside a call's task)."""
        while (delay := self.wait()) > 0:
            await asyncio.sleep(delay)
        self.take()


def as_rate_limit(name: str, value: Any) -> RateLimit | None:
    """The ``rate_limit`` option: ``None``, a ``RateLimit``, or ``(calls, per_seconds)``."""
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        try:
            return RateLimit(*value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    raise TypeError(
        f"{name} must be (calls, per_seconds), e.g. {name}=(10, 1.0) for 10 calls a "
        f"second, or a conveyor.RateLimit shared by several tasks; got {value!r}"
    )
