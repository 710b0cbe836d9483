"""The executors group: a task's calls sent off the event loop, against the usual ways.

``python -m benchmarks --only executors`` (``--update`` replaces only this group's table
in the results file). Each scenario runs conveyor and its baselines interleaved, in the
same process, and takes ratios repetition by repetition (``paired_ratio``):

1. **cpu**: pure-Python arithmetic of ~1 ms per item, 5k items. ``executor="process"``
   (chunk sizes measured by conveyor) against a plain loop, the best of
   ``ProcessPoolExecutor.map(chunksize=c)`` over several ``c``, mpire's ``imap`` and
   joblib's ``Parallel(return_as="generator")``, each with as many workers as cores.
   Every contender creates its pool inside its timed region and closes it there, so
   pool start-up is counted alike for all.
2. **tiny**: ~5 µs items, 200k of them: ``executor="process"`` and ``executor="auto"``
   against inline (``auto`` should keep them inline).
3. **blocking**: ``time.sleep(0.01)`` per item, 2k items: ``executor="thread:64"`` against
   ``ThreadPoolExecutor(64).map``, and inline (timed on 100 items, extrapolated).
4. **dask**: the cpu work on a ``LocalCluster`` (one single-threaded worker process per
   core), ``executor=client`` against ``client.map`` + ``client.gather``. The cluster is
   started once, outside the timed regions.
5. **cost/item**: a trivial function (identity) on each executor at two run sizes: the
   slope is the cost per item, the intercept the fixed cost of a run (pools included).

The functions sent to workers live in :mod:`benchmarks.executor_work` (pickled by name).
The chunk sizes conveyor chose are read from its DEBUG log (``chunk size N``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib.util
import logging
import multiprocessing
import os
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from conveyor import single_task

from . import executor_work as work
from .common import (
    Config,
    Row,
    drain,
    expect,
    fmt_int,
    fmt_rate,
    interleaved_samples,
    paired_ratio,
    run_on,
)

GROUP = "executors"

CPU_SECONDS = 1e-3
TINY_SECONDS = 5e-6
THREADS = 64

CPU_VS_INLINE = 1.8
CPU_VS_BEST_MAP = 0.9
CPU_VS_MPIRE = 1.0
TINY_PROCESS_VS_INLINE = 2.0
SLEEP_VS_INLINE = 40.0
SLEEP_VS_MAP = 1.0

START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
"""The start method of conveyor's process pools, given to the ProcessPoolExecutor baseline
too: the comparison is of chunking and hand-off, not of start methods."""

Async = Callable[[], Awaitable[None]]


def cores() -> int:
    """Cores this process may use (as conveyor counts them for ``executor="process"``)."""
    return getattr(os, "process_cpu_count", os.cpu_count)() or 1


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# -- contenders ----------------------------------------------------------------------------


def _stream(task: Any, items: Sequence[Any], who: str = "conveyor") -> Async:
    """A conveyor run over ``items``, drained."""

    async def run() -> None:
        expect(await drain(task(items)), len(items), who)

    return run


def _blocking(fn: Callable[[], int], n: int, who: str) -> Async:
    """A synchronous baseline (it blocks the loop, which has nothing else to do)."""

    async def run() -> None:
        expect(fn(), n, who)

    return run


def _plain_loop(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
    count = 0
    for item in items:
        fn(item)
        count += 1
    return count


def _process_map(fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int) -> int:
    context = multiprocessing.get_context(START_METHOD)
    with concurrent.futures.ProcessPoolExecutor(cores(), mp_context=context) as pool:
        return sum(1 for _ in pool.map(fn, items, chunksize=chunksize))


def _thread_map(fn: Callable[[Any], Any], items: Sequence[Any], threads: int) -> int:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(1 for _ in pool.map(fn, items))


def _mpire_imap(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
    from mpire import WorkerPool

    # mpire's defaults: fork, and a chunk size of len(items) / (4 x workers)
    with WorkerPool(n_jobs=cores()) as pool:
        return sum(1 for _ in pool.imap(fn, items))


def _joblib_generator(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
    from joblib import Parallel, delayed

    try:
        parallel = Parallel(n_jobs=cores(), return_as="generator")
        return sum(1 for _ in parallel(delayed(fn)(item) for item in items))
    finally:
        _close_loky()


def _close_loky() -> None:
    """Shut joblib's worker processes down (loky keeps them for the next call): every
    contender starts and stops its pool inside its timed region."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True)


