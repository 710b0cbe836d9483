"""Progress of a run: a live tqdm bar in a terminal or notebook, plain lines elsewhere.

``stream.progress()`` (or ``PipelineContext(progress=True)``) reads the run's statistics
on a timer of its own, so the engine does nothing per item for it:

* **Done** counts input items whose work is over: read from the input and no longer
  holding a place in the window (delivered, dropped, or failed for good). Items a stage
  expands into hold places of their own, so while expansions are under way the count
  lags; it never goes back, and it reaches the input's length at the end. A source task
  (a pipeline called with no input) counts results instead.
* **Total and ETA** when the input has a length (``len(items)``); for an input that
  reports its reading (a file source's ``figures()``), the bytes read and the share of
  the file.
* **Where it goes.** To a terminal (``file.isatty()``): tqdm's text bars, redrawn every
  ``interval`` (0.1 s): the run's bar, and only under ``stages=True`` one line per
  stage (items out, calls running, items waiting for a slot); the last frame stays on
  the screen, each bar on its own line (see ``Bars``). In a Jupyter kernel writing to
  the default file: tqdm's notebook widgets where ipywidgets is installed, its text
  bars otherwise (see ``_bar_class``). Anywhere else (a CI log, a file, a pipe): a
  plain line every ``interval`` (10 s) and one at the end, with no control characters,
  so logs stay readable.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import sys
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from ._engine._input import NO_INPUT

if TYPE_CHECKING:
    from ._engine._run import Run
    from ._engine._stats import Collector

__all__ = ["Progress", "ProgressOptions"]

TERMINAL_INTERVAL = 0.1
LINES_INTERVAL = 10.0


@dataclasses.dataclass(frozen=True)
class ProgressOptions:
    """What ``stream.progress()`` was asked for (``None``: chosen from the output)."""

    file: TextIO | None = None
    stages: bool = False
    interval: float | None = None
    desc: str | None = None

    def __post_init__(self) -> None:
        if self.interval is not None and not (
            isinstance(self.interval, (int, float)) and self.interval > 0
        ):
            raise ValueError(f"interval must be a number of seconds > 0, got {self.interval!r}")
        if not isinstance(self.stages, bool):
            raise TypeError(f"stages must be True or False, got {self.stages!r}")
        if self.file is not None and not callable(getattr(self.file, "write", None)):
            raise TypeError(f"file must be a text stream with write(), got {self.file!r}")

    def live(self) -> bool:
        """Whether the output is a terminal or a notebook (tqdm bars), not a log."""
        file = self.file if self.file is not None else sys.stderr
        if self.file is None and _in_notebook():
            return True
        isatty = getattr(file, "isatty", None)
        try:
            return bool(isatty()) if isatty is not None else False
        except (ValueError, io.UnsupportedOperation):  # a closed or detached stream
            return False

    def check(self) -> None:
        """Fail now, naming the fix, if a bar is wanted and tqdm is missing."""
        if self.live():
            try:
                import tqdm  # noqa: F401
            except ImportError:
                raise ImportError(
                    "progress bars need tqdm: pip install 'conveyor[progress]' (or pass "
                    "progress(file=...) a log file, which gets plain lines)"
                ) from None


@dataclasses.dataclass(frozen=True)
class Figures:
    done: int
    total: int | None
    results: int
    elapsed: float
    stages: list[dict[str, Any]]
    read: dict[str, Any] | None = None  # the input's own figures (a file source's)
    earlier: int = 0  # input items done by an earlier run, skipped (a checkpoint)

    @property
    def skipped(self) -> str | None:
        """``"12,000 done earlier, skipped"`` on a checkpoint that had done items."""
        return f"{self.earlier:,} done earlier, skipped" if self.earlier else None

    @property
    def rate(self) -> float | None:
        return self.done / self.elapsed if self.elapsed > 0 else None

    @property
    def bytes_read(self) -> str | None:
        """``"12.3 MB read (45%)"`` for an input that reports its reading (a file)."""
        read = self.read or {}
        if read.get("bytes_read") is None:
            return None
        progress = read.get("progress")
        share = "" if progress is None else f" ({progress:.0%})"
        return f"{read['bytes_read'] / 1e6:,.1f} MB read{share}"

    @property
    def eta(self) -> float | None:
        rate = self.rate
        if self.total is None or not rate:
            return None
        return max(0.0, self.total - self.done) / rate


class Renderer(Protocol):
    def show(self, figures: Figures) -> None: ...
    def close(self, figures: Figures, how: str) -> None: ...


class Progress:
    """Shows one run's progress until the run is over (owned by the run: ``on_over``)."""

    def __init__(self, run: Run, stats: Collector, options: ProgressOptions, source: Any) -> None:
        self.run = run
        self.stats = stats
        self.by_results = source is NO_INPUT
        self.total = None if self.by_results else length_of(source)
        self.done = 0
        names = [stage.name for stage in run.stages]
        desc = options.desc if options.desc is not None else " | ".join(names)
        if options.live():
            self.interval = options.interval or TERMINAL_INTERVAL
            self.renderer: Renderer = Bars(options, desc, names, self.total)
        else:
            self.interval = options.interval or LINES_INTERVAL
            self.renderer = Lines(options, desc)
        self.timer: Any = run.loop.call_later(self.interval, self.tick)
        run.on_over.append(self.over)

    def figures(self) -> Figures:
        snapshot = self.stats.snapshot()
        if self.by_results:
            done = snapshot["results"]
        else:
            read = snapshot["stages"][0]["items_in"] if snapshot["stages"] else 0
            done = read - self.run.ledger.tokens
        self.done = max(self.done, done)  # (expansions hold places: never go back)
        # Items a checkpoint skips are not this run's work: the total is what is left.
        earlier = self.run.ledger.done_earlier
        total = None if self.total is None else max(self.total - earlier, self.done)
        return Figures(
            self.done,
            total,
            snapshot["results"],
            snapshot["elapsed"],
            snapshot["stages"],
            snapshot.get("input"),
            earlier,
        )

    def tick(self) -> None:
        self.timer = None
        self.renderer.show(self.figures())
        self.timer = self.run.loop.call_later(self.interval, self.tick)

    def over(self, run: Run) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        how = "finished" if run.finished else "failed" if run.error is not None else "closed"
        figures = self.figures()
        if how == "finished" and figures.total is not None and not self.by_results:
            figures = dataclasses.replace(figures, done=max(figures.done, figures.total))
        self.renderer.close(figures, how)


