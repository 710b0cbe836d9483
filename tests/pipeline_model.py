"""Random pipelines and the plain sequential reference they are checked against.

A pipeline is a list of :class:`StageSpec`. :func:`build` makes real conveyor tasks from
it; :func:`reference` computes, with plain loops over lists, what an ordered run must
yield. Failures are represented as ``("FAIL", item, task_name)`` (an emitted Failure) and
``RAISE`` (the run must raise).

Composition (:class:`BranchSpec`): ``conveyor.parallel`` and ``conveyor.route`` stages
whose branches are short random pipelines of the model's own stages, modelled per item
from ``conveyor._engine._branch``'s rules (a branch's result: None, one, or the list of
them; a Failure of any branch is the item's, the first branch's first; route's results
in order); ``reference(paired=True)`` pairs each result with the input item(s) it
descends from, as ``pipeline.with_items()`` does.

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
    specs: list[Any],
    items: list[int],
    *,
    per_item: bool = False,
    counts: list[Counts] | None = None,
    window: int = 1000,
    prefix: str = "s",
    paired: bool = False,
) -> list[Any]:
    """What an ordered run yields, computed stage by stage over whole lists.

    With ``per_item``, a failing element-wise batch under ``on_error="fail"`` fails only
    its poison items: the bound for runs whose batch composition is not fixed (as-completed
    runs). ``counts``, if given, receives each stage's :class:`Counts`. ``window`` is the
    run's ``max_in_flight``: at most that many failure records wait behind an open batch
    of an ordered run (one more sends the batch off). Stages are named ``prefix`` and
    their index. ``specs`` may hold :class:`BranchSpec` stages (their branches' stages'
    counts follow theirs). ``paired``: what a ``with_items()`` run yields, each result
    paired with the input item it descends from (a batch's result: the list of its
    items' input items, each once, in order).
    """
    window = max(window, sum(s.max_size for s in flat(specs) if s.batch))  # (raised to fit)
    stream: list[Any] = list(items)
    # Beside each item: the input item it descends from (its place in ``items``), or
    # the input items a batch's result descends from (a tuple of places).
    tags: list[Any] = list(range(len(items)))
    for index, s in enumerate(specs):
        name = f"{prefix}{index}"
        out: list[Any] = []
        out_tags: list[Any] = []
        c = Counts(items_in=len(stream))
        if isinstance(s, BranchSpec):
            inner = [Counts() for _ in s.stages()]
            for x, tag in zip(stream, tags, strict=True):
                if _is_marker(x):
                    made = [x]  # (a Failure passes the stage untouched)
                else:
                    made, counted = _branch_item(s, x, name)
                    inner = [_add(a, b) for a, b in zip(inner, counted, strict=True)]
                    c.dropped += not made
                out += made
                out_tags += [tag] * len(made)
            c.items_out = sum(1 for x in out if x != RAISE)
            if counts is not None:
                counts += [c, *inner]
            stream, tags = out, out_tags
            continue
        if not s.batch:
            for x, tag in zip(stream, tags, strict=True):
                if _is_marker(x):
                    out.append(x)
                    out_tags.append(tag)
                    continue
                if not s.fails(x):
                    values = _single_outputs(s, x)
                    out += values
                    out_tags += [tag] * len(values)
                    c.dropped += not values
                    continue
                if s.op in ("gen", "agen"):  # values before the error stay; no retries
                    done = _gen_failure(s, x)
                    out += _single_outputs(s, x)[:done]
                    out_tags += [tag] * done
                    where: Any = f"<output {done} of a generator>"
                else:
                    where = x
                    c.retried += s.retries - 1
                if s.policy == "emit":
                    out.append(("FAIL", where, name))
                    out_tags.append(tag)
                    c.emitted += 1
                elif s.policy == "fail":
                    out.append(RAISE)
                    out_tags.append(tag)
                    c.failed += 1
                else:
                    c.skipped += 1
        elif s.keys:
            out, out_tags = _keyed_batches(s, stream, tags, name, per_item, c, window)
        else:
            # A failure record that arrives while a batch accumulates comes after that
            # batch's outputs: where its item's result would be.
            acc: list[int] = []
            acc_tags: list[Any] = []
            held: list[Any] = []
            held_tags: list[Any] = []

            def flush(acc: list[int], acc_tags: list[Any]) -> None:
                made = _flush(s, acc, name, per_item, c)  # noqa: B023
                out.extend(made)  # noqa: B023
                out_tags.extend([_merged(acc_tags)] * len(made))  # noqa: B023

            for x, tag in zip(stream, tags, strict=True):
                if _is_marker(x):
                    if acc and len(held) == window:  # as many wait as the window holds
                        flush(acc, acc_tags)
                        out += held
                        out_tags += held_tags
                        acc, acc_tags, held, held_tags = [], [], [], []
                    if acc:
                        held.append(x)
                        held_tags.append(tag)
                    else:
                        out.append(x)
                        out_tags.append(tag)
                    continue
                acc.append(x)
                acc_tags.append(tag)
                if len(acc) == s.max_size:
                    flush(acc, acc_tags)
                    out += held
                    out_tags += held_tags
                    acc, acc_tags, held, held_tags = [], [], [], []
            if acc and len(acc) >= s.min_size:
                flush(acc, acc_tags)
            else:
                c.remainder_dropped = len(acc)
            out += held
            out_tags += held_tags
        c.items_out = sum(1 for x in out if x != RAISE)
        if counts is not None:
            counts.append(c)
        stream, tags = out, out_tags
    if not paired:
        return stream
    return [
        value
        if value == RAISE
        else (items[tag] if isinstance(tag, int) else [items[i] for i in tag], value)
        for value, tag in zip(stream, tags, strict=True)
    ]


def _merged(tags: list[Any]) -> tuple[int, ...]:
    """The input items a batch's result descends from: its items' (``tags``), each
    once, in order."""
    return tuple(
        dict.fromkeys(
            i for tag in tags for i in ((tag,) if isinstance(tag, int) or tag is None else tag)
        )
    )


def _keyed_batches(
    s: StageSpec,
    stream: list[Any],
    tags: list[Any],
    name: str,
    per_item: bool,
    c: Counts,
    window: int,
) -> tuple[list[Any], list[Any]]:
    """A keyed batch stage (see ``conveyor._engine._batch``): one open batch per key
    ``x % s.keys``, each with its place in the output from its first item; at most
    ``max_keys`` open, the least recently fed flushed first (whatever its size); a
    failure record comes after every open batch, and at most ``window`` of them are
    counted behind the oldest (one more sends it off); the remainder rule per key.
    (The run's stall rule, which flushes the least recently fed batch when the window
    is full, depends on timing: the model runs with windows that never fill.) Each
    output with its tag (see :func:`reference`): a batch's result, its items' merged."""
    places: list[list[Any]] = []  # the output, place by place: (value, tag) pairs
    # key: (items, their tags, place)
    lru: OrderedDict[int, tuple[list[int], list[Any], list[Any]]] = OrderedDict()
    opened: dict[int, None] = {}  # the open keys, in the order they opened
    held = 0

    def flush(key: int) -> None:
        nonlocal held
        acc, acc_tags, place = lru.pop(key)
        if next(iter(opened)) == key:
            held = 0
        del opened[key]
        merged = _merged(acc_tags)
        place += [(value, merged) for value in _flush(s, acc, name, per_item, c)]

    for x, tag in zip(stream, tags, strict=True):
        if _is_marker(x):
            if opened:
                if held == window:
                    flush(next(iter(opened)))
                if opened:
                    held += 1
            places.append([(x, tag)])
            continue
        key = x % s.keys
        if key in lru:
            lru.move_to_end(key)
        else:
            if len(lru) == (s.max_keys or 1024):
                flush(next(iter(lru)))
            lru[key] = ([], [], [])
            opened[key] = None
            places.append(lru[key][2])
        acc, acc_tags, _ = lru[key]
        acc.append(x)
        acc_tags.append(tag)
        if len(acc) == s.max_size:
            flush(key)
    for key in list(opened):
        acc = lru[key][0]
        if len(acc) >= s.min_size:
            flush(key)
        else:
            c.remainder_dropped += len(acc)
            del lru[key], opened[key]
    pairs = [pair for place in places for pair in place]
    return [value for value, _ in pairs], [tag for _, tag in pairs]


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


def on_real_clock(specs: list[Any]) -> bool:
    """Whether a pipeline runs work off the loop: then it must run on a real clock."""
    return any(s.executor != "inline" for s in flat(specs))


REAL_SCALE = 0.01
"""Delays on a real clock: 0-15 ms instead of 0-1.5 virtual seconds."""


def build(
    specs: list[Any], prefix: str = "s", scale: float | None = None
) -> conveyor.Pipeline[Any, Any]:
    if scale is None:
        scale = REAL_SCALE if on_real_clock(specs) else 1.0
    pipeline: conveyor.Pipeline[Any, Any] = conveyor.Pipeline()
    for index, s in enumerate(specs):
        if isinstance(s, BranchSpec):
            pipeline = pipeline | _branch_task(f"{prefix}{index}", s, scale)
        else:
            pipeline = pipeline | _task(index, s, scale, prefix)
    return pipeline


def _branch_task(name: str, s: BranchSpec, scale: float) -> conveyor.BaseTask[Any, Any]:
    lines = [
        build(list(line), prefix=f"{name}b{index}s", scale=scale)
        for index, line in enumerate(s.branches)
    ]
    if s.kind == "parallel":

        def combine(item: int, *results: Any) -> int:
            return _combined(item, list(results), s.weighted)

        return conveyor.parallel(*lines, combine=combine if s.combine else None, name=name)
    n = s.n
    routes = {value: lines[i] for value, i in enumerate(s.routes) if i is not None}
    default = None if s.default is None else lines[s.default]
    return conveyor.route(lambda x: x % n, routes, default, name=name)


def _task(index: int, s: StageSpec, scale: float, prefix: str = "s") -> conveyor.BaseTask[Any, Any]:
    options: dict[str, Any] = {
        "task_name": f"{prefix}{index}",
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


# -- composition: parallel and route stages, and results paired with their items ------------


@dataclasses.dataclass(frozen=True)
class BranchSpec:
    """A ``conveyor.parallel`` or ``conveyor.route`` stage of the model.

    ``branches``: each a short pipeline of the model's own stages (element-wise batches
    only: which items share a batch in a branch is not fixed). ``route``: an item goes
    to the branch of ``routes[item % n]`` (a branch index), or to ``default`` (a branch
    index; ``None``: the item goes on unchanged). ``parallel``: ``combine`` makes the
    item's result an int (the item plus each branch's result: 0 if None; if a list, its
    sum, or with ``weighted`` each element times its place, so that the order of a
    branch's results counts: ordered runs only); without it the tuple of the branches'
    results goes on (the last stage only).
    """

    kind: str  # parallel route
    branches: tuple[tuple[StageSpec, ...], ...]
    n: int = 1
    routes: tuple[int | None, ...] = ()  # route: the branch of each value of item % n
    default: int | None = None
    combine: bool = True
    weighted: bool = False
    policy: str = "fail"  # the stage's own (nothing it calls raises here)

    batch = False
    max_size = 1
    fail_mod = None

    @property
    def executor(self) -> str:
        """ "inline", unless a branch's stage runs elsewhere (then on a real clock)."""
        inner = {s.executor for line in self.branches for s in line}
        return "inline" if inner <= {"inline"} else "branches"

    @property
    def elementwise(self) -> bool:
        return all(s.elementwise for line in self.branches for s in line)

    def stages(self) -> list[Any]:
        """The branches' stages, in the order the run's statistics list them (a branch
        stage in a branch: followed by its own branches' stages)."""
        return [one for i in self.lines() for one in rows(self.branches[i])]

    def lines(self) -> list[int]:
        """The branch runs, in the order the stage lists them (``route``: each branch
        once, in the order of its first value, then the default)."""
        if self.kind == "parallel":
            return list(range(len(self.branches)))
        order = list(dict.fromkeys(i for i in self.routes if i is not None))
        return order + ([] if self.default is None else [self.default])


