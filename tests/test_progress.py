"""Progress (``stream.progress()``, ``PipelineContext(progress=True)``), through tqdm's own
``file`` argument: bars for a terminal, plain lines for logs, silence when off.

Runs that print on a timer use looptime's virtual clock, so the lines are predictable.
"""

from __future__ import annotations

import asyncio
import io
import re
import sys
import threading
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor import PipelineContext, _progress, batch_task, single_task

CONTROL = re.compile(r"[\r\x1b]")


class Terminal(io.StringIO):
    """What tqdm sees as a terminal."""

    def isatty(self) -> bool:
        return True


@single_task(concurrency_limit=10)
async def slow(x: int) -> int:
    await asyncio.sleep(0.1)
    return x


@single_task
def drop_odd(x: int) -> int | None:
    return x if x % 2 == 0 else None


@batch_task(max_size=5)
def pairs(batch: list[int]) -> list[int]:
    return batch


@pytest.mark.looptime
async def test_log_lines_on_a_timer_then_a_final_line() -> None:
    out = io.StringIO()
    stream = (slow | drop_odd)(range(100)).progress(file=out, interval=0.25)
    results = await stream.collect()
    assert len(results) == 50
    lines = out.getvalue().splitlines()
    assert not CONTROL.search(out.getvalue())  # a log stays readable: no \r, no escapes
    # 100 items at 10 at once, 0.1 s each: 1 s; a line every 0.25 s, then the last one
    assert 3 <= len(lines) <= 5, lines
    done = [int(re.search(r": ([\d,]+)/100 items", line)[1]) for line in lines]  # type: ignore[index]
    assert done == sorted(done) and 0 < done[0] < 100
    assert "ETA" in lines[0] and "/s" in lines[0]
    assert lines[-1].startswith("slow | drop_odd: 100/100 items (100%)")
    assert lines[-1].endswith("50 results, finished")


@pytest.mark.looptime
async def test_one_line_per_stage_under_stages() -> None:
    out = io.StringIO()
    await (slow | pairs)(range(20)).progress(file=out, stages=True, desc="job").collect()
    text = out.getvalue()
    assert text.splitlines()[-3:] == [
        text.splitlines()[-3],
        "  slow: 20 out, 0 running, 0 waiting",
        "  pairs: 20 out, 0 running, 0 waiting",
    ]
    assert text.splitlines()[-3].startswith("job: 20/20 items (100%)")


async def test_a_terminal_gets_tqdm_bars() -> None:
    out = Terminal()
    await (drop_odd | pairs)(list(range(40))).progress(file=out, stages=True).collect()
    text = out.getvalue()
    assert "\r" in text  # redrawn in place
    assert "40/40" in text and "item/s" in text and "20 results" in text
    assert "drop_odd: 20 out" in text and "pairs:    20 out" in text  # (aligned)


async def test_no_length_no_total_and_no_eta() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    out = io.StringIO()
    await drop_odd(numbers()).progress(file=out).collect()
    (line,) = out.getvalue().splitlines()
    assert line.startswith("drop_odd: 10 items in ") and "ETA" not in line and "%" not in line


async def test_a_source_task_counts_results() -> None:
    @single_task
    async def source() -> AsyncIterator[int]:
        for i in range(7):
            yield i

    out = io.StringIO()
    assert await source().progress(file=out).collect() == list(range(7))
    assert out.getvalue().startswith("source: 7 items in ")


async def test_the_last_line_says_how_the_run_ended() -> None:
    out = io.StringIO()
    async with slow(range(100)).progress(file=out) as stream:
        async for _ in stream:
            break
    assert out.getvalue().rstrip().endswith("closed")

    @single_task
    def boom(x: int) -> int:
        raise ValueError(x)

    out = io.StringIO()
    with pytest.raises(ValueError):
        await boom(range(3)).progress(file=out).collect()
    assert out.getvalue().rstrip().endswith("failed")


async def test_progress_true_in_the_context_writes_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline = (drop_odd | pairs).with_context(progress=True)
    assert len(await pipeline(range(10)).collect()) == 5
    err = capsys.readouterr().err
    assert err.startswith("drop_odd | pairs: 10/10 items (100%)") and not CONTROL.search(err)


async def test_silent_when_not_asked(capsys: pytest.CaptureFixture[str]) -> None:
    await (drop_odd | pairs)(range(10)).collect()
    assert capsys.readouterr() == ("", "")


async def test_progress_turns_statistics_on() -> None:
    stream = drop_odd.with_context(statistics=False)(range(10)).progress(file=io.StringIO())
    await stream.collect()
    assert stream.stats.enabled and stream.stats.results == 5


async def test_bad_arguments_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="interval must be a number of seconds > 0"):
        drop_odd(range(3)).progress(interval=0)
    with pytest.raises(TypeError, match="file must be a text stream"):
        drop_odd(range(3)).progress(file=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"progress must be True or False.*progress\(\.\.\.\)"):
        PipelineContext(progress="yes")  # type: ignore[arg-type]
    stream = drop_odd(range(3))
    await stream.__anext__()
    with pytest.raises(RuntimeError, match="before iteration starts"):
        stream.progress()
    await stream.aclose()
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match=r"pip install 'conveyor\[progress\]'"):
        drop_odd(range(3)).progress(file=Terminal())
    drop_odd(range(3)).progress(file=io.StringIO())  # plain lines need no tqdm


