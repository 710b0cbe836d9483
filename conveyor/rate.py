"""Rate limits: how often calls may start (``@single_task(rate_limit=...)``).

Two modes, chosen by ``burst=``:

- **Window** (the default, ``burst=None``, as in conveyor-streaming): at most ``calls``
  call starts in any window of ``per_seconds`` (a sliding window over the last ``calls``
  starts: exact, and bounded in memory by ``calls``). After a pause a full ``calls``
  start at once, and the next ``calls`` one window later: a server that sees each
  request a variable time after its start can count up to ``2 * calls`` in one of its
  windows (measured: see docs/flow-control.md).
- **Smooth** (``burst=b``, an int ``>= 1``): a generic cell rate algorithm (GCRA).
  Starts are spaced ``per_seconds / calls`` apart, and at most ``b`` may come at once
  after a pause: a start is allowed at ``t`` when ``t >= tat - (b - 1) * interval``,
  and each start moves the theoretical arrival time ``tat`` to
  ``max(tat, t) + interval``. Any window of ``w`` seconds holds at most
  ``b + w * calls / per_seconds`` starts; ``burst=1`` is perfectly even.

``key=`` (a function of the item) gives each key a quota of its own, e.g. one per host:
``RateLimit(10, 1.0, key=lambda url: urlsplit(url).hostname)``. A key's quota is created
on its first use; a key whose quota is back to its initial state (no start within the
last ``per_seconds`` in window mode; its ``tat`` in the past in smooth mode) is
forgotten, which changes nothing it would allow. Idle keys are swept each time the number
of keys kept doubles (and at least 64), so the memory kept is at most about twice the
keys used within the last ``per_seconds`` (smooth: whose quota is not fully back). The
key function runs on the event loop, once per call attempt; if it raises, the item fails
under the task's error policy (with no retry: no call was made).

A call that would exceed its limit waits *before* it starts: the wait is not part of the
call, so it never counts against the task's ``timeout``. Retries are calls too: each
attempt takes its turn. On a thread or process pool a call also waits for a free worker
before it takes its turn, so that it starts when its turn is taken (see
``conveyor._engine._gate``).

``rate_limit=(calls, per_seconds)`` gives a task a window limit of its own. One
``RateLimit`` object given to several tasks is one quota for all of them (one quota per
key, with ``key=``): e.g. two endpoints of the same API. A limit is shared by every run
that uses it on the same event loop (a new loop, such as each ``pipeline.run(...)``,
starts afresh).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["RateLimit"]

SWEEP_MIN = 64
"""Keys kept before the first sweep of idle keys (see the module's docstring)."""

SLACK = 1e-6
"""A wait this short counts as none. The smooth mode's schedule is a float sum
(``tat + interval``, over and over) that can end an ulp past the loop's time when its
timer fires (asyncio fires a timer up to its clock's resolution early; a virtual clock
such as looptime's counts whole microseconds): waiting again for 1e-16 s would spin
without the clock moving."""


class RateLimit:
    """At most ``calls`` call starts in any ``per_seconds`` (window mode), or starts
    spaced ``per_seconds / calls`` apart with at most ``burst`` at once (smooth mode);
    one quota per key with ``key=`` (see the module's docstring)."""

    __slots__ = ("__weakref__", "_quotas", "burst", "calls", "key", "per_seconds")

    def __init__(
        self,
        calls: int,
        per_seconds: float = 1.0,
        *,
        burst: int | None = None,
        key: Callable[[Any], Hashable] | None = None,
    ) -> None:
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ValueError(f"calls must be an int >= 1, got {calls!r}")
        if (
            isinstance(per_seconds, bool)
            or not isinstance(per_seconds, (int, float))
            or not per_seconds > 0
        ):
            raise ValueError(f"per_seconds must be a number of seconds > 0, got {per_seconds!r}")
        if burst is not None and (
            isinstance(burst, bool) or not isinstance(burst, int) or burst < 1
        ):
            raise ValueError(
                f"burst must be an int >= 1 (1: evenly spaced starts) or None (the window "
                f"mode), got {burst!r}"
            )
        if key is not None and not callable(key):
            raise TypeError(
                f"key must be a function of the item returning its quota's key (or None), "
                f"got {key!r}; e.g. key=lambda url: urlsplit(url).hostname"
            )
        self.calls = calls
        self.per_seconds = float(per_seconds)
        self.burst = burst
        self.key = key
        self._quotas: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def _new(self, loop: asyncio.AbstractEventLoop) -> Window | Cell:
        if self.burst is None:
            return Window(self.calls, self.per_seconds, loop)
        return Cell(self.per_seconds / self.calls, self.burst, loop)

    def window(self, loop: asyncio.AbstractEventLoop) -> Window | Cell:
        """The starts on ``loop`` (one quota per event loop; not for a keyed limit)."""
        assert self.key is None, "a keyed limit has a quota per key: see keyed()"
        quota = self._quotas.get(loop)
        if quota is None:
            quota = self._quotas[loop] = self._new(loop)
        return quota

    def keyed(self, loop: asyncio.AbstractEventLoop) -> Keyed:
        """The quotas of each key on ``loop`` (a keyed limit: ``key=``)."""
        quotas = self._quotas.get(loop)
        if quotas is None:
            quotas = self._quotas[loop] = Keyed(self, loop)
        return quotas

    def describe(self) -> str:
        """For statistics and charts: ``"10 calls per 1 s"``, and the mode and key."""
        text = f"{self.calls} calls per {self.per_seconds:g} s"
        if self.burst is not None:
            text += f", smooth (burst {self.burst})"
        return text if self.key is None else text + ", per key"

    def __repr__(self) -> str:
        extra = "" if self.burst is None else f", burst={self.burst}"
        if self.key is not None:
            extra += f", key={getattr(self.key, '__name__', self.key)!s}"
        return f"RateLimit({self.calls}, per_seconds={self.per_seconds:g}{extra})"


class Window:
    """The latest starts under one limit, on one loop (times of ``loop.time()``)."""

    __slots__ = ("calls", "loop", "per", "starts")

    def __init__(self, calls: int, per: float, loop: asyncio.AbstractEventLoop) -> None:
        self.calls = calls
        self.per = per
        self.loop = loop
        self.starts: deque[float] = deque(maxlen=calls)

    def wait(self) -> float:
        """Seconds until a call may start (0: now, or within ``SLACK``: a timer fired a
        clock tick early would otherwise wait again for next to nothing, and spin)."""
        if len(self.starts) < self.calls:
            return 0.0
        wait = self.starts[0] + self.per - self.loop.time()
        return wait if wait > SLACK else 0.0

    def take(self) -> None:
        """A call starts now."""
        self.starts.append(self.loop.time())

    def idle(self, now: float) -> bool:
        """Back to its initial state: forgetting it changes nothing it allows."""
        return not self.starts or self.starts[-1] + self.per <= now

    async def acquire(self) -> None:
        """Wait for a turn, then take it (retries, inside a call's task)."""
        while (delay := self.wait()) > 0:
            await asyncio.sleep(delay)
        self.take()


class Cell:
    """The smooth mode's state on one loop: the theoretical arrival time (GCRA)."""

    __slots__ = ("interval", "loop", "tat", "tolerance")

    def __init__(self, interval: float, burst: int, loop: asyncio.AbstractEventLoop) -> None:
        self.interval = interval
        self.tolerance = (burst - 1) * interval
        self.loop = loop
        self.tat = float("-inf")

    def wait(self) -> float:
        """Seconds until a call may start (0: now, or within ``SLACK``)."""
        wait = self.tat - self.tolerance - self.loop.time()
        return wait if wait > SLACK else 0.0

    def take(self) -> None:
        """A call starts now."""
        self.tat = max(self.tat, self.loop.time()) + self.interval

    def idle(self, now: float) -> bool:
        """Back to its initial state: forgetting it changes nothing it allows."""
        return self.tat <= now

    async def acquire(self) -> None:
        """Wait for a turn, then take it (retries, inside a call's task)."""
        while (delay := self.wait()) > 0:
            await asyncio.sleep(delay)
        self.take()


class Keyed:
    """A keyed limit's quotas on one loop: one per key, created on first use, idle ones
    forgotten (see the module's docstring)."""

    __slots__ = ("limit", "loop", "quotas", "sweep_at")

    def __init__(self, limit: RateLimit, loop: asyncio.AbstractEventLoop) -> None:
        self.limit = limit
        self.loop = loop
        self.quotas: dict[Hashable, Window | Cell] = {}
        self.sweep_at = SWEEP_MIN

    def quota(self, key: Hashable) -> Window | Cell:
        """The quota of ``key`` (made now if it has none)."""
        quota = self.quotas.get(key)
        if quota is None:
            if len(self.quotas) >= self.sweep_at:
                self.sweep()
            quota = self.quotas[key] = self.limit._new(self.loop)
        return quota

    def sweep(self) -> None:
        """Forget the idle keys; sweep again when the keys kept have doubled."""
        now = self.loop.time()
        for key in [key for key, quota in self.quotas.items() if quota.idle(now)]:
            del self.quotas[key]
        self.sweep_at = max(SWEEP_MIN, 2 * len(self.quotas))


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
        f"second, or a conveyor.RateLimit (smooth with burst=, per key with key=, or "
        f"shared by several tasks); got {value!r}"
    )