# -- what conveyor chose -------------------------------------------------------------------


class Choices(logging.Handler):
    """What conveyor chose, per run, from its log: the size of each chunk answered
    (``chunk of N answered``, DEBUG) and ``auto``'s choices (INFO, logged when the choice
    changes)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.chunks: list[list[int]] = []
        self.auto: list[list[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        args = record.args if isinstance(record.args, tuple) else ()
        if message.startswith("chunk of") and self.chunks and args:
            self.chunks[-1].append(int(args[0]))
        elif "executor 'auto' chose" in message and self.auto and len(args) > 1:
            self.auto[-1].append(str(args[1]))

    def runs(self, fn: Async) -> Async:
        """``fn``, logging each call as a run of its own."""

        async def run() -> None:
            self.chunks.append([])
            self.auto.append([])
            await fn()

        return run

    def last_chunks(self) -> list[int]:
        return next((run for run in reversed(self.chunks) if run), [])


@contextlib.contextmanager
def listening() -> Iterator[Choices]:
    logger = logging.getLogger("conveyor")
    handler, level = Choices(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def show_chunks(counts: list[int]) -> str:
    """The chunks of a run, in the order they were answered: the first few sizes, then
    the spread of the rest."""
    if not counts:
        return "chunk sizes: not logged (a conveyor without the 'chunk of N answered' log)"
    head = ", ".join(map(str, counts[:4]))
    if len(counts) <= 4:
        return f"{len(counts)} chunks of {head} items"
    rest = sorted(counts[4:])
    return (
        f"{len(counts)} chunks: {head}, then median {statistics.median(rest):g}"
        f" (min {rest[0]}, max {rest[-1]}) items"
    )


def auto_choice(task: Any, log: Choices) -> str:
    """What ``executor="auto"`` ran the task's calls on: its choices logged during the
    timed runs, else the latest recorded on the task (a choice is logged when it changes)."""
    logged = sorted({choice for run in log.auto for choice in run})
    return ", ".join(logged) or str(task.options.executor.choice)


# -- formatting ----------------------------------------------------------------------------


def med(samples: list[float]) -> float:
    return statistics.median(samples)


def secs(samples: list[float], n: int) -> str:
    value = med(samples)
    return f"{value:.2f} s ({fmt_rate(n / value)})"


# -- 1. cpu-bound --------------------------------------------------------------------------


def cpu(loop: str, cfg: Config) -> list[Row]:
    n = cfg.cpu_items
    loops = work.loops_for(CPU_SECONDS)
    fn = functools.partial(work.cpu_work, loops)
    items = list(range(n))
    warm = items[: 4 * cores()]
    task = single_task(executor="process", task_name="cpu_work")(fn)
    maps = {f"map {c}": c for c in cfg.cpu_chunksizes}
    libraries = {"mpire": _mpire_imap, "joblib": _joblib_generator}
    libraries = {name: f for name, f in libraries.items() if installed(name)}
    with listening() as log:
        contenders: dict[str, Async] = {
            "conveyor": log.runs(_stream(task, items)),
            "inline": _blocking(lambda: _plain_loop(fn, items), n, "plain loop"),
        }
        warmups: dict[str, Async] = {
            "conveyor": _stream(task, warm),
            "map": _blocking(lambda: _process_map(fn, warm, 1), len(warm), "map"),
        }
        for name, c in maps.items():
            contenders[name] = _blocking(functools.partial(_process_map, fn, items, c), n, name)
        for name, f in libraries.items():
            contenders[name] = _blocking(functools.partial(f, fn, items), n, name)
            warmups[name] = _blocking(functools.partial(f, fn, warm), len(warm), name)
        s = run_on(loop, interleaved_samples(contenders, cfg.reps, warmups))
    conv = s["conveyor"]
    best = min(maps, key=lambda name: med(s[name]))
    speedup = paired_ratio(s["inline"], conv)
    vs_best = paired_ratio(s[best], conv)
    per_item = med(s["inline"]) / n * 1e3
    baselines = [f"plain loop {secs(s['inline'], n)}"]
    baselines.append(
        f"best ProcessPoolExecutor.map: chunksize={maps[best]} {secs(s[best], n)} ["
        + ", ".join(f"c={c}: {med(s[name]):.2f} s" for name, c in maps.items())
        + "]"
    )
    ratios = [f"inline/conv {speedup:.2f}x", f"best-map/conv {vs_best:.2f}x"]
    checks = [vs_best >= CPU_VS_BEST_MAP]
    if cores() >= 2:
        checks.append(speedup >= CPU_VS_INLINE)
    for name, label in (("mpire", "mpire imap"), ("joblib", "joblib generator")):
        if name not in s:
            baselines.append(f"{label}: not installed")
            continue
        baselines.append(f"{label} {secs(s[name], n)}")
        ratio = paired_ratio(s[name], conv)
        ratios.append(f"{name}/conv {ratio:.2f}x")
        if name == "mpire":
            checks.append(ratio >= CPU_VS_MPIRE)
    return [
        Row(
            scenario=f"cpu ~{CPU_SECONDS * 1e3:g} ms x {fmt_int(n)}",
            loop=loop,
            metric=f"wall time, {cores()} workers, pool start-up included (work {per_item:.2f}"
            " ms/item inline)",
            conveyor=f"process: {secs(conv, n)}",
            floor="; ".join(baselines),
            ratio="; ".join(ratios),
            target=f">={CPU_VS_INLINE}x inline (2+ cores); >={CPU_VS_BEST_MAP}x best map;"
            f" >={CPU_VS_MPIRE:g}x mpire",
            met=all(checks),
            note=show_chunks(log.last_chunks()),
            group=GROUP,
        )
    ]


# -- 2. tiny items -------------------------------------------------------------------------


def tiny(loop: str, cfg: Config) -> list[Row]:
    n = cfg.tiny_items
    loops = work.loops_for(TINY_SECONDS)
    fn = functools.partial(work.cpu_work, loops)
    items = list(range(n))
    warm = items[:2_000]
    tasks = {
        executor: single_task(executor=executor, task_name="cpu_work")(fn)
        for executor in ("inline", "process", "auto")
    }
    with listening() as log:
        contenders: dict[str, Async] = {
            name: log.runs(_stream(task, items)) if name != "inline" else _stream(task, items)
            for name, task in tasks.items()
        }
        contenders["loop"] = _blocking(lambda: _plain_loop(fn, items), n, "plain loop")
        warmups = {name: _stream(task, warm) for name, task in tasks.items()}
        s = run_on(loop, interleaved_samples(contenders, cfg.reps, warmups))
    chosen = auto_choice(tasks["auto"], log)
    auto_inline = chosen == "inline"
    process = paired_ratio(s["process"], s["inline"])
    auto = paired_ratio(s["auto"], s["inline"])
    per_item = med(s["loop"]) / n * 1e6
    met_by = [
        *(["process within 2x"] if process <= TINY_PROCESS_VS_INLINE else []),
        *(["auto kept it inline"] if auto_inline else []),
    ]
    return [
        Row(
            scenario=f"tiny ~{TINY_SECONDS * 1e6:g} µs x {fmt_int(n)}",
            loop=loop,
            metric=f"wall time (work {per_item:.1f} µs/item in a plain loop; process: pool"
            " start-up included)",
            conveyor=f"process: {secs(s['process'], n)}; auto: {secs(s['auto'], n)}"
            f" (chose {chosen})",
            floor=f"conveyor inline {secs(s['inline'], n)}; plain loop {secs(s['loop'], n)}",
            ratio=f"process/inline time {process:.2f}x; auto/inline time {auto:.2f}x",
            target="process within 2x inline, or auto keeps it inline",
            met=bool(met_by),
            note=("met by: " + ", ".join(met_by) if met_by else "neither")
            + "; process: "
            + show_chunks(log.last_chunks()),
            group=GROUP,
        )
    ]


# -- 3. blocking calls ---------------------------------------------------------------------


def blocking(loop: str, cfg: Config) -> list[Row]:
    n, sample = cfg.sleep_items, cfg.sleep_inline_sample
    items = list(range(n))
    threads = single_task(executor=f"thread:{THREADS}")(work.sleep_item)
    inline = single_task(work.sleep_item)
    contenders: dict[str, Async] = {
        "conveyor": _stream(threads, items),
        "map": _blocking(lambda: _thread_map(work.sleep_item, items, THREADS), n, "map"),
        "inline": _stream(inline, items[:sample], "inline"),
    }
    warm = items[: 2 * THREADS]
    warmups: dict[str, Async] = {
        "conveyor": _stream(threads, warm),
        "map": _blocking(lambda: _thread_map(work.sleep_item, warm, THREADS), len(warm), "map"),
    }
    s = run_on(loop, interleaved_samples(contenders, cfg.reps, warmups))
    inline_all = [t * n / sample for t in s["inline"]]
    vs_inline = paired_ratio(inline_all, s["conveyor"])
    vs_map = paired_ratio(s["map"], s["conveyor"])
    ideal = n / THREADS * work.SLEEP
    return [
        Row(
            scenario=f"blocking sleep {work.SLEEP * 1e3:g} ms x {fmt_int(n)}",
            loop=loop,
            metric=f"wall time (ideal {ideal:.3f} s at {THREADS} threads)",
            conveyor=f"thread:{THREADS}: {secs(s['conveyor'], n)}",
            floor=f"ThreadPoolExecutor({THREADS}).map {secs(s['map'], n)}; inline"
            f" ~{med(inline_all):.1f} s (extrapolated from {sample} items:"
            f" {med(s['inline']):.2f} s)",
            ratio=f"inline/conv {vs_inline:.0f}x; map/conv {vs_map:.2f}x",
            target=f">={SLEEP_VS_INLINE:g}x inline; >= ThreadPoolExecutor.map",
            met=vs_inline >= SLEEP_VS_INLINE and vs_map >= SLEEP_VS_MAP,
            group=GROUP,
        )
    ]


# -- 4. dask -------------------------------------------------------------------------------


def dask_cpu(loop: str, cfg: Config, client: Any, startup: float) -> list[Row]:
    n = cfg.dask_items
    loops = work.loops_for(CPU_SECONDS)
    fn = functools.partial(work.cpu_work, loops)
    items = list(range(n))
    warm = items[: 4 * cores()]
    task = single_task(executor=client, task_name="cpu_work")(fn)

    def client_map(items: Sequence[int]) -> int:
        # pure=False: new keys every time, as conveyor's chunks have (with the default,
        # a repetition could be answered from the results of the one before)
        return len(client.gather(client.map(fn, items, pure=False)))

    with listening() as log:
        contenders: dict[str, Async] = {
            "conveyor": log.runs(_stream(task, items)),
            "map": _blocking(lambda: client_map(items), n, "client.map"),
        }
        warmups: dict[str, Async] = {
            "conveyor": _stream(task, warm),
            "map": _blocking(lambda: client_map(warm), len(warm), "client.map"),
        }
        s = run_on(loop, interleaved_samples(contenders, cfg.reps, warmups))
    return [
        Row(
            scenario=f"dask cpu ~{CPU_SECONDS * 1e3:g} ms x {fmt_int(n)}",
            loop=loop,
            metric=f"wall time on a LocalCluster of {cores()} single-threaded worker processes"
            f" (started once, outside the timings: {startup:.1f} s)",
            conveyor=f"executor=client: {secs(s['conveyor'], n)}",
            floor=f"client.map + client.gather {secs(s['map'], n)}",
            ratio=f"map/conv {paired_ratio(s['map'], s['conveyor']):.2f}x",
            target="report",
            note=show_chunks(log.last_chunks()),
            group=GROUP,
        )
    ]


@contextlib.contextmanager
def local_cluster() -> Iterator[tuple[Any, float]]:
    """A Dask client on a LocalCluster of one single-threaded worker process per core."""
    from dask.distributed import Client, LocalCluster

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=cores(),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # (a worker's last heartbeat may meet the closed scheduler at the end: an
            # error Dask logs, not a failure)
            silence_logs=logging.CRITICAL,
        )
    with cluster, Client(cluster) as client:
        client.wait_for_workers(cores())
        yield client, time.perf_counter() - started


# -- 5. cost per item ----------------------------------------------------------------------


def _slope(small: float, large: float, sizes: tuple[int, int]) -> tuple[float, float]:
    """Seconds per item and fixed seconds per run, from two runs' times."""
    per_item = (large - small) / (sizes[1] - sizes[0])
    return per_item, small - per_item * sizes[0]