Spec = StageSpec | BranchSpec


def rows(line: tuple[Any, ...]) -> list[Any]:
    """A branch's stages as the statistics list them: a branch stage in it followed by
    its own branches' stages."""
    out: list[Any] = []
    for s in line:
        out += [s, *s.stages()] if isinstance(s, BranchSpec) else [s]
    return out


def flat(specs: list[Any]) -> list[StageSpec]:
    """Every stage of ``specs``, those in branches too."""
    out: list[StageSpec] = []
    for s in specs:
        if isinstance(s, BranchSpec):
            for line in s.branches:
                out += flat(list(line))
        else:
            out.append(s)
    return out


@st.composite
def branch_specs(
    draw: st.DrawFn, *, last: bool = False, failures: bool = True, nested: bool = True
) -> BranchSpec:
    """A random parallel or route stage (``last``: it may be the pipeline's last, then
    parallel may give tuples; ``nested``: a branch may hold a branch stage, one time in
    eight)."""
    kind = draw(st.sampled_from(["parallel", "route"]))
    count = draw(st.integers(1 if kind == "route" else 2, 3))
    stage: st.SearchStrategy[Any] = _some_failing(failures, elementwise=True)
    if nested:
        inner = branch_specs(failures=failures, nested=False)
        stage = st.one_of(*[stage] * 7, inner)
    line = st.lists(stage, min_size=1, max_size=2)
    branches = tuple(tuple(draw(line)) for _ in range(count))
    if kind == "parallel":
        combine = True if not last else draw(st.booleans())
        return BranchSpec("parallel", branches, combine=combine, weighted=draw(st.booleans()))
    n = draw(st.integers(1, 4))
    routes = tuple(draw(st.sampled_from([None, *range(count)])) for _ in range(n))
    if all(i is None for i in routes):  # (route() takes at least one value's branch)
        routes = (0, *routes[1:])
    default = draw(st.sampled_from([None, *range(count)]))
    if default in routes:
        default = None  # (the same branch as a value's: the model keeps them apart)
    return BranchSpec("route", branches, n=n, routes=routes, default=default)