def test_a_notebook_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _progress._in_notebook()

    class ZMQInteractiveShell:
        pass

    fake = types.ModuleType("IPython")
    fake.get_ipython = ZMQInteractiveShell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert _progress._in_notebook()
    assert _progress.ProgressOptions().live()  # (stderr in a notebook: a widget)


async def test_a_file_input_shows_the_bytes_read(tmp_path: Any) -> None:
    from conveyor.sources import file_chunks

    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 3_000_000)
    out = io.StringIO()
    await single_task(len)(file_chunks(path, size=1_000_000)).progress(file=out).collect()
    assert out.getvalue().rstrip().endswith("3 results, 3.0 MB read (100%), finished")


async def test_no_stage_lines_unless_asked() -> None:
    out = Terminal()
    await (drop_odd | pairs)(list(range(40))).progress(file=out).collect()
    text = out.getvalue()
    assert "40/40" in text and " out" not in text and "\x1b[A" not in text  # (one line)


async def test_bars_leave_no_thread_behind() -> None:
    # (tqdm's monitor thread, started with a first bar, lives until the interpreter exits:
    # these bars are redrawn by the run's timer and need none)
    before = set(threading.enumerate())
    await drop_odd(range(10)).progress(file=Terminal(), stages=True).collect()
    assert set(threading.enumerate()) <= before


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """A Jupyter kernel, as conveyor and tqdm see it, with ipywidgets: the widgets
    tqdm.notebook displays (IPython's ``display`` needs a browser to show them).

    They are closed at the end: ipywidgets keeps every widget until it is closed, and a
    bar's box holds a weak proxy to its tqdm bar, dead once the bar is, which would trip
    whatever inspects every object left (as tests/test_sources_close.py does).
    """
    pytest.importorskip("ipywidgets", reason="the notebook bars are ipywidgets")
    IPython = pytest.importorskip("IPython")
    import tqdm.notebook

    class ZMQInteractiveShell:  # (ipykernel's shell, and its subclasses: Colab's)
        pass

    class Shell(ZMQInteractiveShell):
        pass

    monkeypatch.setattr(IPython, "get_ipython", Shell)
    shown: list[Any] = []
    every: list[Any] = []

    def display(box: Any) -> None:
        shown.append(box)
        every.append(box)

    monkeypatch.setattr(tqdm.notebook, "display", display)
    yield shown
    for box in every:
        for widget in [*box.children, box]:
            widget.close()
        del box.pbar


async def test_a_notebook_draws_tqdm_widgets(
    notebook: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _progress._in_notebook()
    await (drop_odd | pairs)(range(40)).progress(stages=True).collect()
    assert capsys.readouterr() == ("", "")  # (widgets, not text on stdout or stderr)
    run, *lines = [box.children for box in notebook]
    (label, bar, figures) = run
    text = [box[0].value + box[2].value for box in [run, *lines]]
    assert label.value.replace("\u2007", " ") == "drop_odd | pairs: 100%"
    assert (bar.value, bar.max, bar.bar_style) == (40, 40, "success")
    assert re.fullmatch(r" 40/40 \[.*item/s, 20 results\]", figures.value.replace("\u2007", " "))
    assert [t.replace("\u2007", " ") for t in text[1:]] == [
        "  drop_odd: 20 out, 0 running, 0 waiting",
        "  pairs:    20 out, 0 running, 0 waiting",
    ]
    assert [line[1].layout.display for line in lines] == ["none", "none"]  # (no bar)

    @single_task
    def boom(x: int) -> int:
        if x == 5:
            raise ValueError(x)
        return x

    notebook.clear()  # under a bar of the user's: left in place too, below it
    import tqdm.notebook

    with tqdm.notebook.tqdm(total=1, desc="outer") as outer:
        await drop_odd(range(4)).progress().collect()
        outer.update()
    assert [box.children[1].bar_style for box in notebook] == ["success", "success"]
    assert [box.layout.visibility for box in notebook] == [None, None]

    notebook.clear()
    with pytest.raises(ValueError):
        await boom(range(10)).progress().collect()
    ((_, bar, figures),) = [box.children for box in notebook]
    assert bar.bar_style == "danger" and bar.value < 10
    assert figures.value.endswith("results\u2007(failed)]")


def test_where_the_notebook_bars_are_not_drawn(
    notebook: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tqdm.notebook
    import tqdm.std

    assert issubclass(_progress._bar_class(_progress.ProgressOptions()), tqdm.notebook.tqdm)
    # a file of the caller's: text bars (or lines), there
    terminal = _progress._bar_class(_progress.ProgressOptions(file=Terminal()))
    assert not issubclass(terminal, tqdm.notebook.tqdm)
    # no ipywidgets: tqdm's text bars, which the notebook shows as text
    monkeypatch.setattr(tqdm.notebook, "IProgress", None)
    text = _progress._bar_class(_progress.ProgressOptions())
    assert issubclass(text, tqdm.std.tqdm) and not issubclass(text, tqdm.notebook.tqdm)
