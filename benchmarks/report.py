"""The results table: printed to the terminal and written as markdown."""

from __future__ import annotations

import datetime
import importlib.metadata
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
    "streamable",
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
        row.streamable,
        row.ratio,
        row.target,
        row.status,
    ]


def _version(package: str) -> str:
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{package} (not installed)"


def python_line() -> str:
    return f"{platform.python_version()} ({platform.python_implementation()}, {sys.platform})"


def header_lines(loops: Sequence[str], quick: bool) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    shown = [_version(loop) if loop == "uvloop" else loop for loop in loops]
    return [
        f"Date: {now}",
        f"Python: {python_line()}",
        f"CPUs: {os.cpu_count()}",
        f"Event loops: {', '.join(shown)}",
        f"Baselines: {_version('aiostream')}, {_version('streamable')}",
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
- *streamable* (2.x): `stream(items).map(f, concurrency=N)` per stage, iterated with
  `async for` (N = 64, or the concurrency limit for io; `as_completed=True` for the
  as-completed row); batching is `.group(100).map(batch).flatten()`. Plain `def` stages are
  mapped at concurrency 1 (called inline: above 1, streamable sends them to threads).
  streamable runs on fewer items where its cell says so.
- On this shared 2-core machine, throughput figures vary by roughly +-20% from run to run;
  a target within that margin can flip between runs.
- Ratios: `floor/conv` is how many times faster the hand-written floor is; `conv/aio` and
  `conv/stm` how many times faster conveyor is than aiostream and streamable; for io,
  conveyor's wall time over the gather+Semaphore baseline's (<= 1.00 meets the target) and
  over streamable's.
- Memory runs in a fresh subprocess per measurement (`python -m benchmarks.memory`).
"""


TITLE = "# conveyor benchmark results"
SECTION_PREFIX = "## Python "


def section(rows: Sequence[Row], loops: Sequence[str], quick: bool, extra: str = "") -> str:
    """One run: a heading naming the interpreter and loops, the run's facts, its table."""
    lines = [f"{SECTION_PREFIX}{python_line()} on {', '.join(loops)}", ""]
    lines += [f"- {line}" for line in header_lines(loops, quick)]
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in _cells(row)) + " |")
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


def document(sections: Sequence[str]) -> str:
    """The results file: the title, one section per run, then the notes."""
    parts = [TITLE + "\n"]
    if len(sections) > 1:
        parts.append("One table per interpreter, each from its own run of the suite.\n")
    parts += [s.rstrip("\n") + "\n" for s in sections]
    parts.append(NOTES)
    return "\n".join(parts)


def markdown(rows: Sequence[Row], loops: Sequence[str], quick: bool, extra: str = "") -> str:
    return document([section(rows, loops, quick, extra)])


def sections_of(text: str) -> list[str]:
    """The run sections of a results file written by :func:`document`."""
    start = text.find("\n" + SECTION_PREFIX)
    end = text.find("\nNotes:\n")
    if start < 0 or end < start:
        raise ValueError("not a results file of this suite (no '## Python' section)")
    body = text[start + 1 : end]
    chunks = body.split("\n" + SECTION_PREFIX)
    return [chunks[0]] + [SECTION_PREFIX + chunk for chunk in chunks[1:]]


def write_markdown(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
