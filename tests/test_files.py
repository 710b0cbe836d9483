"""``conveyor.sources``: ``file_chunks``, ``file_lines`` and ``files``.

What is checked: the exact chunks and lines (block boundaries included), that reading
happens on the source's thread and never on the loop, that a source is closed however a
run ends -- after any read in progress, with no thread left behind --, the listing of
``files``, the arguments checked at call time, the figures, and the checksum pattern on
worker processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import workers

from conveyor import Failure, single_task
from conveyor.sources import FileChunks, FileLines, file_chunks, file_lines, files
from conveyor.sources._reading import ThreadSource


def source_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conveyor-file")]


@pytest.fixture(autouse=True)
def no_thread_left() -> Any:
    yield
    assert source_threads() == []


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait (generously: the machine is noisy) until ``condition()`` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


@single_task
def same(x: Any) -> Any:
    return x


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, bytes]:
    content = os.urandom(10_000)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    return path, content


# -- file_chunks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "length"), [(1, 300), (7, 1000), (4096, 10_000), (10_000, 10_000), (1 << 20, 10)]
)
async def test_chunks_have_the_exact_size_and_make_up_the_file(
    tmp_path: Path, size: int, length: int
) -> None:
    content = os.urandom(length)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    chunks = [chunk async for chunk in file_chunks(path, size=size)]
    assert b"".join(chunks) == content
    assert all(len(chunk) == size for chunk in chunks[:-1])
    assert 1 <= len(chunks[-1]) <= size
    assert len(chunks) == -(-len(content) // size)


async def test_an_empty_file_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.touch()
    chunks = file_chunks(path)
    assert [chunk async for chunk in chunks] == []
    assert [line async for line in file_lines(path)] == []
    figures = chunks.figures()
    assert figures["bytes_read"] == 0 and figures["bytes_total"] == 0
    assert figures["progress"] == 1.0 and figures["items_read"] == 0


async def test_a_pipeline_reads_the_chunks_in_order(data: tuple[Path, bytes]) -> None:
    path, content = data
    assert b"".join(await same(file_chunks(path, size=999)).collect()) == content
    assert b"".join(await same.as_completed(file_chunks(path, size=999)).collect()) != b""


def test_the_sync_front_door(data: tuple[Path, bytes]) -> None:
    path, content = data
    assert b"".join(same.run(file_chunks(path, size=1000))) == content


# -- file_lines --------------------------------------------------------------------------

LINES = [
    ("a\nb\n", ["a", "b"]),
    ("a\nb", ["a", "b"]),
    ("a\r\nb\r\n", ["a", "b"]),
    ("a\r\n\r\nb", ["a", "", "b"]),
    ("\n\n", ["", ""]),
    ("a\rb\n", ["a\rb"]),  # a lone "\r" does not end a line
    ("héllo €\n😀 wörld", ["héllo €", "😀 wörld"]),
    ("no newline at all", ["no newline at all"]),
]


@pytest.mark.parametrize("block", [1, 2, 3, 5, 1 << 16])
@pytest.mark.parametrize(("text", "expected"), LINES)
async def test_lines_across_every_block_boundary(
    tmp_path: Path, text: str, expected: list[str], block: int
) -> None:
    # Small blocks split "\r\n" and the 2-, 3- and 4-byte characters between two reads.
    path = tmp_path / "lines.txt"
    path.write_bytes(text.encode("utf-8"))
    assert [line async for line in file_lines(path, block=block)] == expected
    with_ends = [line async for line in file_lines(path, keepends=True, block=block)]
    assert "".join(with_ends) == text
    binary = [line async for line in file_lines(path, binary=True, block=block)]
    assert binary == [line.encode("utf-8") for line in expected]


async def test_lines_in_another_encoding_and_error_handler(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("café\nnaïve\n".encode("latin-1"))
    assert [x async for x in file_lines(path, encoding="latin-1")] == ["café", "naïve"]
    assert [x async for x in file_lines(path, errors="replace")] == ["caf\ufffd", "na\ufffdve"]


async def test_a_decoding_error_closes_the_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\n\xff\xfe\n")
    lines = file_lines(path, block=5)
    assert await anext(lines) == "fine"
    with pytest.raises(UnicodeDecodeError) as caught:
        await anext(lines)
    assert str(path) in "\n".join(caught.value.__notes__)
    assert lines._file is not None and lines._file.closed
    with pytest.raises(StopAsyncIteration):
        await anext(lines)


# -- on a thread, never on the loop --------------------------------------------------------


def slow_reads(monkeypatch: pytest.MonkeyPatch, seconds: float, log: list[Any]) -> None:
    """Make every read of a file source take ``seconds`` more, and log where it ran."""
    original = FileChunks._fetch

    def step(self: FileChunks) -> list[bytes]:
        log.append(("read", threading.get_ident()))
        time.sleep(seconds)
        items = original(self)
        log.append(("read done", threading.get_ident()))
        return items

    release = FileChunks._release

    def close(self: FileChunks) -> None:
        log.append(("close", threading.get_ident()))
        release(self)

    monkeypatch.setattr(FileChunks, "_fetch", step)
    monkeypatch.setattr(FileChunks, "_release", close)


async def test_reads_run_on_the_sources_thread_and_the_loop_keeps_ticking(
    data: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[Any] = []
    slow_reads(monkeypatch, 0.3, log)
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    beating = asyncio.create_task(heartbeat())
    try:
        chunks = await same(file_chunks(data[0], size=5000)).collect()
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
    assert len(chunks) == 2
    loop_thread = threading.get_ident()
    assert {ident for _, ident in log} and loop_thread not in {ident for _, ident in log}
    # Three reads of 0.3 s each: on the loop, the heartbeat would stop for 0.3 s at a time.
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert len(ticks) > 20 and max(gaps) < 0.25, max(gaps)


async def test_closing_waits_for_the_read_in_progress(
    data: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[Any] = []
    slow_reads(monkeypatch, 0.2, log)
    chunks = file_chunks(data[0], size=100)
    reading = asyncio.create_task(anext(chunks))
    await until(lambda: ("read", log[0][1]) in log if log else False)
    reading.cancel()  # the consumer leaves while the thread is reading
    await asyncio.gather(reading, return_exceptions=True)
    await chunks.aclose()
    assert [event for event, _ in log] == ["read", "read done", "close"]
    assert chunks._file is not None and chunks._file.closed
    assert source_threads() == []


async def test_a_cancelled_anext_loses_no_chunk(data: tuple[Path, bytes]) -> None:
    path, content = data
    chunks = file_chunks(path, size=1000)
    taken = []
    while True:
        reading = asyncio.create_task(anext(chunks))
        await asyncio.sleep(0)
        if len(taken) % 2:
            reading.cancel()  # every other read is abandoned by its first caller
        try:
            taken.append(await reading)
        except asyncio.CancelledError:
            continue
        except StopAsyncIteration:
            break
    assert b"".join(taken) == content


# -- closing -----------------------------------------------------------------------------


async def test_leaving_a_pipeline_early_closes_the_file(data: tuple[Path, bytes]) -> None:
    chunks = file_chunks(data[0], size=10)
    async with same(chunks) as stream:
        async for _ in stream:
            break
    assert chunks._file is not None and chunks._file.closed
    assert source_threads() == []


async def test_break_from_a_bare_loop_closes_the_file_soon(data: tuple[Path, bytes]) -> None:
    chunks = file_chunks(data[0], size=10)
    async for _ in same(chunks):
        break
    await until(lambda: chunks._closed and chunks._file is not None and chunks._file.closed)
    await until(lambda: source_threads() == [])


async def test_leaving_a_pipeline_fed_by_files_early_stops_the_listing(tmp_path: Path) -> None:
    for n in range(600):
        (tmp_path / f"{n:04}.txt").touch()
    paths = files(tmp_path)
    async with same(paths) as stream:
        async for path in stream:
            assert path.name == "0000.txt"
            break
    assert paths._closed and paths.files_read < 600
    assert source_threads() == []


async def test_closing_a_source_never_iterated_or_twice_is_harmless(
    data: tuple[Path, bytes],
) -> None:
    chunks = file_chunks(data[0])
    await chunks.aclose()
    await chunks.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(chunks)
    stream = same(file_lines(data[0], binary=True))
    await stream.aclose()  # a stream closed before it ran closes its input


# -- files -------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ["b.txt", "a/z.csv", "a/b/c.txt", "a.txt", "c/d.csv", "a/a.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "empty-dir").mkdir()
    return tmp_path


async def listed(source: Any) -> list[str]:
    return [path.as_posix() async for path in source]


async def test_files_walks_a_directory_depth_first_in_name_order(tree: Path) -> None:
    expected = ["a/a.txt", "a/b/c.txt", "a/z.csv", "a.txt", "b.txt", "c/d.csv"]
    assert await listed(files(tree)) == [f"{tree.as_posix()}/{name}" for name in expected]
    assert await listed(files(str(tree), recursive=False)) == [
        f"{tree.as_posix()}/{name}" for name in ["a.txt", "b.txt"]
    ]


async def test_files_with_a_glob_gives_the_walks_order(tree: Path) -> None:
    everything = await listed(files(tree))
    assert await listed(files(f"{tree}/**/*")) == everything
    assert await listed(files(f"{tree}/**/*.csv")) == [p for p in everything if p.endswith("csv")]
    assert await listed(files(f"{tree}/*.csv")) == []  # matches nothing: nothing, no error
    assert await listed(files(f"{tree}/*/*.csv", recursive=False)) == [
        f"{tree.as_posix()}/a/z.csv",
        f"{tree.as_posix()}/c/d.csv",
    ]


async def test_files_from_a_list_and_many_batches(tree: Path) -> None:
    listed_paths = await listed(files([tree / "b.txt", str(tree / "c"), tree / "a.txt"]))
    assert listed_paths == [f"{tree.as_posix()}/{n}" for n in ["b.txt", "c/d.csv", "a.txt"]]
    for n in range(700):  # more than one batch of the thread
        (tree / "empty-dir" / f"{n:04}").touch()
    source = files(tree / "empty-dir")
    assert [p.name async for p in source] == [f"{n:04}" for n in range(700)]
    assert source.figures()["files_read"] == 700


async def test_files_yields_dangling_links_and_skips_links_to_directories(tree: Path) -> None:
    (tree / "gone").touch()
    (tree / "link-to-gone").symlink_to(tree / "gone")
    (tree / "gone").unlink()
    (tree / "a" / "loop").symlink_to(tree)  # not followed: no endless walk
    names = [path.name async for path in files(tree)]
    assert "link-to-gone" in names and "loop" not in names and len(names) == 7


async def test_a_glob_does_not_follow_links_to_directories(tree: Path) -> None:
    """``**`` went through a link back up: 41 paths ``a/up/a/up/...`` for one file."""
    (tree / "a" / "up").symlink_to("..")
    (tree / "c" / "elsewhere").symlink_to(tree / "a" / "b")
    (tree / "c" / "e.csv").symlink_to(tree / "a" / "z.csv")  # a link to a file: a file
    assert await listed(files(f"{tree}/**/*.csv")) == [
        f"{tree.as_posix()}/{name}" for name in ["a/z.csv", "c/d.csv", "c/e.csv"]
    ]
    assert await listed(files(f"{tree}/**/*")) == await listed(files(tree))
    # A link the pattern names is followed, as a directory given to files() is.
    assert await listed(files(f"{tree}/c/elsewhere/*.txt")) == [
        f"{tree.as_posix()}/c/elsewhere/c.txt"
    ]


def test_a_glob_through_two_links_up_ends(tree: Path) -> None:
    """Two links back up made glob's ``**`` run forever: the listing never yielded, and
    its thread kept the process from exiting. In a process of its own, with a timeout."""
    (tree / "a" / "up").symlink_to("..")
    (tree / "c" / "up").symlink_to("..")
    program = textwrap.dedent(
        f"""
        import asyncio
        from conveyor.sources import files

        async def main():
            return [p.name async for p in files({f"{tree}/**/*.csv"!r})]

        print(sorted(asyncio.run(main())))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['d.csv', 'z.csv']"


