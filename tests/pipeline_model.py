"""Random pipelines and the plain sequential reference they are checked against.

A pipeline is a list of :class:`StageSpec`. :func:`build` makes real conveyor tasks from
it; :func:`reference` computes, with plain loops over lists, what an ordered run must
yield. Failures are represented as ``("FAIL", item, task_name)`` (an emitted Failure) and
``RAISE`` (the run must raise).

A plain-function stage runs on a random executor: inline, conveyor's threads, a user's
thread pool, or a user's process pool (chunked, pickled: its functions are instances of
module-level classes). The user's pools are shared by all examples (:func:`shut_down`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import multiprocessing
import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

import conveyor
from conveyor import Failure, batch_task, single_task

RAISE = ("RAISE",)


class Poison(ValueError):
    """Raised by a stage for the items it is set up to fail on."""


@dataclasses.dataclass(frozen=True)
class StageSpec:
    batch: bool
    op: str  # single: add mul filter list gen agen; batch: map sum
    k: int
    sync: bool
    delay: str  # none zero varied
    fail_mod: int | None
    policy: str  # fail skip_item emit skip_batch
    retries: int = 1
    max_size: int = 1
    min_size: int = 1
    concurrency: int | None = None
    # Never reached by the model's delays (at most 1.5 s): calls and generator items go
    # through the timeout path, and results must not change.
    timeout: float | None = None
    executor: str = "inline"  # for plain functions: inline thread pool process owned
    # Items on which the function kills its worker process (``executor="owned"``, a
    # process pool conveyor owns): they fail alone, as if they raised.
    kills: tuple[int, ...] = ()
    # A keyed batch stage (``key=``): one open batch per key ``x % keys`` (0: not keyed),
    # at most ``max_keys`` open (None: conveyor's default, never reached here).
    keys: int = 0
    max_keys: int | None = None

    def fails(self, x: int) -> bool:
        return (self.fail_mod is not None and x % self.fail_mod == 1) or x in self.kills

    @property
    def elementwise(self) -> bool:
        """Batch composition cannot change this stage's results (as-completed checks)."""
        if not self.batch:
            return True
        return self.op == "map" and self.min_size == 1 and self.policy in ("fail", "skip_item")


# -- strategies --------------------------------------------------------------------------


EXECUTORS = st.sampled_from(["inline", "inline", "thread", "pool", "process"])


@st.composite
def stage_specs(
    draw: st.DrawFn, *, failures: bool = True, elementwise: bool = False, keyed: bool = False
) -> StageSpec:
    batch = draw(st.booleans())
    fail_mod = draw(st.sampled_from([None, None, 3, 5, 7])) if failures else None
    delay = draw(st.sampled_from(["none", "zero", "varied"]))
    retries = draw(st.sampled_from([1, 1, 2]))
    if batch:
        max_size = draw(st.integers(1, 4))
        min_size = 1 if elementwise else draw(st.integers(1, max_size))
        policies = (
            ["fail", "skip_item"] if elementwise else ["fail", "skip_item", "skip_batch", "emit"]
        )
        return StageSpec(
            batch=True,
            op="map" if elementwise else draw(st.sampled_from(["map", "sum"])),
            k=draw(st.integers(0, 5)),
            sync=(sync := draw(st.booleans())),
            executor=draw(EXECUTORS) if sync else "inline",
            delay=delay,
            fail_mod=fail_mod,
            policy=draw(st.sampled_from(policies)),
            retries=retries,
            max_size=max_size,
            min_size=min_size,
            concurrency=draw(st.sampled_from([None, 1, 2])),
            timeout=draw(st.sampled_from([None, 1000.0])),
            keys=(keys := draw(st.sampled_from([0, 1, 2, 3, 3])) if keyed else 0),
            max_keys=draw(st.sampled_from([None, 1, 2, 2])) if keys else None,
        )
    op = draw(st.sampled_from(["add", "mul", "filter", "list", "gen", "agen"]))
    k = {
        "add": st.integers(0, 5),
        "mul": st.integers(1, 3),
        "filter": st.integers(2, 4),
        "list": st.integers(0, 3),
        "gen": st.integers(0, 3),
        "agen": st.integers(0, 3),
    }[op]
    return StageSpec(
        batch=False,
        op=op,
        k=draw(k),
        sync=(sync := draw(st.booleans())),
        executor=draw(EXECUTORS) if sync and op != "agen" else "inline",
        delay=delay,
        # A generator fails midway: after its first value (if it has one).
        fail_mod=fail_mod,
        policy=draw(st.sampled_from(["fail", "skip_item", "emit"])),
        retries=retries,
        concurrency=draw(st.sampled_from([None, None, 1, 3])),
        timeout=draw(st.sampled_from([None, 1000.0])),
    )


