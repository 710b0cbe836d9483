"""The shape of a branch stage (``conveyor.parallel``, ``conveyor.route``): a part of its
``StageSpec`` (``_spec``, which imports this module: the branches' own specs are typed
``Any`` here), read by the engine's branch stage (``_engine._branch``), the plan (the
window holds every batch in a branch) and the charts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["BranchesSpec"]


@dataclasses.dataclass(frozen=True, slots=True)
class BranchesSpec:
    """The branches of a ``conveyor.parallel`` or ``conveyor.route`` stage (see
    ``_engine._branch``): each a label and the specs of its stages.

    ``parallel``: every item goes to every branch, and ``combine(item, *results)`` (or
    the tuple of the results) is its result. ``route``: ``key(item)`` picks the branch
    (``routes``: a value and its branch's index); an item of no route goes to branch
    ``default``, or on unchanged when ``default`` is None.
    """

    kind: Literal["parallel", "route"]
    branches: tuple[tuple[str, tuple[Any, ...]], ...]  # (label, its StageSpecs)
    combine: Callable[..., Any] | None = None
    key: Callable[[Any], Any] | None = None
    routes: tuple[tuple[Any, int], ...] = ()
    default: int | None = None
