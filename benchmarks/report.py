"""The results table: printed to the terminal and written as markdown."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import Row

HEADERS = (
    "Scenario",
    "Loop",
    "Metric",
    "conveyor",
    "hand-written floor",
    "aiostream",
    "Ratio",
    "Target",
    "Targets",
)


def _cells(row: Row) -> list[str]:
    return [
        row.scenario,
        row.loop,
        row.metric,
        row.conveyor,
        row.floor,
        row.aiostream,
        row.ratio,
        row.target,
        row.status,
    ]


def header_lines(loops: Sequence[str], quick: bool) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"Date: {now}",
        f"Python: {platform.python_version()} ({platform.python_implementation()}, {sys.platform})",
        f"CPUs: {os.cpu_count()}",
        f"Event loops: {', '.join(loops)}",
        "Mode: " + ("--quick (smoke test: fewer items and repetitions)" if quick else "full"),
    ]


def text_table(rows: Sequence[Row]) -> str:
    table = [list(HEADERS)] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    out = []
    for n, line in enumerate(table):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _md_escape(cell: str) -> str:
    return cell.replace("|", "\\|")


NOTES = """\
Notes:

- Figures are medians over the repetitions; conveyor and its baselines run interleaved in
  the same process, after a warm-up, with `gc.collect()` before every timed run.
- *hand-written floor*: a plain `for` loop awaiting the stage functions one after another
  (overhead, sync, batching, scaling); `asyncio.gather` with one `Semaphore(limit)` per stage
  (io); tasks created up front and awaited in input order (latency).
- *aiostream*: `stream.iterate(items) | pipe.map(f, ordered=True, task_limit=N)` per stage
  (N = 64, or the concurrency limit for io); batching adds `pipe.chunks(100)` and
  `pipe.concatmap(stream.iterate)`. aiostream runs on fewer items where its cell says so
  (its rate does not depend on the item count): at ~5-10k items/s, 100k items would take
  15 s a run. Plain `def` stages are mapped with `pipe.map(f)` (task_limit is async-only).
- On this shared 2-core machine, throughput figures vary by roughly +-20% from run to run;
  a target within that margin can flip between runs.
- Ratios: `floor/conv` is how many times faster the hand-written floor is; `conv/aio` how
  many times faster conveyor is than aiostream; for io, conveyor's wall time over the
  gather+Semaphore baseline's (<= 1.00 meets the target).
- Memory runs in a fresh subprocess per measurement (`python -m benchmarks.memory`).
"""


def markdown(rows: Sequence[Row], loops: Sequence[str], quick: bool, extra: str = "") -> str:
    lines = ["# conveyor benchmark results", ""]
    lines += [f"- {line}" for line in header_lines(loops, quick)]
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in _cells(row)) + " |")
    lines += ["", NOTES]
    if extra:
        lines += [extra, ""]
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
