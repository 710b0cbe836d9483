"""``python -m benchmarks [--quick] [--loop asyncio|uvloop|both] [--only NAME] [--output PATH]
[--update]``.

The suite is imported inside :func:`main`, not at the top: worker processes started with
``forkserver`` or ``spawn`` (the executors group's process pools, Dask's workers) import
the main module again, and this one must cost them next to nothing, as a small script's
would, or every pool's start-up would be charged the suite's imports.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .common import Row

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .common import LOOPS
    from .scenarios import SCENARIOS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="conveyor vs hand-written code, aiostream and streamable, on asyncio and"
        " uvloop; and its executors vs ProcessPoolExecutor, mpire, joblib and Dask. One"
        " interpreter per run: write each to its own file with --output and combine them"
        " with python -m benchmarks.merge (nox -s bench does both).",
    )
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument(
        "--quick", action="store_true", help="fewer items and repetitions (smoke test)"
    )
    parser.add_argument("--only", choices=sorted(SCENARIOS), help="run one scenario")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"markdown file ({DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --only: replace only that scenario's rows (or, for a group with a table"
        " of its own, that table) in this interpreter's section of --output, keeping the"
        " rest",
    )
    args = parser.parse_args(argv)
    if args.update and not args.only:
        parser.error("--update needs --only SCENARIO")
    return args


def main(argv: list[str] | None = None) -> int:
    from .common import LOOPS, Config
    from .report import (
        GROUPS,
        group_block,
        header_lines,
        markdown,
        split_groups,
        text_table,
        update_groups,
        update_rows,
        write_markdown,
    )
    from .scenarios import SCENARIOS

    args = parse_args(argv)
    cfg = Config(quick=args.quick)
    loops = list(LOOPS) if args.loop == "both" else [args.loop]
    names = [args.only] if args.only else list(SCENARIOS)
    for line in header_lines(loops, cfg.quick):
        print(line)
    print()
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    loads: dict[str, list[float]] = {}  # the 1-minute load average as each run starts, ends
    started = time.perf_counter()
    for name in names:
        for loop in loops:
            loads.setdefault(name, []).append(_load())
            t0 = time.perf_counter()
            print(f"running {name} on {loop} ...", end=" ", flush=True, file=sys.stderr)
            rows.extend(SCENARIOS[name](loop, cfg))
            took = time.perf_counter() - t0
            seconds[name] = seconds.get(name, 0.0) + took
            loads[name].append(_load())
            print(f"{took:.1f} s", file=sys.stderr)
    total = time.perf_counter() - started
    print()
    print(text_table(rows))
    main_rows, groups = split_groups(rows)
    summary = _summary("Suite", total - sum(seconds.get(g, 0.0) for g in groups), main_rows)
    group_summaries = {
        g: _summary(GROUPS[g].title, seconds.get(g, 0.0), group_rows)
        + " Load average (1 min) at the start and end of each loop's run: "
        + ", ".join(f"{load:.1f}" for load in loads.get(g, []))
        + f" (on {os.cpu_count()} CPUs; other processes' work slows the pools)."
        for g, group_rows in groups.items()
    }
    print()
    for line in ([summary] if main_rows else []) + list(group_summaries.values()):
        print(line)
    if args.update:
        blocks = {
            g: group_block(g, group_rows, loops, cfg.quick, group_summaries[g])
            for g, group_rows in groups.items()
        }
        old = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        text = update_groups(old, blocks, loops) if blocks else old
        if main_rows:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            note = f"Rows of `{args.only}` re-run on {when} ({', '.join(loops)}): {summary}"
            text = update_rows(text, main_rows, loops, note)
    else:
        text = markdown(rows, loops, cfg.quick, summary, group_summaries)
    write_markdown(args.output, text)
    print(f"written to {args.output}")
    return 0


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # (not available here)
        return float("nan")


def _summary(what: str, seconds: float, rows: list[Row]) -> str:
    missed = [f"{r.scenario} ({r.loop})" for r in rows if r.met is False]
    return f"{what} wall time: {seconds:.0f} s. Targets not met: {', '.join(missed) or 'none'}."


if __name__ == "__main__":
    sys.exit(main())