def pipelines(**kwargs: Any) -> st.SearchStrategy[list[StageSpec]]:
    return st.lists(stage_specs(**kwargs), min_size=1, max_size=5)


# -- the reference -----------------------------------------------------------------------


def _single_outputs(s: StageSpec, x: int) -> list[int]:
    if s.op == "add":
        return [x + s.k]
    if s.op == "mul":
        return [x * s.k]
    if s.op == "filter":
        return [] if x % s.k == 0 else [x]
    return [x + i for i in range(s.k)]  # list, gen, agen


def _batch_fn(s: StageSpec, batch: list[int]) -> list[int]:
    return [x + s.k for x in batch] if s.op == "map" else [sum(batch)]


def _isolate(s: StageSpec, batch: list[int]) -> list[int]:
    if len(batch) == 1:
        return [] if s.fails(batch[0]) else _batch_fn(s, batch)
    middle = len(batch) // 2
    out: list[int] = []
    for half in (batch[:middle], batch[middle:]):
        out += _isolate(s, half) if any(map(s.fails, half)) else _batch_fn(s, half)
    return out


def _batch_outputs(s: StageSpec, batch: list[int], name: str, per_item: bool) -> list[Any]:
    if not any(map(s.fails, batch)):
        return _batch_fn(s, batch)
    if s.policy == "fail":
        if per_item:  # which good items share a batch with a poison one is left open
            return [RAISE if s.fails(x) else x + s.k for x in batch]
        return [RAISE]
    if s.policy == "skip_batch":
        return []
    if s.policy == "emit":
        return [("FAIL", x, name) for x in batch]
    return _isolate(s, batch)


def _is_marker(x: Any) -> bool:
    return isinstance(x, tuple)


@dataclasses.dataclass
class Counts:
    """What the statistics must count for one stage (see ``conveyor.stats.StageStats``):
    every item that reaches a stage is accounted for by these."""

    items_in: int = 0
    items_out: int = 0
    dropped: int = 0
    skipped: int = 0
    emitted: int = 0
    failed: int = 0
    retried: int = 0
    batches: int = 0
    remainder_dropped: int = 0
    # The size of each batch (not a statistic: checked against the recorded calls)
    sizes: list[int] = dataclasses.field(default_factory=list, compare=False)


def _gen_failure(s: StageSpec, x: int) -> int:
    """How many values a failing generator yields before it raises."""
    return min(1, len(_single_outputs(s, x)))


def _flush(s: StageSpec, batch: list[int], name: str, per_item: bool, c: Counts) -> list[Any]:
    """A batch's outputs, counted."""
    c.batches += 1
    c.sizes.append(len(batch))
    if any(map(s.fails, batch)):
        c.retried += s.retries - 1
        if s.policy == "skip_item":
            c.skipped += sum(map(s.fails, batch))  # each poison item alone, once
        elif s.policy == "skip_batch":
            c.skipped += 1
        elif s.policy == "fail":
            c.failed += 1
        else:
            c.emitted += 1  # one call given up: a Failure per item
    return _batch_outputs(s, batch, name, per_item)


