"""Memory bounded in bytes: ``max_in_flight_bytes`` turned into how many items the input
may have in the run at once.

The window counts items (``max_in_flight``). Items that are large — DataFrame chunks,
blocks of a file — make that count a poor bound: 1000 chunks of 10 MB is 10 GB. So the
pump weighs the input's items and admits a new one only while the window holds fewer
than ``max_in_flight_bytes / w`` items, ``w`` being the items' mean weight (a moving
average, so it follows a change of chunk size). The item count of the window still bounds
everything else (expansions, results waiting for the consumer).

What weighs: ``item_weight(item)`` when the context gives one (called on every item);
otherwise :func:`weight_of` knows bytes, buffers and arrays (``nbytes``) and pandas
objects (their memory, strings included). An input whose first :data:`PROBE` items have
no weight it knows is not weighed further, nor one whose items are so light that a full
window of them is far below the budget (the count is the bound that matters then): plain
items cost nothing after that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._ledger import Ledger

PROBE = 16
"""Items weighed before giving up on an input whose items have no known weight."""
SMOOTHING = 0.25
WEIGHER = "weigher"
"""The run's :class:`Weigher` (or None) in the dict of what the run opens for its stages."""


def weight_of(item: Any) -> int | None:
    """The memory an item holds, in bytes, when its type says so (else ``None``)."""
    kind = type(item)
    if kind is bytes or kind is bytearray or kind is str:
        return len(item)
    usage = getattr(item, "memory_usage", None)
    if usage is not None and kind.__module__.startswith("pandas"):
        # (deep: strings count; a Series' nbytes would count only their pointers)
        total = usage(deep=True, index=True)  # (a DataFrame: per column; a Series: int)
        return int(total.sum()) if hasattr(total, "sum") else int(total)
    nbytes = getattr(item, "nbytes", None)  # numpy arrays, memoryviews, Arrow tables
    if type(nbytes) is int:
        return nbytes
    return None


class Weigher:
    """Sets the window's admission limit from the weights of the input's items."""

    __slots__ = ("active", "budget", "explicit", "mean", "probed", "weight", "window")

    def __init__(self, window: Ledger, budget: int, weight: Callable[[Any], Any] | None) -> None:
        self.window = window
        self.budget = budget
        self.explicit = weight is not None
        self.weight = weight if weight is not None else weight_of
        self.mean: float | None = None
        self.probed = 0
        self.active = True  # False: the input's items have no weight (stop weighing)

    def weigh(self, item: Any) -> None:
        """An item is admitted: learn its weight, set how many may be in the run."""
        weight = self.weight(item)
        if weight is None:
            self.probed += 1
            if not self.explicit and self.mean is None and self.probed >= PROBE:
                self.active = False
            return
        if not isinstance(weight, (int, float)) or weight < 0:
            raise TypeError(
                f"item_weight must return a number of bytes >= 0 (or None: no weight), "
                f"got {weight!r} for an item of type {type(item).__name__}"
            )
        mean = self.mean
        mean = self.mean = weight if mean is None else mean + SMOOTHING * (weight - mean)
        self.window.admit_at_most(int(self.budget // mean) if mean >= 1 else self.budget)
        self.probed += 1
        if (
            not self.explicit
            and self.probed >= PROBE
            and 4 * mean * self.window.limit <= self.budget
        ):
            self.active = False  # light items: the window's count bounds them

    # -- copies: the pickled chunks of a process stage (see ``_chunks``) ---------------

    def hold(self, copy: int) -> int:
        """A copy of ``copy`` bytes of the input's items is made (a chunk pickled for a
        process pool, held until its answer is in): it takes window places as items of
        the mean weight would, so that the input reads on only as far as the bound
        allows with the copies. The places taken, for :meth:`unhold`."""
        mean = self.mean
        if not self.active or mean is None or mean < 1 or copy <= 0:
            return 0
        places = -(-copy // int(mean))  # (rounded up)
        self.window.hold(places)
        return places

    def unhold(self, places: int) -> None:
        """The copy that :meth:`hold` counted is gone (its chunk was answered)."""
        if places:
            self.window.released(places)

    def chunk_items(self, workers: int) -> int | None:
        """The most items of the mean weight a chunk may hold: a ``4 x workers`` share of
        the budget. Up to ``2 x workers`` chunks are out at once, and each has, besides
        its pickled copy (counted by :meth:`hold`), about as much again in transit that
        no one can count (the pool's own pickled copy of it on its way to a worker, its
        answer on its way back): so those stay within half the budget. None when items
        are not weighed."""
        mean = self.mean
        if not self.active or mean is None or mean < 1:
            return None
        return max(1, int(self.budget // (4 * workers * mean)))
