"""A crawl that resumes after Ctrl-C: ``pipeline.with_checkpoint(Checkpoint(path))``.

``fetch | parse | store`` over 1,000 URLs, on a checkpoint (one SQLite file). Press
Ctrl-C in the middle and run it again: the second run skips the pages the first one was
done with, without fetching them, and fetches the rest; at most the window's pages
(``max_in_flight``), those in flight when it stopped, are fetched twice.

``store`` writes the pages the exactly-once way: ``INSERT ... ON CONFLICT (url) DO
NOTHING`` on the page's natural key, so a page stored just before the interruption, and
stored again by the next run, is one row (docs/durable-runs.md).

``python examples/resumable_crawl.py FOLDER`` keeps the checkpoint and the pages in
FOLDER: stop it with Ctrl-C whenever you like, start it again, and it goes on where it
stopped. Without a folder (as the test suite runs it), it uses a temporary one and plays
both parts itself: its first run presses Ctrl-C (``signal.raise_signal``) once 400 pages
are stored, and the second run finishes; then it checks what the folder holds.
``fetch`` stands in for an HTTP GET (``examples/crawler.py`` makes real ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import conveyor
from conveyor import Checkpoint, batch_task, single_task

URLS = [f"https://example.org/page/{n}" for n in range(1000)]
WINDOW = 32
LATENCY = [0.002]  # seconds per fetch (0.05 with a folder of your own: time for a Ctrl-C)
fetched: list[str] = []


@single_task(concurrency_limit=16)
async def fetch(url: str) -> tuple[str, str]:
    await asyncio.sleep(LATENCY[0])  # (the network)
    fetched.append(url)
    return url, f"<title>Page {url.rsplit('/', 1)[1]}</title>"


@single_task
def parse(page: tuple[str, str]) -> tuple[str, str]:
    url, html = page
    return url, html.removeprefix("<title>").removesuffix("</title>")


def store_into(path: Path, stop_after: int | None) -> Any:
    """The sink: pages into SQLite, 20 at a time, one transaction each."""

    @batch_task(max_size=20)
    def store(pages: list[tuple[str, str]]) -> None:
        with contextlib.closing(sqlite3.connect(path)) as db, db:  # (one transaction)
            db.executemany(
                "INSERT INTO pages (url, title) VALUES (?, ?) ON CONFLICT (url) DO NOTHING",
                pages,
            )
            (stored,) = db.execute("SELECT count(*) FROM pages").fetchone()
        if stop_after is not None and stored >= stop_after:
            signal.raise_signal(signal.SIGINT)  # (the demo's Ctrl-C)

    return store


async def crawl(folder: Path, stop_after: int | None = None) -> int:
    """One run over URLS; returns how many were done earlier (skipped)."""
    pages = folder / "pages.db"
    with contextlib.closing(sqlite3.connect(pages)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS pages (url TEXT PRIMARY KEY, title TEXT)")
    checkpoint = Checkpoint(folder / "checkpoint.db")
    pipeline = (fetch | parse | store_into(pages, stop_after)).with_context(max_in_flight=WINDOW)
    stream = pipeline.with_checkpoint(checkpoint)(URLS)
    await stream.collect()
    return stream.stats.done_earlier


def main() -> None:
    if len(sys.argv) > 1:  # a folder of your own: Ctrl-C it, run it again
        folder = Path(sys.argv[1])
        folder.mkdir(parents=True, exist_ok=True)
        LATENCY[0] = 0.05
        try:
            skipped = conveyor.run(crawl(folder))
        except KeyboardInterrupt:
            print(f"interrupted after {len(fetched)} fetches: run me again to go on")
            sys.exit(130)
        print(f"done: {skipped} pages done earlier were skipped, {len(fetched)} fetched")
        return
    folder = Path(tempfile.mkdtemp())
    try:
        conveyor.run(crawl(folder, stop_after=400))
    except KeyboardInterrupt:
        summary = Checkpoint(folder / "checkpoint.db").summary()
        print(f"interrupted: {summary.done} pages done, {len(fetched)} fetched")
    else:
        raise AssertionError("the first run was to be interrupted")
    first = len(fetched)
    fetched.clear()
    skipped = conveyor.run(crawl(folder))
    print(f"resumed: {skipped} pages done earlier were skipped, {len(fetched)} fetched")
    assert skipped >= 400 - WINDOW and skipped + len(fetched) == len(URLS)
    assert first + len(fetched) - len(URLS) <= WINDOW  # fetched twice: at most the window
    with contextlib.closing(sqlite3.connect(folder / "pages.db")) as db:
        assert db.execute("SELECT count(*), count(DISTINCT url) FROM pages").fetchone() == (
            len(URLS),
            len(URLS),
        )  # every page, exactly once
    print(f"every one of the {len(URLS)} pages stored once")


if __name__ == "__main__":
    main()