def reference(
    specs: list[StageSpec],
    items: list[int],
    *,
    per_item: bool = False,
    counts: list[Counts] | None = None,
    window: int = 1000,
) -> list[Any]:
    """What an ordered run yields, computed stage by stage over whole lists.

    With ``per_item``, a failing element-wise batch under ``on_error="fail"`` fails only
    its poison items: the bound for runs whose batch composition is not fixed (as-completed
    runs). ``counts``, if given, receives each stage's :class:`Counts`. ``window`` is the
    run's ``max_in_flight``: at most that many failure records wait behind an open batch
    of an ordered run (one more sends the batch off).
    """
    window = max(window, sum(s.max_size for s in specs if s.batch))  # (raised to fit)
    stream: list[Any] = list(items)
    for index, s in enumerate(specs):
        name = f"s{index}"
        out: list[Any] = []
        c = Counts(items_in=len(stream))
        if not s.batch:
            for x in stream:
                if _is_marker(x):
                    out.append(x)
                    continue
                if not s.fails(x):
                    values = _single_outputs(s, x)
                    out += values
                    c.dropped += not values
                    continue
                if s.op in ("gen", "agen"):  # values before the error stay; no retries
                    done = _gen_failure(s, x)
                    out += _single_outputs(s, x)[:done]
                    where: Any = f"<output {done} of a generator>"
                else:
                    where = x
                    c.retried += s.retries - 1
                if s.policy == "emit":
                    out.append(("FAIL", where, name))
                    c.emitted += 1
                elif s.policy == "fail":
                    out.append(RAISE)
                    c.failed += 1
                else:
                    c.skipped += 1
        elif s.keys:
            out = _keyed_batches(s, stream, name, per_item, c, window)
        else:
            # A failure record that arrives while a batch accumulates comes after that
            # batch's outputs: where its item's result would be.
            acc: list[int] = []
            held: list[Any] = []

            for x in stream:
                if _is_marker(x):
                    if acc and len(held) == window:  # as many wait as the window holds
                        out += _flush(s, acc, name, per_item, c) + held
                        acc, held = [], []
                    (held if acc else out).append(x)
                    continue
                acc.append(x)
                if len(acc) == s.max_size:
                    out += _flush(s, acc, name, per_item, c) + held
                    acc, held = [], []
            if acc and len(acc) >= s.min_size:
                out += _flush(s, acc, name, per_item, c)
            else:
                c.remainder_dropped = len(acc)
            out += held
        c.items_out = sum(1 for x in out if x != RAISE)
        if counts is not None:
            counts.append(c)
        stream = out
    return stream


def _keyed_batches(
    s: StageSpec, stream: list[Any], name: str, per_item: bool, c: Counts, window: int
) -> list[Any]:
    """A keyed batch stage (see ``conveyor._engine._batch``): one open batch per key
    ``x % s.keys``, each with its place in the output from its first item; at most
    ``max_keys`` open, the least recently fed flushed first (whatever its size); a
    failure record comes after every open batch, and at most ``window`` of them are
    counted behind the oldest (one more sends it off); the remainder rule per key.
    (The run's stall rule, which flushes the least recently fed batch when the window
    is full, depends on timing: the model runs with windows that never fill.)"""
    places: list[list[Any]] = []  # the output, place by place
    lru: OrderedDict[int, tuple[list[int], list[Any]]] = OrderedDict()  # key: (items, place)
    opened: dict[int, None] = {}  # the open keys, in the order they opened
    held = 0

    def flush(key: int) -> None:
        nonlocal held
        acc, place = lru.pop(key)
        if next(iter(opened)) == key:
            held = 0
        del opened[key]
        place += _flush(s, acc, name, per_item, c)

    for x in stream:
        if _is_marker(x):
            if opened:
                if held == window:
                    flush(next(iter(opened)))
                if opened:
                    held += 1
            places.append([x])
            continue
        key = x % s.keys
        if key in lru:
            lru.move_to_end(key)
        else:
            if len(lru) == (s.max_keys or 1024):
                flush(next(iter(lru)))
            lru[key] = ([], [])
            opened[key] = None
            places.append(lru[key][1])
        acc = lru[key][0]
        acc.append(x)
        if len(acc) == s.max_size:
            flush(key)
    for key in list(opened):
        acc = lru[key][0]
        if len(acc) >= s.min_size:
            flush(key)
        else:
            c.remainder_dropped += len(acc)
            del lru[key], opened[key]
    return [x for place in places for x in place]


def observed(value: Any) -> Any:
    """An engine result in the reference's vocabulary."""
    if isinstance(value, Failure):
        return ("FAIL", value.item, value.task_name)
    return value


# -- building real tasks -----------------------------------------------------------------


def _delay(s: StageSpec, x: int, scale: float = 1.0) -> float | None:
    if s.delay == "none":
        return None
    if s.delay == "zero":
        return 0.0
    return ((x * 7 + s.k * 3) % 4) * 0.5 * scale


def on_real_clock(specs: list[StageSpec]) -> bool:
    """Whether a pipeline runs work off the loop: then it must run on a real clock."""
    return any(s.executor != "inline" for s in specs)


REAL_SCALE = 0.01
"""Delays on a real clock: 0-15 ms instead of 0-1.5 virtual seconds."""


def build(specs: list[StageSpec]) -> conveyor.Pipeline[Any, Any]:
    scale = REAL_SCALE if on_real_clock(specs) else 1.0
    pipeline: conveyor.Pipeline[Any, Any] = conveyor.Pipeline()
    for index, s in enumerate(specs):
        pipeline = pipeline | _task(index, s, scale)
    return pipeline