def _some_failing(failures: bool, **kwargs: Any) -> st.SearchStrategy[StageSpec]:
    """A stage that fails on some items one time in three (``failures``): composed
    pipelines have many stages, and most runs would fail or drop everything."""
    quiet = stage_specs(failures=False, **kwargs)
    return st.one_of(quiet, quiet, stage_specs(**kwargs)) if failures else quiet


def composed_pipelines(failures: bool = True) -> st.SearchStrategy[list[Any]]:
    """Random pipelines with a parallel or route stage somewhere (and maybe one last)."""
    kwargs = {"failures": failures}
    return st.tuples(
        st.lists(_some_failing(failures), max_size=2),
        branch_specs(**kwargs),
        st.lists(_some_failing(failures), max_size=2),
        st.one_of(st.none(), branch_specs(last=True, **kwargs)),
    ).map(lambda p: [*p[0], p[1], *p[2], *([] if p[3] is None else [p[3]])])


def _branch_result(made: list[Any]) -> Any:
    return None if not made else made[0] if len(made) == 1 else made


def _combined(x: int, results: list[Any], weighted: bool) -> int:
    total = x
    for result in results:
        if isinstance(result, list):
            total += sum((i + 1 if weighted else 1) * v for i, v in enumerate(result))
        elif result is not None:
            total += result
    return total