class Bars:
    """tqdm bars: the run's, and under ``stages=True`` one line per stage below it.

    In a terminal, tqdm keeps the cursor on the first bar's line and draws a bar at
    position ``n`` ``n`` lines below it. A bar closed with ``leave`` is drawn one last
    time on the cursor's line, and the cursor moves down one: so the bars close from the
    top down, each on its own line, and the final frame is the bars' last state, each
    line padded over its own previous text. (Closing a stage's line first would write it
    over the run's bar, leaving the longer bar's tail behind it: "waitingg".)
    """

    def __init__(
        self, options: ProgressOptions, desc: str, names: list[str], total: int | None
    ) -> None:
        bar_class = _bar_class(options)
        common: dict[str, Any] = {"file": options.file, "dynamic_ncols": True, "mininterval": 0}
        self.bar = bar = bar_class(total=total, desc=desc, unit="item", **common)
        widgets = hasattr(bar, "container")  # (tqdm.notebook's: an ipywidgets box)
        # In a terminal, under a bar of the caller's (ours is not the first line), the bars
        # are cleared at the end: one left in place would be written over the caller's
        # line. (Widgets each have their own place.)
        first = abs(bar.pos)
        bar.leave = widgets or first == 0
        self.lines: list[Any] = []
        if not options.stages:
            return
        width = max((len(name) for name in names), default=0) + 1
        for index, name in enumerate(names):
            line = bar_class(
                desc=f"  {name + ':':<{width}}",  # (aligned: the figures form a column)
                unit="item",
                bar_format="{desc} {n_fmt} out{postfix}",
                position=first + 1 + index,
                leave=bar.leave,
                **common,
            )
            if widgets:  # text only: tqdm's widget for a count with no total is a full bar
                line.container.children[1].layout.display = "none"
            self.lines.append(line)

    def show(self, figures: Figures) -> None:
        bar = self.bar
        if figures.total is not None:
            bar.total = figures.total  # (less what a checkpoint skips, as it reads)
        bar.n = figures.done
        bar.set_postfix_str(_postfix(figures), refresh=False)
        for line, stage in zip(self.lines, figures.stages, strict=False):
            line.n = stage["items_out"]
            line.set_postfix_str(
                f"{stage['in_flight']} running, {stage['waiting_for_slot']} waiting" + _auto(stage),
                refresh=False,
            )
            line.refresh()
        bar.refresh()

    def close(self, figures: Figures, how: str) -> None:
        self.show(figures)
        if how != "finished":
            self.bar.set_postfix_str(_postfix(figures) + f" ({how})", refresh=False)
        self.bar.close()  # (first: see the class's docstring)
        for line in self.lines:
            line.close()


