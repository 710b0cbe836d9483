"""The results table: printed to the terminal and written as markdown."""

from __future__ import annotations

import dataclasses
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


GROUP_HEADERS = (
    "Scenario",
    "Loop",
    "Metric",
    "conveyor",
    "baselines (same run)",
    "Ratio",
    "Target",
    "Targets",
    "Note",
)


@dataclasses.dataclass(frozen=True)
class Group:
    """Scenarios with a table of their own: their baselines are not the main table's."""

    title: str
    baselines: tuple[str, ...]


GROUPS = {
    "executors": Group("Executors", ("mpire", "joblib", "dask", "distributed")),
    "csv": Group("CSV files", ("pandas", "numpy")),
    "http": Group("HTTP", ("aiohttp",)),
}
GROUP_PREFIX = "### "


def _cells(row: Row) -> list[str]:
    if row.group:
        return [
            row.scenario,
            row.loop,
            row.metric,
            row.conveyor,
            row.floor,
            row.ratio,
            row.target,
            row.status,
            row.note,
        ]
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


def header_lines(
    loops: Sequence[str], quick: bool, baselines: Sequence[str] = ("aiostream", "streamable")
) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    shown = [_version(loop) if loop == "uvloop" else loop for loop in loops]
    return [
        f"Date: {now}",
        f"Python: {python_line()}",
        f"CPUs: {os.cpu_count()}",
        f"Event loops: {', '.join(shown)}",
        f"Baselines: {', '.join(_version(name) for name in baselines)}",
        "Mode: " + ("--quick (smoke test: fewer items and repetitions)" if quick else "full"),
    ]


def split_groups(rows: Sequence[Row]) -> tuple[list[Row], dict[str, list[Row]]]:
    """The main table's rows, and the rows of each group with a table of its own."""
    main = [row for row in rows if not row.group]
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.group:
            groups.setdefault(row.group, []).append(row)
    return main, groups


def text_table(rows: Sequence[Row]) -> str:
    """The rows as aligned text: the main table, then a table per group."""
    main, groups = split_groups(rows)
    parts = [_text_table(HEADERS, main)] if main else []
    for name, group_rows in groups.items():
        parts.append(f"{GROUPS[name].title}:\n" + _text_table(GROUP_HEADERS, group_rows))
    return "\n\n".join(parts)


def _text_table(headers: Sequence[str], rows: Sequence[Row]) -> str:
    table = [list(headers)] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
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
- *Executors* (`python -m benchmarks --only executors`, its own table): the functions sent
  to workers are in `benchmarks/executor_work.py`; `cpu_work` is pure-Python arithmetic
  calibrated at start to ~1 ms (or ~5 us) an item, whose measured time is in the metric.
  Every contender starts its pool inside its timed region and shuts it down there:
  conveyor's run-scoped pool, `with ProcessPoolExecutor(...)`, `with WorkerPool(...)`,
  joblib's loky workers (shut down after each run). Process pools have one worker per
  core; conveyor and the `ProcessPoolExecutor` baseline use `forkserver` (conveyor's
  choice), mpire its default `fork`, joblib its loky backend. The Dask cluster (a
  LocalCluster, one single-threaded worker process per core) is started once, outside
  the timings; `client.map` is given `pure=False`. *best map* is the fastest median of
  `ProcessPoolExecutor.map(chunksize=c)` over the c listed; *inline* is a plain loop (cpu)
  or conveyor's default executor (tiny; blocking, timed on a sample and extrapolated).
  Ratios `x/conv` are x's time over conveyor's (above 1: conveyor is faster), medians of
  per-repetition ratios. The note gives the chunks conveyor sent in its last timed run
  (the first ones hold a single item, to measure), from its DEBUG log. *cost/item*: the
  slope of run time over run size on an identity function (the cost of each item) and
  its intercept (the fixed cost of a run, pools included).