def unordered(specs: list[Any]) -> list[Any]:
    """``specs`` for an as-completed run: no ``combine`` that counts the order of a
    branch's results (it is the order they are made in)."""
    return [
        dataclasses.replace(
            s,
            weighted=False,
            branches=tuple(tuple(unordered(list(line))) for line in s.branches),
        )
        if isinstance(s, BranchSpec)
        else s
        for s in specs
    ]


def _branch_item(s: BranchSpec, x: int, name: str) -> tuple[list[Any], list[Counts]]:
    """What a branch stage makes of the item ``x`` (see ``conveyor._engine._branch``):
    each branch's results are its own model run over ``x`` alone (element-wise stages:
    the same as in a run of many items), joined; and the counts of the branches'
    stages, in the order the run's statistics list them."""
    counted = {i: [Counts() for _ in rows(s.branches[i])] for i in s.lines()}

    def through(index: int) -> list[Any]:
        made: list[Counts] = []
        result = reference(
            list(s.branches[index]), [x], per_item=True, counts=made, prefix=f"{name}b{index}s"
        )
        counted[index] = made
        return result

    if s.kind == "parallel":
        made = [through(index) for index in range(len(s.branches))]
        every = [value for one in made for value in one]
        if RAISE in every:
            out: list[Any] = [RAISE]
        else:
            failure = next((v for v in every if _is_marker(v)), None)
            if failure is not None:
                out = [failure]  # (the first branch's first Failure)
            else:
                results = [_branch_result(one) for one in made]
                out = [_combined(x, results, s.weighted) if s.combine else tuple(results)]
    else:
        index = s.routes[x % s.n]
        if index is None:
            index = s.default
        out = [x] if index is None else through(index)
    return out, [one for i in s.lines() for one in counted[i]]


def _add(a: Counts, b: Counts) -> Counts:
    return Counts(
        items_in=a.items_in + b.items_in,
        items_out=a.items_out + b.items_out,
        dropped=a.dropped + b.dropped,
        skipped=a.skipped + b.skipped,
        emitted=a.emitted + b.emitted,
        failed=a.failed + b.failed,
        retried=a.retried + b.retried,
        batches=a.batches + b.batches,
        remainder_dropped=a.remainder_dropped + b.remainder_dropped,
    )