async def test_a_missing_path_in_a_list_is_reported_when_reached(tree: Path) -> None:
    source = files([tree / "a.txt", tree / "nope.txt"])
    assert await anext(source) == tree / "a.txt"
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        await anext(source)


# -- arguments, checked at call time -----------------------------------------------------


def test_arguments_are_checked_when_the_source_is_made(tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.bin.*check the path"):
        file_chunks(tree / "missing.bin")
    with pytest.raises(IsADirectoryError, match=r"files\("):
        file_lines(tree)
    with pytest.raises(ValueError, match=r"size=.*>= 1"):
        file_chunks(tree / "a.txt", size=0)
    with pytest.raises(TypeError, match=r"size=.*int"):
        file_chunks(tree / "a.txt", size=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"block=.*int"):
        file_lines(tree / "a.txt", block=True)
    with pytest.raises(TypeError, match="path"):
        file_chunks(3)  # type: ignore[arg-type]
    with pytest.raises(LookupError, match="encoding='utf-9'"):
        file_lines(tree / "a.txt", encoding="utf-9")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*glob pattern"):
        files(tree / "nowhere")
    with pytest.raises(TypeError, match="iterable of paths"):
        files(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="recursive"):
        files(tree, recursive="yes")  # type: ignore[arg-type]


# -- figures -----------------------------------------------------------------------------


async def test_figures_before_during_and_after(data: tuple[Path, bytes]) -> None:
    path, content = data
    chunks = file_chunks(path, size=4000)
    assert chunks.figures() == {
        "items_read": 0,
        "bytes_read": 0,
        "bytes_total": None,
        "seconds_reading": 0.0,
        "mb_per_second": None,
        "progress": None,
    }
    await anext(chunks)
    during = chunks.figures()
    assert during["bytes_read"] == 4000 and during["bytes_total"] == len(content)
    assert during["progress"] == pytest.approx(0.4) and during["items_read"] == 1
    await same(chunks).collect()
    after = chunks.figures()
    assert after["bytes_read"] == len(content) and after["progress"] == 1.0
    assert after["items_read"] == 3 and after["mb_per_second"] > 0
    assert after["seconds_reading"] > 0
    lines = file_lines(path, binary=True)
    await same(lines).collect()
    assert lines.figures()["bytes_read"] == len(content)
    assert isinstance(lines, FileLines) and isinstance(lines, ThreadSource)


# -- the checksum pattern ------------------------------------------------------------------


async def test_checksum_tree_on_processes(tree: Path) -> None:
    (tree / "big.bin").write_bytes(os.urandom(300_000))
    (tree / "a" / "gone.csv").touch()
    (tree / "a" / "vanished.csv").symlink_to(tree / "a" / "gone.csv")
    (tree / "a" / "gone.csv").unlink()
    checksum = single_task(executor="process:2", on_error="emit")(workers.sha256_file)
    source = files(tree)
    results = await checksum(source).collect()

    failures = [r for r in results if isinstance(r, Failure)]
    assert [f.item for f in failures] == [tree / "a" / "vanished.csv"]
    assert isinstance(failures[0].exception, FileNotFoundError)
    assert "vanished.csv" in str(failures[0].exception)
    done = {r[0]: (r[1], r[2]) for r in results if not isinstance(r, Failure)}
    expected = {
        path: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)
        for path in tree.rglob("*")
        if path.is_file()
    }
    assert done == expected
    assert source.figures()["files_read"] == len(expected) + 1
    assert multiprocessing.active_children() == []


async def test_a_source_dropped_without_closing_closes_its_file(data: tuple[Path, bytes]) -> None:
    import gc

    chunks = file_chunks(data[0], size=10)
    await anext(chunks)  # open, with its thread
    file = chunks._file
    del chunks  # abandoned by hand, never closed: no ResourceWarning, no thread left
    assert file is not None
    # (its read ahead holds it until that read ends: then it is collected and closed)
    await until(lambda: gc.collect() >= 0 and file.closed)
    await until(lambda: source_threads() == [])
