"""``python -m benchmarks [--quick] [--loop asyncio|uvloop|both] [--only NAME] [--output PATH]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import LOOPS, Config, Row
from .report import header_lines, markdown, text_table, write_markdown
from .scenarios import SCENARIOS

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="conveyor vs hand-written code, aiostream and streamable, on asyncio and"
        " uvloop. One interpreter per run: write each to its own file with --output and"
        " combine them with python -m benchmarks.merge (nox -s bench does both).",
    )
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument(
        "--quick", action="store_true", help="fewer items and repetitions (smoke test)"
    )
    parser.add_argument("--only", choices=sorted(SCENARIOS), help="run one scenario")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"markdown file ({DEFAULT_OUTPUT})"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config(quick=args.quick)
    loops = list(LOOPS) if args.loop == "both" else [args.loop]
    names = [args.only] if args.only else list(SCENARIOS)
    for line in header_lines(loops, cfg.quick):
        print(line)
    print()
    rows: list[Row] = []
    started = time.perf_counter()
    for name in names:
        for loop in loops:
            t0 = time.perf_counter()
            print(f"running {name} on {loop} ...", end=" ", flush=True, file=sys.stderr)
            rows.extend(SCENARIOS[name](loop, cfg))
            print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    total = time.perf_counter() - started
    print()
    print(text_table(rows))
    missed = [f"{r.scenario} ({r.loop})" for r in rows if r.met is False]
    summary = f"Suite wall time: {total:.0f} s. Targets not met: {', '.join(missed) or 'none'}."
    print()
    print(summary)
    write_markdown(args.output, markdown(rows, loops, cfg.quick, summary))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
