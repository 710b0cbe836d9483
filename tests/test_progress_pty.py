"""Progress bars in a real terminal: a child Python runs a pipeline with ``progress()``,
its stdin, stdout and stderr the terminal side of a pseudo-terminal of a fixed size; what
it writes is fed to a terminal emulator (pyte) and the test reads the final screen.

Only the final screen is asserted: the frames before it depend on the machine's speed.
Rates and times on the bars are matched by patterns. (A ``StringIO`` that says it is a
terminal, as tests/test_progress.py uses, shows what tqdm writes but not where it lands:
a line written over another, or left behind, shows only on a screen.)
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

if sys.platform == "win32":  # (pytest.skip before the POSIX-only imports below)
    pytest.skip(
        "POSIX pseudo-terminals (os.openpty, termios) do not exist on Windows, whose "
        "console (ConPTY) pyte does not emulate",
        allow_module_level=True,
    )

import fcntl
import struct
import termios

import pyte

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = """
import asyncio

import conveyor
from conveyor import single_task


@single_task(concurrency_limit=4)
async def download(x: int) -> int:
    await asyncio.sleep(0.005)
    return x


@single_task
def parse(x: int) -> int:
    if x == FAIL_AT:
        raise ValueError(f"bad item {x}")
    return x
"""

# a bar at 100%: "desc: 100%|████| 200/200 [00:00<00:00, 12.34item/s, 200 results]"
DONE = r"\|█+\| {n}/{n} \[\d\d:\d\d<00:00, +[\d.]+item/s, {n} results\]"


def screen(code: str, columns: int = 100, rows: int = 24) -> list[str]:
    """Run ``code`` after PIPELINE in a child Python on a terminal of ``columns`` x
    ``rows``; the final screen's lines, right-stripped, without the blank lines at the end.
    """
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["TERM"] = "xterm"
    program = PIPELINE + textwrap.dedent(code)
    output = bytearray()
    with subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=ROOT,
        start_new_session=True,  # (apart from pytest's terminal and its Ctrl-C)
    ) as child:
        os.close(follower)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([leader], [], [], deadline - time.monotonic())
                if not ready:
                    break
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the child closed the terminal's last copy (Linux)
                    break
                if not chunk:  # (end of file: macOS)
                    break
                output += chunk
        finally:
            os.close(leader)
            if child.poll() is None:
                child.kill()
            status = child.wait()
    emulator = pyte.Screen(columns, rows)
    pyte.ByteStream(emulator).feed(bytes(output))
    lines = [line.rstrip() for line in emulator.display]
    while lines and not lines[-1]:
        lines.pop()
    assert status == 0, "\n".join(lines)
    return lines


def test_one_bar_and_no_stage_lines() -> None:
    lines = screen(
        """
        FAIL_AT = None
        results = conveyor.run((download | parse)(range(200)).progress().collect())
        print(len(results), "results")
        """
    )
    assert len(lines) == 2, lines
    assert re.fullmatch(r"download \| parse: 100%" + DONE.format(n=200), lines[0]), lines
    assert lines[1] == "200 results"


def test_stage_lines_end_clean() -> None:
    # 4 calls at once and 200 items read at once: while the run is under way the lines
    # say "4 running, 190 waiting"; their last frame, shorter, must leave nothing behind.
    lines = screen(
        """
        FAIL_AT = None
        stream = (download | parse)(range(200)).progress(stages=True, interval=0.02)
        results = conveyor.run(stream.collect())
        print(len(results), "results")
        """
    )
    assert len(lines) == 4, lines
    assert re.fullmatch(r"download \| parse: 100%" + DONE.format(n=200), lines[0]), lines
    assert lines[1:] == [
        "  download: 200 out, 0 running, 0 waiting",
        "  parse:    200 out, 0 running, 0 waiting",
        "200 results",
    ]


def test_a_run_that_fails_midway() -> None:
    lines = screen(
        """
        FAIL_AT = 100
        stream = (download | parse)(range(200)).progress(stages=True, interval=0.02)
        try:
            conveyor.run(stream.collect())
        except ValueError as error:
            print("error:", error)
        """
    )
    assert len(lines) == 4, lines
    bar = re.fullmatch(
        r"download \| parse:  *(\d+)%\|[█▏▎▍▌▋▊▉ ]+\| (\d+)/200 "
        r"\[\d\d:\d\d<[\d:?]+, +[\d.?]+item/s, (\d+) results \(failed\)\]",
        lines[0],
    )
    assert bar is not None, lines
    assert int(bar[2]) < 200 and int(bar[3]) < 200
    assert re.fullmatch(r"  download: \d+ out, \d running, \d+ waiting", lines[1]), lines
    assert re.fullmatch(r"  parse:    \d+ out, 0 running, 0 waiting", lines[2]), lines
    assert lines[3] == "error: bad item 100"


def test_as_completed_and_a_consumer_that_stops() -> None:
    lines = screen(
        """
        FAIL_AT = None
        pipeline = download | parse
        stream = pipeline.as_completed(range(200)).progress(stages=True, interval=0.02)
        print(len(conveyor.run(stream.collect())), "results")

        async def first_ten() -> None:
            stream = pipeline.as_completed(range(200)).progress(desc="first ten")
            async with stream:
                taken = 0
                async for _ in stream:
                    taken += 1
                    if taken == 10:
                        break

        conveyor.run(first_ten())
        print("stopped")
        """
    )
    assert len(lines) == 6, lines
    assert re.fullmatch(r"download \| parse: 100%" + DONE.format(n=200), lines[0]), lines
    assert lines[1:4] == [
        "  download: 200 out, 0 running, 0 waiting",
        "  parse:    200 out, 0 running, 0 waiting",
        "200 results",
    ]
    assert re.fullmatch(
        r"first ten: +\d+%\|[█▏▎▍▌▋▊▉ ]*\| \d+/200 \[.*, 1\d results \(closed\)\]", lines[4]
    ), lines
    assert lines[5] == "stopped"


def test_a_narrow_terminal_cuts_lines_rather_than_wrap_them() -> None:
    # A line longer than the terminal would wrap onto the next, and tqdm's moves from
    # line to line would land on the wrong ones.
    lines = screen(
        """
        FAIL_AT = None

        @single_task
        def a_stage_with_a_long_name(x: int) -> int:
            return x

        stream = (download | a_stage_with_a_long_name)(range(200)).progress(stages=True)
        print(len(conveyor.run(stream.collect())), "results")
        """,
        columns=50,
    )
    assert len(lines) == 4, lines
    # (tqdm leaves the last column free: a character there moves some terminals' cursor)
    assert lines[0].startswith("download | a_stage_with_a_long_name: 100%|"), lines
    assert len(lines[0]) == 49, lines
    assert lines[1:] == [
        "  download:                 200 out, 0 running, 0",
        "  a_stage_with_a_long_name: 200 out, 0 running, 0",
        "200 results",
    ]


def test_under_a_bar_of_the_callers_the_bars_are_cleared() -> None:
    # (left in place, the run's bar would be written over the caller's line when closed)
    lines = screen(
        """
        from tqdm import tqdm

        FAIL_AT = None
        for _ in tqdm(range(3), desc="batches"):
            stream = (download | parse)(range(100)).progress(stages=True, interval=0.02)
            conveyor.run(stream.collect())
        print("done")
        """
    )
    assert len(lines) == 2, lines
    assert re.fullmatch(r"batches: 100%\|█+\| 3/3 \[.*it/s\]", lines[0]), lines
    assert lines[1] == "done"
