"""``priority=`` (issue 21, item 5): among items waiting for a task's slots (concurrency
limit, rate limit, per-key limits), the highest priority starts first, FIFO among equals;
an ordered run's delivery order is unchanged. And the property of the whole item: random
rate limits (modes, keys), per-key concurrency and priorities never lose or duplicate an
item (the sequential model of ``test_model``)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any
from unittest import mock

import pytest
import test_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_model import StageSpec, on_real_clock, pipelines
from test_model import check_as_completed, check_ordered, input_kinds, inputs, run_virtual

import conveyor
from conveyor import RateLimit, SingleTask, single_task


@pytest.mark.looptime
async def test_with_one_slot_waiting_high_priority_items_start_first() -> None:
    """Item 0 takes the one slot; the rest wait: they start highest first, and equal
    priorities in arrival order. The ordered output is the input's order."""
    started: list[int] = []

    @single_task(concurrency_limit=1, priority=lambda i: i % 3)
    async def call(i: int) -> int:
        started.append(i)
        await asyncio.sleep(0.1)
        return i

    assert await call(range(10)).collect() == list(range(10))
    assert started == [0, 2, 5, 8, 1, 4, 7, 3, 6, 9]


@pytest.mark.looptime
async def test_as_completed_results_come_in_priority_order() -> None:
    @single_task(concurrency_limit=1, priority=lambda i: i)
    async def call(i: int) -> int:
        await asyncio.sleep(0.1)
        return i

    assert await call.as_completed(range(6)).collect() == [0, 5, 4, 3, 2, 1]


@pytest.mark.looptime
async def test_equal_priorities_start_in_arrival_order() -> None:
    started: list[int] = []

    @single_task(concurrency_limit=2, priority=lambda i: 0)
    async def call(i: int) -> int:
        started.append(i)
        await asyncio.sleep(0.1 * (1 + i % 3))
        return i

    assert await call(range(20)).collect() == list(range(20))
    assert started == list(range(20))


@pytest.mark.looptime
async def test_priority_under_a_rate_limit() -> None:
    """The rate limit's turns go to the highest priority waiting (smooth and window)."""
    loop = asyncio.get_running_loop()
    for limit in (RateLimit(1, 1.0, burst=1), RateLimit(2, 1.0)):
        started: list[tuple[int, float]] = []

        @single_task(rate_limit=limit, priority=lambda i: -i if i % 2 else 100)
        def call(i: int, started: list[tuple[int, float]] = started) -> int:
            started.append((i, loop.time()))
            return i

        assert await call(range(8)).collect() == list(range(8))
        order = [i for i, _ in started]
        burst = limit.burst or limit.calls
        assert order[burst:] == sorted(
            order[burst:], key=lambda i: -i if i % 2 else 100, reverse=True
        )
        assert set(order) == set(range(8))


@pytest.mark.looptime
async def test_high_priority_arriving_later_overtakes_waiting_low_priority() -> None:
    """A high-priority item read after low-priority ones that wait starts before them:
    its latency is the wait for the next slot, theirs grows by its call."""
    loop = asyncio.get_running_loop()
    started: dict[str, float] = {}

    async def source() -> Any:
        for name in ("low0", "low1", "low2", "low3"):
            yield name
        await asyncio.sleep(0.05)
        yield "HIGH"

    @single_task(concurrency_limit=1, priority=lambda name: 1 if name == "HIGH" else 0)
    async def call(name: str) -> str:
        started[name] = loop.time()
        await asyncio.sleep(1.0)
        return name

    assert await call(source()).collect() == ["low0", "low1", "low2", "low3", "HIGH"]
    assert sorted(started, key=started.__getitem__) == ["low0", "HIGH", "low1", "low2", "low3"]


@pytest.mark.looptime
async def test_priority_with_per_key_concurrency_skips_a_full_key() -> None:
    """The highest-priority head whose key is full waits; the next one of another key
    starts (no head-of-line blocking across keys)."""
    started: list[str] = []

    @single_task(
        concurrency_limit=2,
        concurrency_limit_per_key=(lambda s: s[0], 1),
        priority=lambda s: int(s[1]),
    )
    async def call(s: str) -> str:
        started.append(s)
        await asyncio.sleep(0.1 if s[0] == "a" else 0.3)
        return s

    items = ["a1", "a9", "a8", "b1", "b2"]
    assert await call(items).collect() == items
    # b1 goes before a9 and a8 (key "a" is full), b2 after them (key "b" is full).
    assert started == ["a1", "b1", "a9", "a8", "b2"]