def _show_cost(per_item: float, fixed: float) -> str:
    rate = fmt_rate(1 / per_item) if per_item > 0 else "-"
    return f"{per_item * 1e6:.2f} µs/item ({rate}); {fixed * 1e3:+.0f} ms per run"


def costs(loop: str, cfg: Config, client: Any = None) -> list[Row]:
    """What an executor costs per item and per run, on a trivial function (identity)."""
    fn = work.identity
    executors: dict[str, Any] = {e: e for e in ("inline", "thread", "process", "auto")}
    floors: dict[str, tuple[str, Callable[[Sequence[int]], int]]] = {
        "inline": ("plain loop", functools.partial(_plain_loop, fn)),
        "thread": (
            f"ThreadPoolExecutor({THREADS}).map",
            functools.partial(_thread_map, fn, threads=THREADS),
        ),
        "process": (
            f"ProcessPoolExecutor({cores()}).map(chunksize=1000)",
            functools.partial(_process_map, fn, chunksize=1_000),
        ),
    }
    floor_sizes = {name: cfg.cost_sizes(name) for name in floors}
    floor_sizes["process"] = cfg.cost_sizes("process map")
    if client is not None:
        executors = {"dask": client}

        def client_map(items: Sequence[int]) -> int:
            return len(client.gather(client.map(fn, items, pure=False)))

        floors = {"dask": ("client.map + client.gather", client_map)}
        floor_sizes = {"dask": cfg.cost_sizes("client.map")}
    tasks = {
        name: single_task(executor=executor, task_name="identity")(fn)
        for name, executor in executors.items()
    }
    contenders: dict[str, Async] = {}
    warmups: dict[str, Async] = {}
    for name, task in tasks.items():
        for size in cfg.cost_sizes(name):
            contenders[f"{name} {size}"] = _stream(task, range(size))  # type: ignore[arg-type]
        warmups[name] = _stream(task, range(1_000))  # type: ignore[arg-type]
    for name, (label, f) in floors.items():
        for size in floor_sizes[name]:
            contenders[f"floor {name} {size}"] = _blocking(
                functools.partial(f, range(size)), size, label
            )
        warmups[f"floor {name}"] = _blocking(functools.partial(f, range(100)), 100, label)
    with listening() as log:
        s = run_on(loop, interleaved_samples(contenders, cfg.reps, warmups))
    rows = []
    for name in tasks:
        sizes = cfg.cost_sizes(name)
        cost = _slope(med(s[f"{name} {sizes[0]}"]), med(s[f"{name} {sizes[1]}"]), sizes)
        floor = "-"
        ratio = "-"
        if name in floors:
            fsizes = floor_sizes[name]
            fcost = _slope(
                med(s[f"floor {name} {fsizes[0]}"]), med(s[f"floor {name} {fsizes[1]}"]), fsizes
            )
            floor = f"{floors[name][0]}: {_show_cost(*fcost)}"
            ratio = f"conv/floor per item {cost[0] / fcost[0]:.2g}x" if fcost[0] > 0 else "-"
        shown = "executor=client" if name == "dask" else f'"{name}"'
        rows.append(
            Row(
                scenario=f"cost/item {name}",
                loop=loop,
                metric=f"identity; slope between runs of {fmt_int(sizes[0])} and"
                f" {fmt_int(sizes[1])} items",
                conveyor=f"{shown}: {_show_cost(*cost)}",
                floor=floor,
                ratio=ratio,
                note=f"auto chose {auto_choice(tasks[name], log)}" if name == "auto" else "",
                group=GROUP,
            )
        )
    return rows


# -- the group -----------------------------------------------------------------------------


def executors(loop: str, cfg: Config) -> list[Row]:
    rows = cpu(loop, cfg) + tiny(loop, cfg) + blocking(loop, cfg) + costs(loop, cfg)
    if not installed("distributed"):
        return rows
    with local_cluster() as (client, startup):
        rows += dask_cpu(loop, cfg, client, startup)
        rows += costs(loop, cfg, client)
    return rows
