"""The plan of a run: what is decided once, from the specs and the context, before the run
starts, and never changes while it runs.

For each stage: its concurrency limit (an adaptive one's bounds and start: ``_adaptive``),
whether it is a *plain* call (a plain function on the loop, whose result can go straight
into the next function), whether it is *fused* with the next stage, how an item's call
starts (``"coroutine"``: an ``async def`` on the loop, whose call always returns a
coroutine; ``"turn"``: under a rate limit, when its turn comes; ``"lanes"``: under a
keyed rate limit, a per-key concurrency limit or a priority, by ``_lanes``; ``"call"``:
the generic rules), and whether a user's observer watches it.
For the run: the window (``max_in_flight``, raised to hold a full batch of every batch
stage: see ``_ledger``), the order, whether the pump may call the first stage directly,
and whether it may run the whole chain as one composed function (the tight loop of
``_fused``: every stage plain and fused into the next). ``_run`` builds the stages
from it; ``tests/test_plan.py`` checks its rules without running anything.

**Fusion.** A plain single stage hands a plain result straight to the next stage's
function, as if the functions were composed by hand, when the next stage is a plain
single stage without a concurrency limit (a limit may make an item wait, which a fused
call cannot). A user's observer is told of every item and call, so a stage it watches is
never plain, and the pump never calls its first stage directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._spec import StageSpec
from ..adaptive import AdaptiveLimit
from ..context import ExecutionMode, PipelineContext
from ._ledger import window_size
from ._registry import kind_of

UNLIMITED = 1 << 62
"""The concurrency limit of a single stage that has none."""


@dataclass(frozen=True, slots=True)
class StagePlan:
    """What is decided about one stage of a run (see the module's docstring)."""

    index: int
    spec: StageSpec
    limit: int
    observed: bool
    plain: bool
    fused: bool
    starts: str  # "coroutine", "turn", "lanes" or "call"
    adaptive: tuple[int, int, int] | None = None  # an adaptive limit's (min, max, start)

    @property
    def batch(self) -> bool:
        return self.spec.batch


@dataclass(frozen=True, slots=True)
class Plan:
    """What is decided about a run (see the module's docstring)."""

    stages: tuple[StagePlan, ...]
    ordered: bool
    window: int
    max_in_flight: int  # as the context asked (``window`` may be larger)
    direct_entry: bool
    tight_loop: bool

    @property
    def batch_sizes(self) -> list[int]:
        return batch_sizes([stage.spec for stage in self.stages])


def batch_sizes(specs: Sequence[StageSpec]) -> list[int]:
    """The ``max_size`` of each batch stage, those in branches too (``_branch``): the
    window holds a full batch of each."""
    sizes = []
    for spec in specs:
        if spec.batch:
            sizes.append(spec.options.max_size or 1)
        if spec.branches is not None:
            sizes.extend(batch_sizes([one for _, line in spec.branches.branches for one in line]))
    return sizes


def plan(specs: Sequence[StageSpec], context: PipelineContext, *, observed: bool) -> Plan:
    """The plan of a run of ``specs`` in ``context`` (``observed``: a user's observer)."""
    window = window_size(context.max_in_flight, batch_sizes(specs))
    adaptive = [_adaptive(spec, window) for spec in specs]
    limits = [
        _limit(spec, context) if bounds is None else bounds[2]
        for spec, bounds in zip(specs, adaptive, strict=True)
    ]
    plain = [_plain(spec, observed) for spec in specs]
    stages = tuple(
        StagePlan(
            index=index,
            spec=spec,
            limit=limits[index],
            observed=observed,
            plain=plain[index],
            fused=(
                plain[index]
                and index + 1 < len(specs)
                and plain[index + 1]
                and limits[index + 1] == UNLIMITED
            ),
            starts=_starts(spec),
            adaptive=adaptive[index],
        )
        for index, spec in enumerate(specs)
    )
    first = stages[0] if stages else None
    direct_entry = (
        first is not None
        and not first.batch
        and first.limit == UNLIMITED
        and not observed
        and first.spec.branches is None  # (its push counts its items: see ``_branch``)
    )
    return Plan(
        stages=stages,
        ordered=context.execution_mode is ExecutionMode.ORDERED,
        window=window,
        max_in_flight=context.max_in_flight,
        direct_entry=direct_entry,
        # Every stage plain and fused into the next, from the input to the consumer: the
        # pump may run the chain as one composed function (see ``_fused``).
        tight_loop=direct_entry
        and all(stage.plain for stage in stages)
        and all(stage.fused for stage in stages[:-1]),
    )


def _limit(spec: StageSpec, context: PipelineContext) -> int:
    limit = spec.options.concurrency_limit
    assert not isinstance(limit, AdaptiveLimit)  # (see _adaptive)
    if spec.batch:
        return limit or 1
    if spec.branches is not None:  # (its calls wait for its branches, which are limited)
        return UNLIMITED
    return limit or context.max_parallelism or UNLIMITED


def _adaptive(spec: StageSpec, window: int) -> tuple[int, int, int] | None:
    """An adaptive limit's bounds in a run of ``window`` items: it starts at ``start``
    (``_adaptive`` changes the stage's limit as it runs, never past the window)."""
    limit = spec.options.concurrency_limit
    return limit.bounds(window) if isinstance(limit, AdaptiveLimit) else None


def _inline(spec: StageSpec) -> bool:
    return kind_of(spec.options.executor).name == "inline"


def _plain(spec: StageSpec, observed: bool) -> bool:
    """A plain function on the loop, not under a rate limit, a per-key limit or a
    priority (its calls wait for their turn) nor watched by a user's observer (told of
    every call)."""
    return (
        not spec.batch
        and spec.branches is None  # (its calls wait for its branches: see ``_branch``)
        and _inline(spec)
        and not spec.is_async
        and _starts(spec) == "call"
        and not observed
    )


def _starts(spec: StageSpec) -> str:
    options = spec.options
    rate = options.rate_limit
    if (
        options.priority is not None
        or options.concurrency_limit_per_key is not None
        or (rate is not None and rate.key is not None)
    ):
        return "lanes"
    if rate is not None:
        return "turn"
    return "coroutine" if _inline(spec) and spec.is_async else "call"