@pytest.mark.looptime
async def test_a_priority_that_raises_fails_its_item() -> None:
    @single_task(priority=lambda i: 1 / (i - 2), on_error="emit", concurrency_limit=1)
    async def call(i: int) -> int:
        return i

    results = await call(range(4)).collect()
    assert results[:2] == [0, 1] and results[3] == 3
    assert isinstance(results[2].exception, ZeroDivisionError)
    assert any("priority=" in note for note in results[2].exception.__notes__)


def test_bad_priorities_are_refused_at_call_time() -> None:
    with pytest.raises(TypeError, match="priority must be a function of the item"):
        single_task(priority=3)(lambda x: x)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="priority= applies to @single_task"):
        conveyor.batch_task(max_size=2, priority=len)(lambda xs: xs)


# -- the property: nothing lost, nothing duplicated -------------------------------------


@dataclasses.dataclass(frozen=True)
class Flow:
    """The flow options given to one single stage of a model pipeline."""

    rate: tuple[int, float, int | None, int | None] | None  # calls, per, burst, key mod
    per_key: tuple[int, int] | None  # key mod, n
    priority: int | None  # mod


flows = st.builds(
    Flow,
    rate=st.none()
    | st.tuples(
        st.integers(1, 4),
        st.sampled_from([0.1, 1.0]),
        st.none() | st.integers(1, 3),
        st.none() | st.integers(1, 4),
    ),
    per_key=st.none() | st.tuples(st.integers(1, 4), st.integers(1, 3)),
    priority=st.none() | st.integers(1, 5),
)


def _with_flows(pipeline: conveyor.Pipeline[Any, Any], chosen: list[Flow], scale: float) -> Any:
    """``pipeline``'s tasks, the single ones under the chosen flow options (``scale``:
    of the rate limits' periods, on a real clock)."""
    tasks = []
    for task, flow in zip(pipeline.stages, chosen, strict=False):
        if isinstance(task, SingleTask):
            options = task.options
            if flow.rate is not None:
                calls, per, burst, mod = flow.rate
                key = None if mod is None else (lambda x, m=mod: x % m)
                options = dataclasses.replace(
                    options, rate_limit=RateLimit(calls, per * scale, burst=burst, key=key)
                )
            if flow.per_key is not None:
                mod, n = flow.per_key
                options = dataclasses.replace(
                    options, concurrency_limit_per_key=(lambda x, m=mod: x % m, n)
                )
            if flow.priority is not None:
                options = dataclasses.replace(options, priority=lambda x, m=flow.priority: x % m)
            task = type(task)._from_options(task.func, options)
        tasks.append(task)
    tasks += pipeline.stages[len(chosen) :]
    return conveyor.Pipeline(tasks)


FLOW_SETTINGS = settings(
    max_examples=max(150, settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _run(specs: list[StageSpec], chosen: list[Flow], items: list[int], mode: str, kind: str) -> Any:
    def build(specs: list[StageSpec]) -> Any:
        return _with_flows(original(specs), chosen, 0.01 if on_real_clock(specs) else 1.0)

    original = test_model.build
    with mock.patch.object(test_model, "build", build):
        return run_virtual(specs, items, mode=mode, kind=kind)


@FLOW_SETTINGS
@given(
    specs=pipelines(),
    chosen=st.lists(flows, min_size=3, max_size=3),
    items=inputs,
    kind=input_kinds,
)
def test_ordered_runs_under_flow_options_match_the_reference(
    specs: list[StageSpec], chosen: list[Flow], items: list[int], kind: str
) -> None:
    """Random rate limits (window, smooth, keyed), per-key concurrency and priorities on
    a random pipeline: exactly the model's results, order and counts."""
    check_ordered(specs, items, _run(specs, chosen, items, "ordered", kind))


@FLOW_SETTINGS
@given(
    specs=pipelines(elementwise=True),
    chosen=st.lists(flows, min_size=3, max_size=3),
    items=inputs,
    kind=input_kinds,
)
def test_as_completed_runs_under_flow_options_match_the_reference(
    specs: list[StageSpec], chosen: list[Flow], items: list[int], kind: str
) -> None:
    check_as_completed(specs, items, _run(specs, chosen, items, "as_completed", kind))