"""


TITLE = "# conveyor benchmark results"
SECTION_PREFIX = "## Python "


def _md_table(headers: Sequence[str], rows: Sequence[Row]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in _cells(row)) + " |")
    return lines


def section(
    rows: Sequence[Row],
    loops: Sequence[str],
    quick: bool,
    extra: str = "",
    group_extra: dict[str, str] | None = None,
) -> str:
    """One run: a heading naming the interpreter and loops, the run's facts, its table,
    then a block per group (see :func:`group_block`); ``extra`` follows the main table,
    ``group_extra[name]`` its group's table."""
    main, groups = split_groups(rows)
    lines = [f"{SECTION_PREFIX}{python_line()} on {', '.join(loops)}"]
    if main:
        lines += ["", *(f"- {line}" for line in header_lines(loops, quick))]
        lines += ["", *_md_table(HEADERS, main)]
        if extra:
            lines += ["", extra]
    text = "\n".join(lines) + "\n"
    for name, group_rows in groups.items():
        block_extra = (group_extra or {}).get(name, "")
        text += "\n" + group_block(name, group_rows, loops, quick, block_extra)
    return text


def group_block(
    name: str, rows: Sequence[Row], loops: Sequence[str], quick: bool, extra: str = ""
) -> str:
    """A group's block of a run section: its heading, its facts, its table."""
    group = GROUPS[name]
    lines = [f"{GROUP_PREFIX}{group.title}", ""]
    lines += [f"- {line}" for line in header_lines(loops, quick, group.baselines)]
    lines += ["", *_md_table(GROUP_HEADERS, rows)]
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


def update_rows(text: str | None, rows: Sequence[Row], loops: Sequence[str], note: str) -> str:
    """The results file ``text`` with the main-table rows of this interpreter's section
    that have the same scenario and loop as one of ``rows`` replaced by it (others are
    added at the table's end), and ``note`` added to the section's facts; everything
    else is kept, so a scenario can be re-run on its own."""
    sections = sections_of(text) if text else []
    heading = f"{SECTION_PREFIX}{python_line()} "
    index = next((i for i, s in enumerate(sections) if s.startswith(heading)), None)
    if index is None:  # nothing to update: a section of these rows alone
        sections.append(section(rows, loops, quick=False))
        return document(sections)
    lines = sections[index].rstrip("\n").split("\n")
    table = [i for i, line in enumerate(lines) if line.startswith("| ")]
    fresh = {(row.scenario, row.loop): _md_table(HEADERS, [row])[2] for row in rows}
    if not table:
        raise ValueError("no main table to update in this interpreter's section")
    end = table[0]
    while end + 1 < len(lines) and lines[end + 1].startswith("|"):
        end += 1
    for i in range(table[0] + 2, end + 1):
        cells = [c.strip() for c in lines[i].strip("|").split("|")]
        key = (cells[0], cells[1])
        if key in fresh:
            lines[i] = fresh.pop(key)
    lines[end + 1 : end + 1] = list(fresh.values())
    facts = max((i for i in range(table[0]) if lines[i].startswith("- ")), default=table[0] - 2)
    lines.insert(facts + 1, f"- {note}")
    sections[index] = "\n".join(lines) + "\n"
    return document(sections)


def update_groups(text: str | None, blocks: dict[str, str], loops: Sequence[str]) -> str:
    """The results file ``text`` with the group blocks of this interpreter's section
    replaced by ``blocks`` (or added); everything else is kept. Without a section for
    this interpreter, one is added, holding the blocks only."""
    sections = sections_of(text) if text else []
    heading = f"{SECTION_PREFIX}{python_line()} "
    index = next((i for i, s in enumerate(sections) if s.startswith(heading)), None)
    if index is None:
        sections.append(f"{SECTION_PREFIX}{python_line()} on {', '.join(loops)}\n")
        index = len(sections) - 1
    body = sections[index].rstrip("\n") + "\n"
    for name, block in blocks.items():
        marker = f"\n{GROUP_PREFIX}{GROUPS[name].title}\n"
        start = body.find(marker)
        if start < 0:
            body += "\n" + block
            continue
        end = body.find("\n" + GROUP_PREFIX, start + len(marker))
        rest = body[end:] if end >= 0 else ""
        body = body[: start + 1] + block + rest
    sections[index] = body
    return document(sections)


def document(sections: Sequence[str]) -> str:
    """The results file: the title, one section per run, then the notes."""
    parts = [TITLE + "\n"]
    if len(sections) > 1:
        parts.append("One table per interpreter, each from its own run of the suite.\n")
    parts += [s.rstrip("\n") + "\n" for s in sections]
    parts.append(NOTES)
    return "\n".join(parts)


def markdown(
    rows: Sequence[Row],
    loops: Sequence[str],
    quick: bool,
    extra: str = "",
    group_extra: dict[str, str] | None = None,
) -> str:
    return document([section(rows, loops, quick, extra, group_extra)])


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