class Lines:
    """Plain lines for logs: no carriage returns, no escape codes."""

    def __init__(self, options: ProgressOptions, desc: str) -> None:
        self.file = options.file if options.file is not None else sys.stderr
        self.desc = desc
        self.stages = options.stages

    def show(self, figures: Figures, how: str | None = None) -> None:
        done = f"{figures.done:,}"
        if figures.total is not None:
            share = figures.done / figures.total if figures.total else 1.0
            done += f"/{figures.total:,} items ({share:.0%})"
        else:
            done += " items"
        rate = figures.rate
        parts = [f"{done} in {figures.elapsed:.1f} s"]
        if rate is not None:
            parts.append(f"{rate:,.1f}/s")
        if how is None and figures.eta is not None:
            parts.append(f"ETA {figures.eta:.0f} s")
        parts.append(f"{figures.results:,} results")
        if figures.bytes_read is not None:
            parts.append(figures.bytes_read)
        if figures.skipped is not None:
            parts.append(figures.skipped)
        if how is not None:
            parts.append(how)
        line = f"{self.desc}: {', '.join(parts)}"
        if self.stages:
            line += "".join(
                f"\n  {s['name']}: {s['items_out']:,} out, {s['in_flight']} running, "
                f"{s['waiting_for_slot']} waiting{_auto(s)}"
                for s in figures.stages
            )
        self.file.write(line + "\n")
        self.file.flush()

    def close(self, figures: Figures, how: str) -> None:
        self.show(figures, how)


def _postfix(figures: Figures) -> str:
    """The run's bar's figures after the count: results, bytes read, items skipped."""
    extras = (figures.bytes_read, figures.skipped)
    return ", ".join([f"{figures.results:,} results", *(x for x in extras if x is not None)])


def length_of(source: Any) -> int | None:
    """The input's length when it has one (a list, a range, a DataFrame...)."""
    try:
        return len(source)
    except Exception:  # (no __len__, or one that refuses)
        return None


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel: its shell is ipykernel's
    ``ZMQInteractiveShell`` or a subclass of it (Google Colab's, VS Code's)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return shell is not None and any(
        kind.__name__ == "ZMQInteractiveShell" for kind in type(shell).__mro__
    )


def _bar_class(options: ProgressOptions) -> type[Any]:
    """tqdm's notebook widget (``tqdm.notebook``) in a Jupyter kernel writing to the
    default file, where ipywidgets is installed; tqdm's text bars otherwise.

    Chosen here rather than by ``tqdm.auto``, which decides once, when first imported,
    and cannot know that ``file=`` sends the bars elsewhere.
    """
    from tqdm.std import tqdm

    if options.file is None and _in_notebook():
        try:
            from tqdm.notebook import IProgress
            from tqdm.notebook import tqdm as notebook
        except ImportError:  # (IPython without its display module: text bars)
            return _unmonitored(tqdm)
        if IProgress is not None:  # (None: ipywidgets is missing)
            return _unmonitored(notebook)
    return _unmonitored(tqdm)


@functools.cache
def _unmonitored(bar_class: type[Any]) -> type[Any]:
    """``bar_class`` without tqdm's monitor thread.

    The thread adjusts bars that ``update()`` drives too seldom and lives until the
    interpreter exits: these bars are redrawn by the run's own timer, and a run leaves
    no thread behind. (A subclass: the setting of the user's own bars is unchanged, and
    the bars still share tqdm's list of positions on the screen.)
    """
    bar_class.get_lock()  # (made on tqdm's class, so that it is shared with the user's bars)
    return type(bar_class.__name__, (bar_class,), {"monitor_interval": 0})


def _auto(stage: dict[str, Any]) -> str:
    """An adaptive limit's value now (``concurrency_limit="auto"``), or nothing."""
    now = stage.get("concurrency_limit_now")
    return "" if now is None else f", limit {now} (auto)"
