"""Origins: which input items a live thing of a run descends from.

On a run that tracks them — a run with a checkpoint (``pipeline.with_checkpoint``), a
run whose results are paired with their items (``pipeline.with_items()``), a branch's
run (``conveyor.parallel``, ``conveyor.route``: see ``_branch``) — each admitted input
item gets an :class:`Origin` (its key, its item, and ``live``, the count of things
derived from it still in the run). The origin travels *beside* the item on the engine's
one item path (``push(item, node, origin)``): a call's results carry its item's origin, a list's
elements and a generator's children their parent's, a Failure its item's, and a batch's
result the tuple of its items' origins (flattened, each once, in order). What travels is
therefore ``None`` (a run that does not track them: nothing is counted), an ``Origin``, or a
tuple of them (:data:`Origins`).

Only the ledger writes ``live`` and ``error`` (its origin transitions: ``_ledger``); an
origin whose ``live`` comes back to 0 is done, and the ledger tells who asked
(``Ledger.on_done``: the run's checkpoint, see ``_checkpoint``; a branch's join).

A run that pairs its results (:func:`items_of`) hands the consumer ``(label, result)``
where ``label`` is what the result's origins stand for.

The call being made knows the origins of its item(s) through :data:`ORIGIN`, set in the
call's own context (each call runs in a copy of the run's context; a call on a thread of
conveyor's pool or a user's ``ThreadPoolExecutor`` runs in a copy of it too): the
error policy records a failure on them, and :func:`current_keys` reads them.
"""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = [
    "ORIGIN",
    "BatchOrigins",
    "Origin",
    "Origins",
    "current_keys",
    "each",
    "items_of",
    "merged",
]


class Origin:
    """One admitted input item: its key (a checkpoint's; else None), what it stands for
    (``item``: the input item, or a branch's join handle: see ``_branch``), how many
    things derived from it are live, and the first failure a policy handled on something
    derived from it (``live`` and ``error`` are written by the ledger only)."""

    __slots__ = ("error", "item", "key", "live")

    def __init__(self, key: Any, item: Any = None) -> None:
        self.key = key
        self.item = item
        self.live = 0
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Origin {self.key!r} live={self.live}>"


Origins = Origin | tuple[Origin, ...] | None
"""What travels beside an item: its origin, its origins (a batch's result), or None."""


def each(origin: Origins) -> tuple[Origin, ...]:
    """The origins in ``origin``, as a tuple."""
    if origin is None:
        return ()
    if type(origin) is Origin:
        return (origin,)
    return origin  # type: ignore[return-value]


def items_of(origin: Origins) -> Any:
    """The input item(s) a result descends from (``pipeline.with_items()``): its origin's
    item; a batch's result, its items' list (in the batch's order); ``None`` for a result
    of a source task (no input item)."""
    if type(origin) is Origin:
        return origin.item
    if origin is None:
        return None
    return [one.item for one in origin]  # type: ignore[union-attr]


def merged(origins: list[Origins]) -> tuple[Origin, ...]:
    """The origins of a batch's items, flattened, each once, in order."""
    seen: dict[Origin, None] = {}
    for origin in origins:
        if type(origin) is Origin:
            seen[origin] = None
        elif origin is not None:
            for one in origin:  # type: ignore[union-attr]
                seen[one] = None
    return tuple(seen)


class BatchOrigins(tuple[Origin, ...]):
    """A batch's origins: its items' merged (each once, in order), which its result
    carries; and, for its call (:data:`ORIGIN`), the batch's ``items`` and each one's
    ``origins`` (the policy finds an isolated item's by identity)."""

    items: list[Any]
    origins: list[Origins]

    def __new__(cls, items: list[Any], origins: list[Origins]) -> BatchOrigins:
        self = super().__new__(cls, merged(origins))
        self.items = items
        self.origins = origins
        return self

    def of(self, item: Any) -> tuple[Origin, ...]:
        """The origins of ``item`` (an item of the batch, called alone)."""
        return merged([o for one, o in zip(self.items, self.origins, strict=True) if one is item])


ORIGIN: contextvars.ContextVar[Origin | tuple[Origin, ...]] = contextvars.ContextVar(
    "conveyor_origin"
)
"""The origins of the call being made, on a checkpointed run (see the module's doc)."""


def call_origins(value: Origin | tuple[Origin, ...]) -> tuple[Origin, ...]:
    """The origins of the call whose :data:`ORIGIN` is ``value``, each once, in order."""
    return each(value)


def current_keys() -> tuple[str, ...]:
    """The keys of the input items that the call being made descends from.

    Inside a task's call on a run with a checkpoint (``pipeline.with_checkpoint``): a
    single task's call, the keys of the input item(s) its item comes from (one, unless
    the item is a batch's result); a batch task's call, each item's keys in the batch's
    order, flattened, each once. Keys are the checkpoint's (its ``key=``, as stored:
    text). Available in calls on the event loop (``def``, ``async def``) and on threads
    (``"thread"``, a ``ThreadPoolExecutor``), which run in a copy of the call's
    context; not in a worker process, a Dask or Ray worker (compute the key from the
    item there, with the same function as ``Checkpoint(key=...)``).

    This is what a sink that writes to a database needs for exactly-once writes: insert
    with ``ON CONFLICT DO NOTHING`` on the key, or record the keys in the same
    transaction as the rows (see docs/durable-runs.md).

    Raises ``RuntimeError`` outside a call of a run with a checkpoint.
    """
    value = ORIGIN.get(None)
    # (A branch run's origin's key: the keys of the item it came from, or None: see
    # ``_branch``.)
    keys = [] if value is None else [origin.key for origin in call_origins(value)]
    if not keys or None in keys:
        raise RuntimeError(
            "conveyor.current_keys() is only available inside a task's call on a run with a "
            "checkpoint (pipeline.with_checkpoint(conveyor.Checkpoint(...))), in the call's "
            "own context: on the event loop or a thread, not in a worker process"
        )
    flat = (one for key in keys for one in (key if isinstance(key, tuple) else (key,)))
    return tuple(dict.fromkeys(flat))
