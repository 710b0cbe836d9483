"""Random pipelines against the sequential reference, in both modes, on a virtual clock.

Every example runs on its own looptime event loop (so sleeps cost no real time and a
deadlock shows up as a virtual-time timeout), and also checks the engine's invariants:
no task is left pending, the loop reported no error, the window's tokens all came back,
and the input generator was closed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import run_on_virtual_clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_model import (
    BATCH_SIZES,
    RAISE,
    Poison,
    StageSpec,
    build,
    observed,
    on_real_clock,
    pipelines,
    reference,
    stage_specs,
)

# Not a real-time limit: virtual seconds after which a run counts as deadlocked.
VIRTUAL_TIMEOUT = 100_000.0

inputs = st.lists(st.integers(0, 60), max_size=25)
input_kinds = st.sampled_from(["list", "generator", "async_generator"])


class Outcome:
    def __init__(self) -> None:
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self.leftover: list[asyncio.Task[Any]] = []
        self.loop_errors: list[dict[str, Any]] = []
        self.tokens: int | None = None
        self.source_closed = False
        self.batch_sizes: dict[str, list[int]] = {}
        self.stats: Any = None
        self.n_items = 0


def run_virtual(
    specs: list[StageSpec],
    items: list[int],
    *,
    mode: str,
    kind: str,
    window: int = 1000,
) -> Outcome:
    outcome = Outcome()
    # Statistics on (the default) or off, by the example: both engine paths are checked.
    statistics = len(items) % 2 == 0
    pipeline = build(specs).with_context(
        execution_mode=mode, max_in_flight=window, statistics=statistics
    )

    def generator() -> Iterator[int]:
        try:
            yield from items
        finally:
            outcome.source_closed = True

    async def async_generator() -> AsyncIterator[int]:
        try:
            for item in items:
                yield item
        finally:
            outcome.source_closed = True

    async def drive() -> None:
        BATCH_SIZES.clear()
        before = asyncio.all_tasks()
        source: Any = {
            "list": items,
            "generator": generator(),
            "async_generator": async_generator(),
        }[kind]
        if kind == "list":
            outcome.source_closed = True
        stream = pipeline(source)
        try:
            async for value in stream:
                outcome.results.append(observed(value))
        except Poison as exc:
            outcome.error = exc
        for _ in range(10):
            await asyncio.sleep(0)
        outcome.leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
        assert stream._run is not None
        outcome.tokens = stream._run.window.tokens
        outcome.stats = stream.stats
        outcome.n_items = len(items)
        outcome.batch_sizes = {name: list(sizes) for name, sizes in BATCH_SIZES.items()}

    if on_real_clock(specs):  # (see run_on_virtual_clock)
        run_on_virtual_clock(drive(), outcome.loop_errors, 60.0, virtual=False)
    else:
        run_on_virtual_clock(drive(), outcome.loop_errors, VIRTUAL_TIMEOUT)
    return outcome


def check_stats(outcome: Outcome) -> None:
    """A run that went to its end: its statistics add up (items are counted exactly)."""
    stats = outcome.stats
    if not stats.enabled:
        return
    assert stats.finished and stats.results == len(outcome.results)
    assert stats.stages[0].items_in == outcome.n_items
    for stage, following in zip(stats.stages, stats.stages[1:], strict=False):
        assert stage.items_out == following.items_in
    assert all(s.in_flight == 0 and s.waiting_for_slot == 0 for s in stats.stages)
    if not any(s.batch for s in stats.stages):  # (a batch emits a Failure per item)
        failures = sum(1 for r in outcome.results if isinstance(r, tuple))
        assert sum(s.emitted for s in stats.stages) == failures


def check_clean(outcome: Outcome) -> None:
    assert not outcome.leftover, f"tasks left pending: {outcome.leftover}"
    assert not outcome.loop_errors, f"event loop reported: {outcome.loop_errors}"
    assert outcome.source_closed, "the input generator was not closed"


def check_ordered(
    specs: list[StageSpec], items: list[int], outcome: Outcome, *, per_item: bool = False
) -> None:
    expected = reference(specs, items, per_item=per_item)
    check_clean(outcome)
    if per_item:
        # Batch composition is open, so failure records may overtake a partial batch;
        # values still come in reference order, and the records are the same.
        check_values_in_order(expected, outcome)
        return
    if RAISE in expected:
        before = expected[: expected.index(RAISE)]
        assert isinstance(outcome.error, Poison), f"expected a Poison error, got {outcome.error!r}"
        assert any("conveyor: raised by task" in note for note in outcome.error.__notes__)
        assert outcome.results == before[: len(outcome.results)]
    else:
        assert outcome.error is None
        assert outcome.results == expected
        assert outcome.tokens == 0, "window tokens leaked"
        check_stats(outcome)


def check_batch_sizes(specs: list[StageSpec], outcome: Outcome) -> None:
    """With the window larger than any batch, a batch is short only as the remainder.

    Every batch is ``max_size`` items but at most one (the input's remainder), which
    holds at least ``min_size``: never cut short while the window has room.
    """
    if outcome.error is not None:
        return
    for index, s in enumerate(specs):
        sizes = outcome.batch_sizes.get(f"s{index}", [])
        short = [n for n in sizes if n != s.max_size]
        assert len(short) <= 1, f"s{index}: batches of {sizes} (max_size={s.max_size})"
        assert all(s.min_size <= n <= s.max_size for n in short), (
            f"s{index}: batches of {sizes} (min_size={s.min_size}, max_size={s.max_size})"
        )


def check_values_in_order(expected: list[Any], outcome: Outcome) -> None:
    values = [v for v in expected if not isinstance(v, tuple)]
    got_values = [v for v in outcome.results if not isinstance(v, tuple)]
    records = Counter(v for v in expected if isinstance(v, tuple) and v != RAISE)
    got_records = Counter(v for v in outcome.results if isinstance(v, tuple))
    if RAISE in expected:
        assert isinstance(outcome.error, Poison), f"expected a Poison error, got {outcome.error!r}"
        assert got_values == values[: len(got_values)]
        assert not got_records - records
    else:
        assert outcome.error is None
        assert got_values == values
        assert got_records == records
        assert outcome.tokens == 0, "window tokens leaked"
        check_stats(outcome)


def check_as_completed(specs: list[StageSpec], items: list[int], outcome: Outcome) -> None:
    expected = reference(specs, items, per_item=True)
    check_clean(outcome)
    if RAISE in expected:
        assert isinstance(outcome.error, Poison)
        missing = Counter(outcome.results) - Counter(value for value in expected if value != RAISE)
        assert not missing, f"results the reference does not have: {missing}"
    else:
        assert outcome.error is None
        assert Counter(outcome.results) == Counter(expected)
        assert outcome.tokens == 0, "window tokens leaked"
        check_stats(outcome)


MODEL_SETTINGS = settings(
    max_examples=max(300, settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@MODEL_SETTINGS
@given(specs=pipelines(), items=inputs, kind=input_kinds)
def test_ordered_runs_match_the_reference(
    specs: list[StageSpec], items: list[int], kind: str
) -> None:
    outcome = run_virtual(specs, items, mode="ordered", kind=kind, window=100_000)
    check_ordered(specs, items, outcome)
    check_batch_sizes(specs, outcome)


@MODEL_SETTINGS
@given(specs=pipelines(elementwise=True), items=inputs, kind=input_kinds)
def test_as_completed_runs_match_the_reference_as_a_multiset(
    specs: list[StageSpec], items: list[int], kind: str
) -> None:
    outcome = run_virtual(specs, items, mode="as_completed", kind=kind, window=100_000)
    check_as_completed(specs, items, outcome)
    check_batch_sizes(specs, outcome)


@MODEL_SETTINGS
@given(
    specs=pipelines(elementwise=True),
    items=inputs,
    kind=input_kinds,
    window=st.integers(1, 6),
    mode=st.sampled_from(["ordered", "as_completed"]),
)
def test_small_windows_never_deadlock_and_keep_results(
    specs: list[StageSpec], items: list[int], kind: str, window: int, mode: str
) -> None:
    """A window smaller than batches and expansions: batches flush early, nothing hangs."""
    outcome = run_virtual(specs, items, mode=mode, kind=kind, window=window)
    if mode == "ordered":  # partial batches may be flushed: composition is not fixed
        check_ordered(specs, items, outcome, per_item=True)
    else:
        check_as_completed(specs, items, outcome)


@MODEL_SETTINGS
@given(
    specs=pipelines(failures=False),
    items=inputs,
    kind=input_kinds,
    window=st.integers(1, 30),
)
def test_ordered_results_never_depend_on_the_window_without_batches_of_sums(
    specs: list[StageSpec], items: list[int], kind: str, window: int
) -> None:
    """Any window: ordered output equals the reference when batches are element-wise."""
    specs = [s for s in specs if not s.batch or (s.op == "map" and s.min_size == 1)]
    if not specs:
        return
    outcome = run_virtual(specs, items, mode="ordered", kind=kind, window=window)
    check_ordered(specs, items, outcome)


# -- the thorough run (marked slow: CI runs it; `-m "not slow"` skips it) ---------------

THOROUGH = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@THOROUGH
@given(
    specs=pipelines(),
    items=inputs,
    kind=input_kinds,
    mode=st.sampled_from(["ordered", "as_completed"]),
)
def test_thorough_random_pipelines_match_the_reference(
    specs: list[StageSpec], items: list[int], kind: str, mode: str
) -> None:
    """Five times the examples of the properties above, both modes in one property."""
    if mode == "ordered":
        outcome = run_virtual(specs, items, mode=mode, kind=kind, window=100_000)
        check_ordered(specs, items, outcome)
        check_batch_sizes(specs, outcome)
    elif all(s.elementwise for s in specs):  # batches cannot change results: a multiset
        outcome = run_virtual(specs, items, mode=mode, kind=kind, window=100_000)
        check_as_completed(specs, items, outcome)
        check_batch_sizes(specs, outcome)


@MODEL_SETTINGS
@given(
    # (No expansions: open generators' own items may hold the window genuinely.)
    singles=st.lists(
        stage_specs(failures=False).filter(lambda s: s.op in ("add", "mul", "filter")),
        max_size=3,
    ),
    batch=stage_specs(failures=False).filter(lambda s: s.batch),
    items=inputs,
    kind=input_kinds,
    extra=st.integers(1, 8),
    mode=st.sampled_from(["ordered", "as_completed"]),
)
def test_batches_are_short_only_as_the_remainder_when_the_window_has_room(
    singles: list[StageSpec], batch: StageSpec, items: list[int], kind: str, extra: int, mode: str
) -> None:
    """A window larger than the batch never cuts it short when nothing else holds the
    window: results waiting for the consumer make room when taken (this once gave 22
    batches of max_size=5 instead of 20)."""
    specs = [*singles, batch]
    outcome = run_virtual(specs, items, mode=mode, kind=kind, window=batch.max_size + extra)
    check_clean(outcome)
    check_batch_sizes(specs, outcome)
