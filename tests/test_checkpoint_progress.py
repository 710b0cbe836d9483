"""What a run on a checkpoint shows of the items done earlier: progress, statistics."""

from __future__ import annotations

import io
from pathlib import Path

import conveyor
from conveyor import Checkpoint, single_task


@single_task
def times_ten(x: int) -> int:
    return x * 10


async def test_progress_and_statistics_show_the_items_done_earlier(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "progress.db")
    pipeline = conveyor.Pipeline([times_ten]).with_checkpoint(checkpoint)
    await pipeline(range(30)).collect()
    out = io.StringIO()
    stream = pipeline(range(50)).progress(file=out)
    assert await stream.collect() == [n * 10 for n in range(30, 50)]
    last = out.getvalue().strip().splitlines()[-1]
    # the total is what is left to do; the skipped items are named, not counted as done
    assert "20/20 items (100%)" in last, last
    assert "30 done earlier, skipped" in last, last
    assert "30 done earlier, skipped" in str(stream.stats)
    assert "30 done earlier, skipped" in stream.stats.to_mermaid()


async def test_a_terminal_bar_counts_what_is_left(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "bar.db")
    pipeline = conveyor.Pipeline([times_ten]).with_checkpoint(checkpoint)
    await pipeline(range(10)).collect()
    out = io.StringIO()
    out.isatty = lambda: True  # type: ignore[method-assign]
    await pipeline(list(range(40))).progress(file=out).collect()
    text = out.getvalue()
    assert "30/30" in text, text
    assert "10 done earlier, skipped" in text, text
