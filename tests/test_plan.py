"""Unit tests of a run's plan (``conveyor._engine._plan``): what is decided once, before
the run starts, from the specs and the context."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import PipelineContext, RateLimit, batch_task, single_task
from conveyor._engine._plan import UNLIMITED, Plan, plan
from conveyor.context import ExecutionMode


def _double(x: int) -> int:
    return 2 * x


def _inc(x: int) -> int:
    return x + 1


async def _fetch(x: int) -> int:
    await asyncio.sleep(0)
    return x


def _total(xs: list[int]) -> int:
    return sum(xs)


double, inc, fetch = single_task(_double), single_task(_inc), single_task(_fetch)
total = batch_task(max_size=10)(_total)


def plan_of(*tasks: Any, observed: bool = False, **context: Any) -> Plan:
    return plan([task.spec for task in tasks], PipelineContext(**context), observed=observed)


def fused(p: Plan) -> list[bool]:
    return [stage.fused for stage in p.stages]


def test_plain_stages_on_the_loop_are_fused_into_the_next() -> None:
    p = plan_of(double, inc, double)
    assert fused(p) == [True, True, False]
    assert all(stage.plain for stage in p.stages)


def test_no_fusion_into_a_stage_with_a_limit_or_across_other_kinds() -> None:
    assert fused(plan_of(double, single_task(concurrency_limit=2)(_inc), double)) == [
        False,
        True,
        False,
    ]
    assert fused(plan_of(double, fetch, double)) == [False, False, False]
    assert fused(plan_of(double, total, double)) == [False, False, False]
    on_threads = single_task(executor="thread")(_inc)
    assert fused(plan_of(double, on_threads, double)) == [False, False, False]


def test_a_rate_limited_stage_takes_turns_and_is_not_plain() -> None:
    limited = single_task(rate_limit=RateLimit(10, per_seconds=1))(_inc)
    p = plan_of(double, limited)
    assert [s.starts for s in p.stages] == ["call", "turn"]
    assert fused(p) == [False, False] and not p.stages[1].plain


def test_how_calls_start() -> None:
    p = plan_of(fetch, double, single_task(executor="thread")(_fetch))
    assert [s.starts for s in p.stages] == ["coroutine", "call", "call"]


def test_a_users_observer_stops_fusion_and_the_direct_entry() -> None:
    watched = plan_of(double, inc, observed=True)
    assert fused(watched) == [False, False] and not watched.direct_entry
    assert plan_of(double, inc).direct_entry


def test_the_direct_entry_needs_an_unlimited_single_first_stage() -> None:
    assert not plan_of(total).direct_entry
    assert not plan_of(single_task(concurrency_limit=3)(_double)).direct_entry
    assert not plan_of(double, max_parallelism=4).direct_entry


def test_limits() -> None:
    p = plan_of(double, total, single_task(concurrency_limit=3)(_inc), max_parallelism=None)
    assert [s.limit for s in p.stages] == [UNLIMITED, 1, 3]
    p = plan_of(double, batch_task(max_size=10, concurrency_limit=2)(_total), max_parallelism=8)
    assert [s.limit for s in p.stages] == [8, 2]


def test_the_window_holds_a_full_batch_of_every_batch_stage() -> None:
    p = plan_of(total, batch_task(max_size=25)(_total), max_in_flight=20)
    assert (p.window, p.max_in_flight, p.batch_sizes) == (35, 20, [10, 25])
    assert plan_of(total, max_in_flight=100).window == 100


def test_the_order() -> None:
    assert plan_of(double).ordered
    assert not plan_of(double, execution_mode=ExecutionMode.AS_COMPLETED).ordered


def test_a_plan_is_immutable() -> None:
    p = plan_of(double)
    try:
        p.stages[0].fused = True  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("a StagePlan could be changed")


def test_the_tight_loop_needs_every_stage_plain_and_fused_to_the_consumer() -> None:
    assert plan_of(double, inc, double).tight_loop
    assert plan_of(double).tight_loop
    assert not plan_of(double, single_task(concurrency_limit=2)(_inc)).tight_loop
    assert not plan_of(double, fetch).tight_loop
    assert not plan_of(double, total).tight_loop
    assert not plan_of(double, inc, observed=True).tight_loop
    assert not plan_of(double, max_parallelism=4).tight_loop