def _task(index: int, s: StageSpec, scale: float) -> conveyor.BaseTask[Any, Any]:
    options: dict[str, Any] = {
        "task_name": f"s{index}",
        "on_error": s.policy,
        "retry_attempts": s.retries,
        "retry_delay": 0.25 * scale,
        "concurrency_limit": s.concurrency,
        "timeout": s.timeout,
    }
    if s.executor != "inline":
        options["executor"] = _executor(s.executor)
    if s.batch:
        return _batch_task(s, options, scale)
    return _single_task(s, options, scale)


_POOLS: dict[str, concurrent.futures.Executor] = {}


def _executor(name: str) -> Any:
    """A user's pool, shared by the examples, or conveyor's ``"thread:4"``."""
    if name == "thread":
        return "thread:4"
    if name == "owned":  # (a pool of the run's own: a worker that dies is replaced)
        return "process:2"
    if name not in _POOLS:
        _POOLS[name] = (
            concurrent.futures.ThreadPoolExecutor(4)
            if name == "pool"
            else concurrent.futures.ProcessPoolExecutor(2)
        )
    return _POOLS[name]


def shut_down() -> None:
    """Close the user's pools the examples shared (conveyor never closes them)."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown(wait=True)


@dataclasses.dataclass(frozen=True)
class SingleCall:
    """A plain single stage's function (an instance of a module-level class: it pickles)."""

    s: StageSpec

    def __call__(self, x: int) -> Any:
        if x in self.s.kills:
            assert multiprocessing.parent_process() is not None  # (never the tests' own)
            os._exit(1)
        if self.s.fails(x):
            raise Poison(x)
        values = _single_outputs(self.s, x)
        if self.s.op == "list":
            return values
        return values[0] if values else None


@dataclasses.dataclass(frozen=True)
class GenCall:
    s: StageSpec

    def __call__(self, x: int) -> Iterator[int]:
        values = _single_outputs(self.s, x)
        if self.s.fails(x):
            yield from values[: _gen_failure(self.s, x)]
            raise Poison(x)
        yield from values


def _single_task(
    s: StageSpec, options: dict[str, Any], scale: float
) -> conveyor.BaseTask[Any, Any]:
    outputs = SingleCall(s)
    if s.op == "gen":
        return single_task(**options)(GenCall(s))
    if s.op == "agen":

        async def agen(x: int) -> Any:
            values = _single_outputs(s, x)
            for value in values[: _gen_failure(s, x)] if s.fails(x) else values:
                delay = _delay(s, value, scale)
                if delay is not None:
                    await asyncio.sleep(delay)
                yield value
            if s.fails(x):
                raise Poison(x)

        return single_task(**options)(agen)
    if s.sync:
        return single_task(**options)(outputs)

    async def call(x: int) -> Any:
        delay = _delay(s, x, scale)
        if delay is not None:
            await asyncio.sleep(delay)
        return outputs(x)

    return single_task(**options)(call)


BATCH_SIZES: dict[str, list[int]] = {}
"""The size of every batch each batch stage that never fails was called with (a stage
that may fail also sees isolation's halves), by task name: cleared before each run."""


@dataclasses.dataclass(frozen=True)
class KeyOf:
    """A keyed batch stage's key function: ``x % n``."""

    n: int

    def __call__(self, x: int) -> int:
        return x % self.n


@dataclasses.dataclass(frozen=True)
class BatchCall:
    """A plain batch stage's function (on a process pool, batch sizes are not recorded)."""

    s: StageSpec
    name: str

    def __call__(self, batch: list[int]) -> Any:
        self.record(batch)
        return self.compute(batch)

    def record(self, batch: list[int]) -> None:
        if self.s.fail_mod is None:
            BATCH_SIZES.setdefault(self.name, []).append(len(batch))

    def compute(self, batch: list[int]) -> Any:
        if any(map(self.s.fails, batch)):
            raise Poison(batch)
        values = _batch_fn(self.s, batch)
        return values if self.s.op == "map" else values[0]


def _batch_task(s: StageSpec, options: dict[str, Any], scale: float) -> conveyor.BaseTask[Any, Any]:
    outputs = BatchCall(s, options["task_name"])
    if s.keys:
        options["key"] = KeyOf(s.keys)
        options["max_keys"] = s.max_keys
    decorate = batch_task(max_size=s.max_size, min_size=s.min_size, **options)
    if s.sync:
        return decorate(outputs)

    async def call(batch: list[int]) -> Any:
        outputs.record(batch)  # (as the call starts: calls start in the order of batches)
        delay = _delay(s, sum(batch), scale)
        if delay is not None:
            await asyncio.sleep(delay)
        return outputs.compute(batch)

    return decorate(call)
