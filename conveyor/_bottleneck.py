"""The bottleneck rule: what limits a run, read from its statistics' figures.

``RunStats.bottleneck`` (``conveyor.stats``, whose docstring states the rule for users)
asks :func:`bottleneck_of`; this module reads the figures through the protocols below,
so that it imports nothing of ``conveyor.stats``. Each verdict names where (a stage, the
``"event loop"``, the ``"consumer"`` or the ``"input"``), why, and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ._engine._loop import LOOP_FIX
from ._engine._stats import TICK
from ._mermaid import seconds

MIN_SAMPLES = 5
MOST = 0.5
BLOCKING_STEP = 1e-4
"""A stage whose code holds the event loop this long at a time (seconds: the mean step of
its timed calls) and most of the run blocks it; shorter steps that hold it most of the
run saturate it instead (many cheap steps: a thread would not help them)."""
LONG_LAG = 0.05
"""A timer this late (seconds) shows the loop was held: then fewer than 5 timed calls are
enough to name the stage that held it."""

Verdict = tuple[str, str, float]
"""Where, why (with the fix), and the share of the run it stands for."""


class Timed(Protocol):
    @property
    def samples(self) -> int: ...


class StageFigures(Protocol):
    """What the rule reads of a stage (``conveyor.stats.StageStats``)."""

    @property
    def name(self) -> str: ...
    @property
    def limit(self) -> int | None: ...
    @property
    def concurrency_limit_now(self) -> int | None: ...
    @property
    def pool_size(self) -> int | None: ...
    @property
    def executor(self) -> str: ...
    @property
    def rate_limit(self) -> str | None: ...
    @property
    def latency(self) -> Timed: ...
    @property
    def at_limit_share(self) -> float | None: ...
    @property
    def window_capped_share(self) -> float | None: ...
    @property
    def busy_share(self) -> float | None: ...
    @property
    def loop_seconds(self) -> float: ...
    @property
    def loop_share(self) -> float | None: ...
    @property
    def loop_call_seconds(self) -> float | None: ...
    @property
    def loop_step_seconds(self) -> float | None: ...


class RunFigures(Protocol):
    """What the rule reads of a run (``conveyor.stats.RunStats``)."""

    @property
    def stages(self) -> Sequence[StageFigures]: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def samples(self) -> int: ...
    @property
    def max_in_flight(self) -> int | None: ...
    @property
    def consumer_slow_share(self) -> float | None: ...
    @property
    def starved_share(self) -> float | None: ...
    @property
    def loop_lag_share(self) -> float | None: ...
    @property
    def loop_lag_max(self) -> float: ...


def bottleneck_of(stats: RunFigures) -> Verdict | None:
    """What limits the run (see the rule in ``conveyor.stats``'s docstring)."""
    if not stats.stages:
        return None
    if stats.elapsed >= MIN_SAMPLES * TICK:  # (ticks run late on a blocked loop)
        loop = _loop_bottleneck(stats)
        if loop is not None:
            return loop
    if stats.samples < MIN_SAMPLES:
        return None
    full = max(stats.stages, key=_at_limit)
    share = _at_limit(full)
    if share >= MOST and full.rate_limit is not None:
        return (
            full.name,
            f"waiting for its rate limit ({full.rate_limit}) or a slot "
            f"{share:.0%} of the time: raise the limit if the service allows",
            share,
        )
    if share >= MOST and (full.window_capped_share or 0.0) > (full.at_limit_share or 0.0):
        window = "" if stats.max_in_flight is None else f"={stats.max_in_flight:,}"
        limit = "" if full.limit is None else f"; its concurrency_limit of {full.limit:,}"
        limit += " is never reached" if limit else ""
        return (
            full.name,
            f"at the window's limit (max_in_flight{window} items in flight{limit}) "
            f"{share:.0%} of the time: raise PipelineContext(max_in_flight=...) "
            f"to let more of its calls run at once",
            share,
        )
    if share >= MOST:
        return full.name, _at_its_limit(full, share), share
    slow = stats.consumer_slow_share or 0.0
    if slow >= MOST:
        return (
            "consumer",
            f"results waited to be taken {slow:.0%} of the time: "
            f"the code reading the stream is slower than the pipeline",
            slow,
        )
    starved = stats.starved_share or 0.0
    if starved >= MOST:
        return (
            "input",
            f"no stage had work {starved:.0%} of the time: the pipeline waits for its input",
            starved,
        )
    busiest = max(stats.stages, key=lambda s: s.busy_share or 0.0)
    busy = busiest.busy_share or 0.0
    return busiest.name, f"the busiest stage: a call in flight {busy:.0%} of the time", busy


def _loop_bottleneck(stats: RunFigures) -> Verdict | None:
    """The first rules: a stage that blocks the event loop, or the loop saturated."""
    # Only a stage whose calls run on the loop: one that sends them off holds it only to
    # hand them over (its workers starting, say), which no executor= would change.
    on_loop = [s for s in stats.stages if s.executor == "inline"]
    holder = max(on_loop, key=lambda s: s.loop_share or 0.0, default=None)
    held = 0.0 if holder is None else holder.loop_share or 0.0
    if (
        holder is not None
        and held >= MOST
        and (holder.loop_step_seconds or 0.0) >= BLOCKING_STEP
        and (holder.latency.samples >= MIN_SAMPLES or stats.loop_lag_max >= LONG_LAG)
    ):
        return (
            holder.name,
            f"holds the event loop {held:.0%} of the time ({seconds(holder.loop_call_seconds or 0)}"
            f" a call; its code runs on the loop, so every other stage waits for it): "
            f"{LOOP_FIX}",
            held,
        )
    lag = stats.loop_lag_share or 0.0
    total = _total_loop_share(stats)
    if lag >= MOST or (lag >= MOST / 2 and total >= MOST):
        most = (
            ""
            if holder is None
            else f" ({holder.name} the most, in steps of {seconds(holder.loop_step_seconds or 0)})"
        )
        return (
            "event loop",
            f"saturated: its timers ran late {lag:.0%} of the time; the stages' code "
            f"held it about {total:.0%}{most}, the engine's work on the items in "
            f"flight the rest: lower max_in_flight, or do more in each step",
            lag,
        )
    return None


def _at_limit(stage: StageFigures) -> float:
    """The share of the run a stage was at a limit: its own, or the window's."""
    return max(stage.at_limit_share or 0.0, stage.window_capped_share or 0.0)


def _at_its_limit(stage: StageFigures, share: float) -> str:
    """Why a stage at its own limit is the bottleneck: its concurrency limit, or its
    thread pool's size when that is the smaller, and the fix for each."""
    pool = stage.pool_size
    if pool is not None and (stage.limit is None or pool < stage.limit):
        return (
            f"at its limit ({pool} at once: its thread pool's size) {share:.0%} of the "
            f'time: a larger pool (executor="thread:N") or faster calls'
        )
    if stage.concurrency_limit_now is not None:
        return (
            f"at its adaptive limit ({stage.concurrency_limit_now} at once, tuned to the "
            f"service's latency and errors) {share:.0%} of the time: the service it calls "
            f"is the bottleneck; more at once would queue there or be refused"
        )
    limit = "its concurrency limit" if stage.limit is None else f"{stage.limit} at once"
    return (
        f"at its limit ({limit}) {share:.0%} of the time: raise its "
        f"concurrency_limit or make its calls faster"
    )


def _total_loop_share(stats: RunFigures) -> float:
    """The share of the run the stages' code held the event loop, all together."""
    held = sum(s.loop_seconds for s in stats.stages)
    return min(1.0, held / stats.elapsed) if stats.elapsed > 0 else 0.0
