"""Concurrency that tunes itself: ``concurrency_limit="auto"`` or ``AdaptiveLimit(...)``.

A task with an adaptive limit has, in each run, a concurrency limit that follows the
service it calls: it grows while the calls' latency stays near the lowest seen, shrinks
when latency rises (requests queue at the service) and backs off when calls come back
with a *drop*: a timeout, a connection error, or an HTTP 429 or 503 (an aiohttp
``ClientResponseError``'s ``status`` or an httpx ``HTTPStatusError``'s
``response.status_code``, read by duck typing). The algorithm and why it was chosen:
``conveyor._engine._adaptive``.

What is measured is each attempt's own time: from when the call is made to when its
result (or error) is out. Waiting for a rate limit's turn and the delay between retries
are not part of it, so ``rate_limit=`` and ``retry_*`` work beside an adaptive limit
without feeding it false latency; a call waiting for its turn does hold a slot, as with
a fixed limit. The limit never exceeds the run's window (``max_in_flight``), nor the
number of calls the task's executor runs at once where it has such a size
(``"thread:N"``, ``"process:N"``, a user's pool).

The current limit is in the statistics (``StageStats.concurrency_limit_now``; ``limit``
is the bound, ``max``), in ``str(stats)``, in the bottleneck's verdict and in
Prometheus (``conveyor_stage_concurrency_limit``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["AdaptiveLimit", "as_concurrency_limit"]


@dataclasses.dataclass(frozen=True, slots=True)
class AdaptiveLimit:
    """Bounds of an adaptive concurrency limit (``concurrency_limit=AdaptiveLimit(...)``).

    ``min``: the limit never goes below it (default 1). ``max``: never above it (default
    ``None``: the run's window, ``max_in_flight``; a larger ``max`` is capped by the window
    too, and by the executor's size: ``"thread:N"``, ``"process:N"``, a user's pool).
    ``start``: the limit of a run's first calls (default ``None``: 4, within the bounds).
    ``concurrency_limit="auto"`` is ``AdaptiveLimit()``.
    """

    min: int = 1
    max: int | None = None
    start: int | None = None

    def __post_init__(self) -> None:
        for name in ("min", "max", "start"):
            value = getattr(self, name)
            if value is None and name != "min":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"AdaptiveLimit({name}=...) must be an int >= 1"
                    f"{'' if name == 'min' else ' or None'}, got {value!r}"
                )
        if self.max is not None and self.max < self.min:
            raise ValueError(f"AdaptiveLimit: max ({self.max}) must be >= min ({self.min})")
        if self.start is not None and not (
            self.min <= self.start <= (self.max if self.max is not None else self.start)
        ):
            raise ValueError(
                f"AdaptiveLimit: start ({self.start}) must be within min ({self.min}) "
                f"and max ({self.max})"
            )

    def bounds(self, window: int) -> tuple[int, int, int]:
        """``(min, max, start)`` for a run whose window is ``window`` items."""
        top = window if self.max is None else min(self.max, window)
        low = min(self.min, top)
        start = 4 if self.start is None else self.start
        return low, top, max(low, min(start, top))

    def __str__(self) -> str:
        if self == AdaptiveLimit():
            return "auto"
        top = "window" if self.max is None else str(self.max)
        return f"auto ({self.min}..{top})"


def as_concurrency_limit(name: str, value: Any) -> Any:
    """A task's ``concurrency_limit``, checked: an int >= 1, None, ``"auto"`` or an
    :class:`AdaptiveLimit` (``"auto"`` becomes ``AdaptiveLimit()``)."""
    if value is None or isinstance(value, AdaptiveLimit):
        return value
    if value == "auto":
        return AdaptiveLimit()
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int >= 1, None, 'auto' or conveyor.AdaptiveLimit(min=, "
            f"max=, start=), got {type(value).__name__}: {value!r}"
        )
    if value < 1:
        raise ValueError(f"{name} must be >= 1 (or 'auto' to tune itself), got {value}")
    return value
